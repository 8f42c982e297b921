"""Does reward tuning add mIoU beyond calibration? The CamVid study: cached, resumable, one command.

    python scripts/study.py                                   # the whole study, CPU (configs/study_camvid.yaml)
    python scripts/study.py --arms ce,local --seeds 0         # a subset
    python scripts/study.py --full_resolution                 # 360 x 480 on a GPU, in <output_dir>_full

Protocol, each stage cached under ``output_dir`` so that a rerun only computes what is missing:

1. Data: CamVid train and validation at ``size``, in memory (:mod:`hf_reward.data.in_memory`).
   The development split is the first ``dev_fraction`` of the frames of each training video
   sequence: contiguous blocks, so no dev frame is a near-duplicate of a training frame (frames
   are one second apart). Settings are chosen on dev; validation is reported.
2. Pretraining: a SegFormer from random init, cross-entropy on the other training images to
   convergence (``RewardSegTrainer`` with ``reward_weight=0``).
3. Runs: every arm x horizon x learning rate x seed starts from that checkpoint. An arm is a set
   of :class:`hf_reward.RewardSegConfig` fields (the cross-entropy and Lovász controls included),
   ``calibrate_first: true`` tuning from the calibrated start; a horizon sets the steps and
   schedule. Each run, and the start, is scored on dev and validation, raw and after exact
   calibration (:mod:`hf_reward.calibrate`) fitted on the training images. One JSON per run in
   ``runs/``; ``--jobs`` runs share the CPU cores.
4. Report (``study_report.py``): ``results.md`` and ``curves.png``.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import yaml
from study_report import report
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PrinterCallback

from hf_reward import RewardSegConfig
from hf_reward.app import segmentation_trainer
from hf_reward.calibrate import collect_logits, fit_offsets, fold_offsets
from hf_reward.data import collate_segmentation, load_camvid
from hf_reward.data.in_memory import InMemorySegmentation, materialise_split
from hf_reward.modeling import build_segformer, load_segformer


def dev_rows(files: list[str], fraction: float) -> list[int]:
    """Rows of the first ``fraction`` of each sequence's frames (CamVid files are ``<sequence>_<frame>.png``)."""
    sequences = defaultdict(list)
    for row, name in enumerate(files):
        sequence, frame = name.rsplit(".", 1)[0].split("_", 1)
        sequences[sequence].append((int(re.sub(r"\D", "", frame)), row))
    return sorted(row for frames in sequences.values() for _, row in sorted(frames)[: round(fraction * len(frames))])


def load_data(cfg: dict, out: Path) -> tuple[dict[str, InMemorySegmentation], dict[int, str]]:
    root, size = Path(cfg["data_root"]), tuple(cfg["size"])
    splits = {
        s: materialise_split(out / f"{s}.safetensors", load_camvid, s, size, root=root, streaming=False)
        for s in ("train", "validation")
    }
    (images, labels, id2label), (val_images, val_labels, _) = splits["train"], splits["validation"]
    files = datasets.load_dataset("parquet", data_files=str(root / "train-*.parquet"), split="train")["file"]
    dev = dev_rows(files, cfg["dev_fraction"])
    rest = sorted(set(range(len(labels))) - set(dev))
    return {
        "train": InMemorySegmentation(images, labels, indices=rest, flip=True),
        "train_unflipped": InMemorySegmentation(images, labels, indices=rest),  # what calibration is fitted on
        "dev": InMemorySegmentation(images, labels, indices=dev),
        "validation": InMemorySegmentation(val_images, val_labels),
    }, id2label


