"""Does reward tuning beat continued cross-entropy on CamVid? A cached, resumable study.

    python scripts/study.py                                   # every arm x learning rate x seed, CPU
    python scripts/study.py --arms ce,local_k1 --seeds 0      # a subset
    python scripts/study.py --full-resolution                 # 360 x 480 on a GPU, own output_dir

Stages, each cached under ``output_dir`` so that a rerun only computes what is missing:

1. data: CamVid train / validation (``data_root``) resized to ``size`` (image bilinear, labels
   nearest), held in memory as uint8; training adds a random horizontal flip.
2. pretrain: a SegFormer from random init, trained by its own pixel cross-entropy to
   convergence (warmup + cosine to 0). Saved as safetensors in ``pretrain/``.
3. arms: every arm x learning rate x seed starts from that checkpoint and runs ``tune.max_steps``
   AdamW steps at a constant learning rate, evaluating dataset-level validation mIoU every
   ``tune.eval_steps``. Learning rates are ``tune.learning_rates`` unless the arm lists its own.
   ``mle: true`` is continued cross-entropy through the model's own loss (the control);
   ``lovasz: true`` fine-tunes on :func:`hf_reward.lovasz.lovasz_softmax`; every other arm is a
   :class:`hf_reward.RewardSegConfig` with the arm's fields. ``--jobs`` runs go in parallel
   processes, the CPU cores split between them. One JSON per run in ``runs/``: final metrics
   (mIoU and per-class IoU), eval curve, training log, seconds per step.
4. report: ``results.md``, one row per arm and learning rate: validation mIoU per seed, mean and
   sd, the paired difference (same seed) to the control at the same learning rate and at the
   control's best learning rate, whether that gain meets the bar (>= 1.5 points and > 2 sd), the
   cost per step and the optimised reward's trend; per-class IoU of the control and of the best
   Lovász and reward arms. ``curves.png``: validation mIoU and the optimised training reward
   against steps, one row per learning rate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import (
    PrinterCallback,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    Trainer,
    TrainingArguments,
)

from hf_reward import RewardSegConfig, RewardSegTrainer
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hf_reward.lovasz import lovasz_softmax
from hf_reward.metrics import StreamingMeanIoU


class InMemorySegmentation(torch.utils.data.Dataset):
    """uint8 images ``(N, 3, H, W)`` and labels ``(N, H, W)``, normalised on access, optional flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flip: bool):
        self.images, self.labels, self.flip = images, labels, flip
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image, labels = self.images[i].float() / 255, self.labels[i].long()
        if self.flip and torch.rand(()) < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
        return {"pixel_values": (image - self.mean) / self.std, "labels": labels}


def load_data(cfg: dict, out: Path) -> tuple[dict[str, InMemorySegmentation], dict[int, str]]:
    cache = out / "data.safetensors"
    if not cache.exists():
        tensors = {}
        for split in ("train", "validation"):
            ds, id2label = load_camvid(split, root=cfg["data_root"], streaming=False,
                                       transform=eval_transform(tuple(cfg["size"]), mean=(0, 0, 0), std=(1, 1, 1)))
            examples = [ex for ex in ds]
            tensors[f"{split}_images"] = torch.stack([(ex["pixel_values"] * 255).round().to(torch.uint8) for ex in examples])
            tensors[f"{split}_labels"] = torch.stack([ex["labels"].to(torch.uint8) for ex in examples])
        save_file(tensors, cache, metadata={"id2label": json.dumps(id2label)})
    with safe_open(cache, "pt") as f:
        id2label = {int(k): v for k, v in json.loads(f.metadata()["id2label"]).items()}
        t = {name: f.get_tensor(name) for name in f.keys()}
    data = {
        "train": InMemorySegmentation(t["train_images"], t["train_labels"], flip=True),
        "validation": InMemorySegmentation(t["validation_images"], t["validation_labels"], flip=False),
    }
    return data, id2label


def common_args(out: Path, seed: int, batch_size: int, max_steps: int, **kwargs) -> dict:
    return dict(output_dir=str(out), seed=seed, per_device_train_batch_size=batch_size, per_device_eval_batch_size=16,
                max_steps=max_steps, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                dataloader_num_workers=0, logging_steps=10, batch_eval_metrics=True, eval_strategy="steps", **kwargs)