def config(out: Path, fields: dict, **run) -> RewardSegConfig:
    common = dict(
        output_dir=str(out),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        per_device_eval_batch_size=16,
        batch_eval_metrics=True,
        eval_strategy="steps",
        logging_steps=10,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return RewardSegConfig(**{**common, **fields, **run})


def pretrain(cfg: dict, data, id2label, out: Path) -> Path:
    path = Path(cfg.get("pretrained") or out / "pretrain")
    if not (path / "model.safetensors").exists():
        model = build_segformer(id2label, **cfg["model"])
        args = config(
            path,
            {"reward_weight": 0.0, "ce_weight": 1.0, **cfg["pretrain"]},
            disable_tqdm=False,
            eval_steps=cfg["pretrain"]["max_steps"],
        )
        segmentation_trainer(
            model, args, data["train"], {"dev": data["dev"], "validation": data["validation"]}, id2label
        ).train()
        model.save_pretrained(path)
    return path


def quiet(trainer):
    trainer.remove_callback(PrinterCallback)  # parallel runs: one line per finished run instead of every log
    return trainer


def calibrate(model, data, args: RewardSegConfig):
    """Fit offsets for the study's metric (``args``' reward) on the training images, fold them into ``model``."""
    loader = torch.utils.data.DataLoader(data["train_unflipped"], batch_size=16, collate_fn=collate_segmentation)
    calibration = fit_offsets(
        collect_logits(model, loader, progress=False), args.loss_settings().reward, progress=False
    )
    fold_offsets(model, calibration, split="train")
    return calibration


def score(model, data, id2label, args: RewardSegConfig) -> dict:
    """Dev and validation metrics (the study's as ``eval_*_reward``), raw and after calibration (left folded in)."""
    evaluator = quiet(
        segmentation_trainer(model, args, None, {"dev": data["dev"], "validation": data["validation"]}, id2label)
    )
    raw = evaluator.evaluate()
    calibration = calibrate(model, data, args)
    return {"raw": raw, "calibrated": evaluator.evaluate(), "offsets": calibration.offsets.tolist()}


def learning_rates(arm: dict, horizon: str) -> list[float]:
    """An arm's learning rates at ``horizon``: one list for all its horizons, or a list per horizon."""
    rates = arm["learning_rates"]
    return rates[horizon] if isinstance(rates, dict) else rates


def run_name(arm: str, horizon: str, lr: float, seed: int) -> str:
    return f"{arm}_h{horizon}_lr{lr:g}_seed{seed}"


def run(cfg: dict, arm: str, horizon: str, lr: float, seed: int, data, id2label, out: Path) -> dict:
    path = out / "runs" / f"{run_name(arm, horizon, lr, seed)}.json"
    if path.exists():
        return json.loads(path.read_text())
    fields = {k: v for k, v in cfg["arms"][arm].items() if k not in ("learning_rates", "horizons", "calibrate_first")}
    args = config(out / "tmp", {**cfg["tune"], **fields, **cfg["horizons"][horizon]}, learning_rate=lr, seed=seed)
    model = load_segformer(cfg["pretrained"], id2label)
    if cfg["arms"][arm].get("calibrate_first"):  # tune from the calibrated start: the bias holds the offsets
        calibrate(model, data, args)
    trainer = quiet(
        segmentation_trainer(
            model, args, data["train"], {"dev": data["dev"], "validation": data["validation"]}, id2label
        )
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    result = {
        "arm": arm,
        "horizon": horizon,
        "learning_rate": lr,
        "seed": seed,
        "settings": cfg["arms"][arm],
        **score(model, data, id2label, args),
        "seconds_per_step": seconds / args.max_steps,
        "eval_curve": [e for e in history if "eval_validation_reward" in e or "eval_dev_reward" in e],
        "train_logs": [e for e in history if "loss" in e and "train_runtime" not in e],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


_worker = {}


def _init_worker(cfg: dict, out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker.update(cfg=cfg, out=out, data=load_data(cfg, out))


def _run_in_worker(arm: str, horizon: str, lr: float, seed: int) -> dict:
    (data, id2label), w = _worker["data"], _worker
    return run(w["cfg"], arm, horizon, lr, seed, data, id2label, w["out"])


def run_all(cfg: dict, runs: list[tuple], out: Path, jobs: int) -> list[dict]:
    """Every run, cached ones read back; the longest first, ``jobs`` processes sharing the CPU cores."""
    done = {r: json.loads(p.read_text()) for r in runs if (p := out / "runs" / f"{run_name(*r)}.json").exists()}
    todo = sorted((r for r in runs if r not in done), key=lambda r: -cfg["horizons"][r[1]]["max_steps"])
    print(f"{len(done)} of {len(runs)} runs cached; {len(todo)} to run with {jobs} process(es)")
    if jobs == 1:  # in this process (a GPU, or a test)
        _init_worker(cfg, out, torch.get_num_threads())
        finished = ((r, _run_in_worker(*r)) for r in todo)
    else:
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        threads = max(1, torch.get_num_threads() // jobs)
        pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(cfg, out, threads))
        futures = {pool.submit(_run_in_worker, *r): r for r in todo}
        finished = ((futures[f], f.result()) for f in as_completed(futures))
    for r, result in tqdm(finished, total=len(todo), desc="study runs"):
        done[r] = result
        tqdm.write(
            f"{run_name(*r)}: validation {cfg['metric']} {result['raw']['eval_validation_reward']:.4f}, "
            f"calibrated {result['calibrated']['eval_validation_reward']:.4f}, "
            f"{result['seconds_per_step']:.2f} s/step"
        )
    return [done[r] for r in runs]


@dataclass
class StudyArguments:
    """which study to run, and which part of it"""

    config: str = field(default="configs/study_camvid.yaml", metadata={"help": "The study's YAML file."})
    arms: str | None = field(default=None, metadata={"help": "Comma-separated subset of the config's arms."})
    seeds: str | None = field(default=None, metadata={"help": "Comma-separated subset of the config's seeds."})
    jobs: int | None = field(default=None, metadata={"help": "Parallel runs (default: 2 on CPU, 1 on a GPU)."})
    full_resolution: bool = field(
        default=False, metadata={"help": "CamVid's native 360 x 480 (meant for a GPU), in output_dir + '_full'."}
    )


def main(argv: list[str] | None = None):
    (cli,) = HfArgumentParser(StudyArguments, allow_abbrev=False).parse_args_into_dataclasses(argv)
    cfg = yaml.safe_load(Path(cli.config).read_text())
    if cli.full_resolution:
        cfg["size"], cfg["output_dir"] = cfg["full_resolution_size"], cfg["output_dir"] + "_full"
    out = Path(cfg["output_dir"])
    started = time.perf_counter()
    data, id2label = load_data(cfg, out)
    cfg["pretrained"] = str(pretrain(cfg, data, id2label, out))  # the runs start from it
    start_path = out / "start.json"
    if not start_path.exists():
        start = score(load_segformer(cfg["pretrained"], id2label), data, id2label, config(out / "tmp", cfg["tune"]))
        start_path.write_text(json.dumps(start, indent=1))
    arms = cli.arms.split(",") if cli.arms else list(cfg["arms"])
    unknown = [a for a in arms if a not in cfg["arms"]]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; the config has {list(cfg['arms'])}")
    if cfg["control"] not in arms:  # the paired comparisons need the control's runs
        arms.insert(0, cfg["control"])
    seeds = [int(s) for s in cli.seeds.split(",")] if cli.seeds else cfg["seeds"]
    runs = [
        (arm, horizon, lr, seed)
        for arm in arms
        for horizon in cfg["arms"][arm]["horizons"]
        for lr in learning_rates(cfg["arms"][arm], horizon)
        for seed in seeds
    ]
    results = run_all(cfg, runs, out, cli.jobs or (1 if torch.cuda.is_available() else 2))
    print(
        report(
            cfg,
            json.loads(start_path.read_text()),
            results,
            id2label,
            out,
            minutes=(time.perf_counter() - started) / 60,
        )
    )


if __name__ == "__main__":
    main()