def pretrain(cfg: dict, data, id2label, out: Path) -> Path:
    path = out / "pretrain"
    if (path / "model.safetensors").exists():
        return path
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}, **cfg["model"]))
    p = cfg["pretrain"]
    args = TrainingArguments(**common_args(path, 0, p["batch_size"], p["max_steps"], learning_rate=p["learning_rate"],
                                           lr_scheduler_type="cosine", warmup_steps=p["warmup_steps"],
                                           weight_decay=0.01, eval_steps=p["max_steps"]))
    metric = StreamingMeanIoU(len(id2label), id2label)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collate_segmentation, compute_metrics=metric)
    trainer.train()
    trainer.save_model(str(path))
    (path / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return path


def run_name(arm: str, lr: float, seed: int) -> str:
    return f"{arm}_lr{lr:g}_seed{seed}"


def result_file(out: Path, arm: str, lr: float, seed: int) -> Path:
    """Where a run's JSON is cached."""
    return out / "runs" / f"{run_name(arm, lr, seed)}.json"


def learning_rates(cfg: dict, arm: str) -> list[float]:
    return cfg["arms"][arm].get("learning_rates", cfg["tune"]["learning_rates"])


def run_arm(cfg: dict, name: str, lr: float, seed: int, data, id2label, checkpoint: Path, out: Path,
            progress_bar: bool = True) -> dict:
    result_path = result_file(out, name, lr, seed)
    if result_path.exists():
        return json.loads(result_path.read_text())
    arm = dict(cfg["arms"][name])
    mle, lovasz = arm.pop("mle", False), arm.pop("lovasz", False)
    arm.pop("learning_rates", None)
    t = cfg["tune"]
    kwargs = common_args(out / "tmp" / run_name(name, lr, seed), seed, t["batch_size"], t["max_steps"],
                         eval_steps=t["eval_steps"], weight_decay=t["weight_decay"], lr_scheduler_type="constant",
                         learning_rate=lr, disable_tqdm=not progress_bar, **arm)
    model = SegformerForSemanticSegmentation.from_pretrained(checkpoint, use_safetensors=True)
    metric = StreamingMeanIoU(len(id2label), id2label)
    common = dict(model=model, train_dataset=data["train"], eval_dataset=data["validation"],
                  data_collator=collate_segmentation, compute_metrics=metric)
    if mle:
        trainer = Trainer(args=TrainingArguments(**kwargs), **common)
    elif lovasz:
        trainer = Trainer(args=TrainingArguments(**kwargs), **common,
                          compute_loss_func=lambda outputs, labels, **_: lovasz_softmax(outputs.logits, labels))
    else:
        trainer = RewardSegTrainer(args=RewardSegConfig(**kwargs), **common)
    if not progress_bar:  # parallel runs: one line per finished run instead of every log
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    evals = [e for e in history if "eval_mean_iou" in e]
    result = {
        "arm": name, "learning_rate": lr, "seed": seed, "settings": cfg["arms"][name],
        "final": {k: v for k, v in evals[-1].items() if k.startswith("eval_")},
        "eval_curve": [[e["step"], e["eval_mean_iou"]] for e in evals],
        "train_logs": [e for e in history if "loss" in e and "eval_loss" not in e],
        "seconds_per_step": seconds / t["max_steps"],
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


_worker = {}


def _init_worker(cfg: dict, out: Path, checkpoint: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker.update(cfg=cfg, out=out, checkpoint=checkpoint, data=load_data(cfg, out))


def _run_in_worker(name: str, lr: float, seed: int) -> dict:
    (data, id2label), w = _worker["data"], _worker
    return run_arm(w["cfg"], name, lr, seed, data, id2label, w["checkpoint"], w["out"], progress_bar=False)


def run_all(cfg: dict, runs: list[tuple[str, float, int]], checkpoint: Path, out: Path, jobs: int) -> dict:
    """Every (arm, lr, seed) run, cached ones read back; ``jobs`` processes share the CPU cores."""
    results: dict[tuple[str, float], dict[int, dict]] = {}
    todo = []
    for name, lr, seed in runs:
        path = result_file(out, name, lr, seed)
        if path.exists():
            results.setdefault((name, lr), {})[seed] = json.loads(path.read_text())
        else:
            todo.append((name, lr, seed))
    print(f"{len(runs) - len(todo)} of {len(runs)} runs cached; {len(todo)} to run with {jobs} process(es)")
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(cfg, out, checkpoint, threads)) as pool:
        futures = {pool.submit(_run_in_worker, *run): run for run in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="study runs"):
            name, lr, seed = futures[future]
            result = results.setdefault((name, lr), {})[seed] = future.result()
            tqdm.write(f"{run_name(name, lr, seed)}: val mIoU {result['final']['eval_mean_iou']:.4f}, "
                       f"{result['seconds_per_step']:.2f} s/step")
    return {key: dict(sorted(results[key].items())) for key in dict.fromkeys(run[:2] for run in runs)}


def mean_miou(runs: dict[int, dict]) -> float:
    return statistics.mean(run["final"]["eval_mean_iou"] for run in runs.values())


def best_control(cfg: dict, results: dict) -> tuple[str, float] | None:
    """The control at its best learning rate (highest mean validation mIoU)."""
    controls = [key for key in results if key[0] == cfg["control"]]
    return max(controls, key=lambda key: mean_miou(results[key])) if controls else None


def paired_deltas(results: dict, control: tuple[str, float] | None, key: tuple[str, float]) -> list[float]:
    """Validation mIoU of ``key`` minus the control's, seed by seed."""
    runs, controls = results[key], results.get(control, {})
    return [runs[s]["final"]["eval_mean_iou"] - controls[s]["final"]["eval_mean_iou"] for s in runs if s in controls]


def best_arm(cfg: dict, results: dict) -> tuple[str, float] | None:
    """The non-control (arm, lr) with the largest mean gain over the control at its best lr."""
    control = best_control(cfg, results)
    gains = {key: statistics.mean(d) for key in results if key[0] != cfg["control"]
             if (d := paired_deltas(results, control, key))}
    return max(gains, key=gains.get) if gains else None


def meets_target(deltas: list[float]) -> bool:
    """The study's bar: a mean gain of at least 1.5 points, larger than two sds of the difference."""
    return len(deltas) > 1 and statistics.mean(deltas) >= 0.015 and statistics.mean(deltas) > 2 * statistics.stdev(deltas)


def reward_key(run: dict) -> str | None:
    """The reward an arm optimises: ``scope_reward`` (batch or dataset scope), else ``reward`` (the
    mean per-image mIoU of the sampled masks); None for the arms without one."""
    for key in ("scope_reward", "reward"):
        if any(key in e for e in run["train_logs"]):
            return key
    return None


def format_delta(deltas: list[float]) -> str:
    if len(deltas) > 1:
        return f"{100 * statistics.mean(deltas):+.2f} ± {100 * statistics.stdev(deltas):.2f}"
    return f"{100 * deltas[0]:+.2f}" if deltas else "—"


def report(cfg: dict, results: dict[tuple[str, float], dict[int, dict]], start_miou: float, out: Path) -> str:
    t, control = cfg["tune"], cfg["control"]
    best = best_control(cfg, results)
    lines = [
        (f"Starting checkpoint: validation mIoU {start_miou:.4f}. {t['max_steps']} steps per run, "
         f"batch {t['batch_size']}, AdamW, constant learning rate. Δ in points, paired by seed with `{control}` "
         f"at the same learning rate, and at its best one ({best[1]:g})" if best else ""),
        "",
        "| arm | settings | lr | val mIoU per seed | mean ± sd | Δ same lr | Δ best control lr | ≥ 1.5 and > 2 sd | "
        "s/step | optimised reward, first → last 20 steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, lr), runs in results.items():
        mious = [run["final"]["eval_mean_iou"] for run in runs.values()]
        sd = statistics.stdev(mious) if len(mious) > 1 else float("nan")
        same_lr = paired_deltas(results, (control, lr), (name, lr)) if name != control else []
        best_lr = paired_deltas(results, best, (name, lr)) if (name, lr) != best else []
        key = reward_key(next(iter(runs.values())))
        rewards = [[e[key] for e in run["train_logs"] if key in e] for run in runs.values()] if key else []
        trend = (f"{statistics.mean(statistics.mean(r[:2]) for r in rewards):.3f} → "
                 f"{statistics.mean(statistics.mean(r[-2:]) for r in rewards):.3f}" if rewards else "—")
        settings = ", ".join(f"{k}={v}" for k, v in cfg["arms"][name].items() if k != "learning_rates")
        step = statistics.mean(run["seconds_per_step"] for run in runs.values())
        lines.append(f"| {name} | {settings} | {lr:g} | {' / '.join(f'{m:.4f}' for m in mious)} | "
                     f"{statistics.mean(mious):.4f} ± {sd:.4f} | {format_delta(same_lr)} | {format_delta(best_lr)} | "
                     f"{('yes' if meets_target(best_lr) else 'no') if best_lr else '—'} | {step:.2f} | {trend} |")
    if best:
        lines += ["", *per_class_table(cfg, results)]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def per_class_table(cfg: dict, results: dict) -> list[str]:
    """Validation IoU per class (mean over seeds): the control at its best learning rate, the best
    Lovász arm and the best reward arm."""
    is_reward = {name: not (arm.get("mle") or arm.get("lovasz")) for name, arm in cfg["arms"].items()}
    rows = [best_control(cfg, results)]
    for reward in (False, True):
        kind = {key: runs for key, runs in results.items() if key[0] == cfg["control"] or is_reward[key[0]] == reward}
        if (best := best_arm(cfg, kind)) is not None:
            rows.append(best)
    classes = [k for k in next(iter(results[rows[0]].values()))["final"] if k.startswith("eval_iou_")]
    lines = ["Per-class validation IoU, mean over seeds:", "",
             "| arm | lr | " + " | ".join(c.removeprefix("eval_iou_") for c in classes) + " |",
             "|---" * (len(classes) + 2) + "|"]
    for name, lr in rows:
        values = [statistics.mean(run["final"][c] for run in results[(name, lr)].values()) for c in classes]
        lines.append(f"| {name} | {lr:g} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return lines


def plot_curves(results: dict[tuple[str, float], dict[int, dict]], start_miou: float, path: Path) -> None:
    """One row per learning rate: validation mIoU against steps (mean over seeds, shaded min-max)
    and the reward each arm optimises during training (same shading)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({lr for _, lr in results})
    fig, axes = plt.subplots(len(lrs), 2, figsize=(12, 4 * len(lrs)), squeeze=False)
    names = list(dict.fromkeys(name for name, _ in results))
    colors = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    for (ax_eval, ax_reward), lr in zip(axes, lrs):
        for (name, arm_lr), runs in results.items():
            if arm_lr != lr:
                continue
            style = dict(color=colors[name], label=name)
            curves = torch.tensor([[start_miou] + [m for _, m in run["eval_curve"]] for run in runs.values()])
            steps = [0] + [step for step, _ in next(iter(runs.values()))["eval_curve"]]
            ax_eval.plot(steps, curves.mean(0), marker="o", markersize=3, **style)
            ax_eval.fill_between(steps, curves.min(0).values, curves.max(0).values, color=colors[name], alpha=0.1)
            key = reward_key(next(iter(runs.values())))
            if key:
                logs = [[(e["step"], e[key]) for e in run["train_logs"] if key in e] for run in runs.values()]
                values = torch.tensor([[v for _, v in log] for log in logs])
                reward_steps = [step for step, _ in logs[0]]
                ax_reward.plot(reward_steps, values.mean(0), **style)
                ax_reward.fill_between(reward_steps, values.min(0).values, values.max(0).values,
                                       color=colors[name], alpha=0.1)
        ax_eval.set(xlabel="tuning step", ylabel="validation mIoU (dataset-level)", title=f"CamVid validation, lr {lr:g}")
        ax_reward.set(xlabel="tuning step", ylabel="mIoU of the sampled masks",
                      title=f"Optimised training reward, lr {lr:g}")
        ax_eval.legend(fontsize=6, ncol=2)
        ax_reward.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/study_camvid.yaml")
    parser.add_argument("--arms", help="comma-separated subset of the config's arms")
    parser.add_argument("--seeds", help="comma-separated subset of the config's seeds")
    parser.add_argument("--jobs", type=int, help="parallel runs (default: 2 on CPU, 1 on a GPU)")
    parser.add_argument("--full-resolution", action="store_true",
                        help="CamVid's native 360 x 480 (meant for a GPU), in output_dir + '_full'")
    cli = parser.parse_args()
    cfg = yaml.safe_load(Path(cli.config).read_text())
    if cli.full_resolution:
        cfg["size"], cfg["output_dir"] = cfg["full_resolution_size"], cfg["output_dir"] + "_full"
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    data, id2label = load_data(cfg, out)
    checkpoint = pretrain(cfg, data, id2label, out)
    start = json.loads((checkpoint / "log_history.json").read_text())
    start_miou = [e for e in start if "eval_mean_iou" in e][-1]["eval_mean_iou"]
    arms = cli.arms.split(",") if cli.arms else list(cfg["arms"])
    unknown = [a for a in arms if a not in cfg["arms"]]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; the config has {list(cfg['arms'])}")
    if cfg["control"] not in arms:  # the paired comparisons need the control's runs
        arms.insert(0, cfg["control"])
    seeds = [int(s) for s in cli.seeds.split(",")] if cli.seeds else cfg["seeds"]
    runs = [(name, lr, seed) for name in arms for lr in learning_rates(cfg, name) for seed in seeds]
    jobs = cli.jobs or (1 if torch.cuda.is_available() else 2)
    results = run_all(cfg, runs, checkpoint, out, jobs)
    print(report(cfg, results, start_miou, out))
    plot_curves(results, start_miou, out / "curves.png")


if __name__ == "__main__":
    main()
