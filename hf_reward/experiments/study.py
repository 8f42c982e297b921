"""Studies: does tuning add to what the best post-hoc decoder gives? Cached, resumable, one command.

    python scripts/study.py --config configs/study_camvid.yaml

Protocol (:class:`StudyConfig` holds every setting; ``scripts/study.py`` parses it from YAML):

1. Data: CamVid train and validation at ``size``, in memory (:mod:`hf_reward.data.in_memory`).
   The development split is the first ``dev_fraction`` of the frames of each training video
   sequence: contiguous blocks, so no dev frame is a near-duplicate of a training frame (frames
   are one second apart). Settings are chosen on dev; the report split is scored.

   - In-sequence (``folds`` empty): dev and training from CamVid train, CamVid validation
     reported. Validation is sequence 0016E5, which also gives 204 of the 367 training frames, so
     this measures more frames of a scene the model trained on.
   - Cross-sequence (``folds``: sequences): one fold per sequence, which it holds out (its frames
     of train and validation both, the ``heldout`` split); pretraining, tuning, dev and decoder
     fitting use the other sequences only (:func:`fold_rows`). Each fold lives in
     ``<output_dir>/fold_<sequence>``; :func:`hf_reward.experiments.study_report.fold_report` pools them with
     paired bootstrap intervals over images and seeds.
2. Pretraining: a SegFormer from random init, cross-entropy on the other training images
   (:func:`hf_reward.cli.runs.pretrain`), unless ``pretrained`` names another study's checkpoint.
3. Runs: every arm x horizon x learning rate x seed starts from that checkpoint. An arm is a set
   of :class:`hf_reward.RewardSegConfig` fields (the cross-entropy and Lovász controls included);
   ``calibrate_first`` tunes from the start with a decoder's offsets folded into its classifier bias
   (``offsets``: the count reward's, or dataset mIoU's; ``image_offsets``: mIoU^I's, per image), so that
   its argmax is that decoder's mask; a horizon sets the steps and schedule.
4. Scores: each run, and the start, is scored on dev and validation for every metric in
   ``metrics``, by every decoder in ``decoders`` (:mod:`hf_reward.decoders`), each fitted on the
   training images.
5. Report (:mod:`hf_reward.experiments.study_report`): ``results.md``, and ``curves.png`` for runs
   evaluated during training.

Caching: every stage is stored under ``output_dir`` with a hash of everything that decides it.
A run's model is kept under the hash of its training settings (the arm's fields, the horizon,
learning rate, seed, the tune fields, the data and the starting checkpoint's bytes), its scores
under that hash plus the scoring settings. Edit an arm and its runs train again; add a decoder
or a metric and every model is scored again without training; change nothing and nothing runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import re
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch
from tqdm.auto import tqdm

from ..cli.evaluation import calibrate_model
from ..cli.runs import pretrain, segmentation_trainer, settings_hash, training_settings
from ..config import RewardSegConfig
from ..data import load_camvid
from ..data.camvid import DEFAULT_ROOT as CAMVID_PATH
from ..data.camvid import camvid_frames
from ..data.in_memory import InMemorySegmentation, materialise_split
from ..data.labels import DataError
from ..decoders import DECODERS, offsets_objective, score_decoders
from ..modeling import build_model, load_segmentation_model
from .harness import (
    STUDY_MODEL,
    checked_args,
    doc,
    file_hash,
    pretrain_config,
    quiet,
    study_args,
)

ARM_KEYS = ("learning_rates", "horizons", "calibrate_first")  # an arm's keys that are not RewardSegConfig fields
CALIBRATIONS = (False, "offsets", "image_offsets")  # calibrate_first: the offsets folded in before tuning


@dataclass
class Arm:
    """One arm: RewardSegConfig ``fields``, ``learning_rates`` per horizon, the offsets folded in before tuning."""

    fields: dict
    learning_rates: dict[str, list[float]]
    calibrate_first: bool | str = False

    @classmethod
    def from_dict(cls, name: str, spec: dict) -> Arm:
        rates, horizons = spec.get("learning_rates"), spec.get("horizons")
        if not rates or not horizons:
            raise ValueError(f"arm {name!r} needs learning_rates and horizons")
        rates = {h: rates[h] if isinstance(rates, dict) else rates for h in horizons}
        fields = {k: v for k, v in spec.items() if k not in ARM_KEYS}
        calibration = spec.get("calibrate_first", False)
        if calibration not in CALIBRATIONS:
            raise ValueError(f"arm {name!r}: calibrate_first must be one of {CALIBRATIONS}, got {calibration!r}")
        return cls(fields, rates, calibration)


@dataclass
class StudyConfig:
    """a study: data, model, pretraining, arms, horizons, seeds, metrics and decoders (see hf_reward.experiments)"""

    output_dir: str = field(default="runs/study_camvid", metadata=doc("Where every stage is cached."))
    data_root: str = field(default=CAMVID_PATH, metadata=doc("CamVid's directory."))
    size: list[int] = field(default_factory=lambda: [128, 176], metadata=doc("Image size (height, width)."))
    full_resolution_size: list[int] = field(
        default_factory=lambda: [360, 480], metadata=doc("The size of --full_resolution runs.")
    )
    dev_fraction: float = field(default=0.2, metadata=doc("The first fraction of each training sequence: dev."))
    folds: list[str] = field(
        default_factory=list,
        metadata=doc(
            "Cross-sequence protocol: hold out each of these sequences in turn (train, dev and decoder fitting on the "
            "others). Empty: in-sequence (dev from train, CamVid validation reported)."
        ),
    )
    held_out: str | None = field(
        default=None,
        metadata=doc("Run one fold: the sequence it holds out (one of folds; the study sets it per fold)."),
    )
    bootstrap_samples: int = field(default=2000, metadata=doc("Resamples of the paired bootstrap intervals."))
    model: dict = field(
        default_factory=lambda: copy.deepcopy(STUDY_MODEL),
        metadata=doc("The model built from random init: build_model's architecture (default segformer) and sizes."),
    )
    pretrain: dict = field(
        default_factory=dict, metadata=doc("RewardSegConfig fields of the cross-entropy pretraining.")
    )
    pretrained: str | None = field(
        default=None,
        metadata=doc("Start from this checkpoint (another study's pretrain/) instead of pretraining."),
    )
    tune: dict = field(default_factory=dict, metadata=doc("RewardSegConfig fields every run shares."))
    horizons: dict = field(
        default_factory=dict,
        metadata=doc("Horizon name -> RewardSegConfig fields (steps, schedule), and optionally its own seeds."),
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=doc("Seeds of every setting."))
    control: str = field(default="ce", metadata=doc("The arm every other is paired with, seed by seed."))
    metrics: list[str] = field(
        default_factory=lambda: ["reward"],
        metadata=doc("Metric keys reported (hf_reward.metrics); 'reward' is the tune fields' reward."),
    )
    decoders: list[str] = field(
        default_factory=lambda: ["argmax", "offsets"],
        metadata=doc(f"Decoders every model is scored with, of {tuple(DECODERS)}; argmax is the raw model."),
    )
    boundary_tolerances: list[str] = field(
        default_factory=lambda: ["2px", "0.75%"], metadata=doc("Tolerances of the boundary F-scores reported.")
    )
    thing_classes: list[str] = field(
        default_factory=list,
        metadata=doc("Classes scored as objects (connected components): object_recall, ..."),
    )
    bar: float = field(default=1.0, metadata=doc("Points a recipe must gain over both references to clear the bar."))
    arms: dict = field(
        default_factory=dict, metadata=doc("Arm name -> RewardSegConfig fields + learning_rates, horizons.")
    )

    def __post_init__(self):
        if self.folds and self.pretrained:
            raise ValueError(
                "folds need a pretraining per fold: a checkpoint from elsewhere may have seen a held-out sequence"
            )
        if self.held_out is not None and self.held_out not in self.folds:
            raise ValueError(f"held_out {self.held_out!r} is not one of the folds {self.folds}")
        self.arms = {
            name: spec if isinstance(spec, Arm) else Arm.from_dict(name, spec) for name, spec in self.arms.items()
        }
        if self.control not in self.arms:
            raise ValueError(f"control {self.control!r} is not one of the arms {list(self.arms)}")
        unknown = [d for d in self.decoders if d not in DECODERS]
        if unknown or "argmax" not in self.decoders:
            raise ValueError(f"decoders must include 'argmax' and come from {tuple(DECODERS)}, got {self.decoders}")
        for name, arm in self.arms.items():
            missing = [h for h in arm.learning_rates if h not in self.horizons]
            if missing:
                raise ValueError(f"arm {name!r} names horizons {missing} that are not in {list(self.horizons)}")
        # Every run's settings, checked now: a misspelt field fails here, before any data loads or model trains.
        checked_args("pretrain", self.pretrain, lambda: pretrain_config("unused", self.pretrain))
        checked_args("tune", self.tune, lambda: study_args("unused", self.tune))
        for name, arm in self.arms.items():
            for horizon, rates in arm.learning_rates.items():
                fields = {**arm.fields, **{k: v for k, v in self.horizons[horizon].items() if k != "seeds"}}
                checked_args(
                    f"arm {name!r} at horizon {horizon!r}",
                    fields,
                    lambda n=name, h=horizon, r=rates: self.run_args(n, h, r[0], self.seeds[0], "unused"),
                )

    @property
    def report_split(self) -> str:
        """The split a run is judged on: ``heldout`` (a fold's sequence) or ``validation`` (in-sequence)."""
        return "validation" if self.held_out is None else "heldout"

    @property
    def stage_dir(self) -> Path:
        """Where this config's pretraining and runs are cached: ``output_dir``, or its fold's directory."""
        return Path(self.output_dir) / (f"fold_{self.held_out}" if self.held_out else "")

    def fold(self, sequence: str) -> StudyConfig:
        """The config of the fold that holds out ``sequence``."""
        return dataclasses.replace(self, held_out=sequence)

    def metric_options(self) -> dict:
        """The metrics' settings (:class:`hf_reward.metrics.StreamingMeanIoU`): per image, boundaries, objects."""
        return dict(per_image=True, boundary_tolerances=self.boundary_tolerances, thing_classes=self.thing_classes)

    def run_args(self, arm: str, horizon: str, lr: float, seed: int, output_dir: str | Path) -> RewardSegConfig:
        """The RewardSegConfig of one run."""
        horizon_fields = {k: v for k, v in self.horizons[horizon].items() if k != "seeds"}
        fields = {**self.tune, **self.arms[arm].fields, **horizon_fields}
        return study_args(output_dir, fields, learning_rate=lr, seed=seed)

    def runs(
        self, arms: list[str] | None = None, seeds: list[int] | None = None, horizons: list[str] | None = None
    ) -> list[Run]:
        """Every arm x horizon x learning rate x seed, of ``arms`` (the control always), ``seeds`` and ``horizons``."""
        arms = list(self.arms) if arms is None else [self.control] + [a for a in arms if a != self.control]
        unknown = [a for a in arms if a not in self.arms]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; the config has {list(self.arms)}")
        unknown = [h for h in horizons or [] if h not in self.horizons]
        if unknown:
            raise ValueError(f"unknown horizon(s) {unknown}; the config has {list(self.horizons)}")
        return [
            Run(arm, horizon, lr, seed)
            for arm in arms
            for horizon, rates in self.arms[arm].learning_rates.items()
            for lr in rates
            for seed in self.horizons[horizon].get("seeds", self.seeds)
            if (seeds is None or seed in seeds) and (horizons is None or horizon in horizons)
        ]


class Run(NamedTuple):
    arm: str
    horizon: str
    learning_rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}_h{self.horizon}_lr{self.learning_rate:g}_seed{self.seed}"


def dev_rows(files: list[str], fraction: float) -> list[int]:
    """Rows of the first ``fraction`` of each sequence's frames (CamVid files are ``<sequence>_<frame>.png``)."""
    sequences = defaultdict(list)
    for row, name in enumerate(files):
        sequence, frame = name.rsplit(".", 1)[0].split("_", 1)
        sequences[sequence].append((int(re.sub(r"\D", "", frame)), row))
    return sorted(row for frames in sequences.values() for _, row in sorted(frames)[: round(fraction * len(frames))])


def sequence_of(name: str) -> str:
    """The sequence of a CamVid frame's file name, ``<sequence>_<frame>.png``."""
    return name.split("_", 1)[0]


def fold_rows(names: list[str], held_out: str, dev_fraction: float) -> dict[str, list[int]]:
    """Rows of ``names`` for the fold that holds out sequence ``held_out``: ``heldout`` (its frames),
    ``dev`` (the first ``dev_fraction`` of each other sequence's frames) and ``train`` (the rest)."""
    heldout = [row for row, name in enumerate(names) if sequence_of(name) == held_out]
    if not heldout:
        raise DataError(f"no frame of sequence {held_out!r}; the sequences are {sorted(set(map(sequence_of, names)))}")
    others = [row for row, name in enumerate(names) if sequence_of(name) != held_out]
    dev = [others[i] for i in dev_rows([names[row] for row in others], dev_fraction)]
    return {"train": sorted(set(others) - set(dev)), "dev": dev, "heldout": heldout}


def load_study_data(cfg: StudyConfig) -> tuple[dict[str, InMemorySegmentation], dict[int, str]]:
    """The splits in memory: ``train`` (flipped), ``train_unflipped`` (decoders fit on it), ``dev``, and the report
    split: ``validation`` (in-sequence) or ``heldout`` (the fold's sequence, from train and validation)."""
    root, size, out = Path(cfg.data_root), tuple(cfg.size), Path(cfg.output_dir)
    if not root.is_dir():
        raise DataError(f"data_root {cfg.data_root!r} is not a directory")
    splits = {
        s: materialise_split(out / f"{s}.safetensors", load_camvid, s, size, root=root, streaming=False)
        for s in ("train", "validation")
    }
    (images, labels, id2label), (val_images, val_labels, _) = splits["train"], splits["validation"]
    files = camvid_frames("train", root)
    if cfg.held_out is not None:  # one pool of both splits' frames, cut by sequence
        images, labels = torch.cat([images, val_images]), torch.cat([labels, val_labels])
        rows = fold_rows(files + camvid_frames("validation", root), cfg.held_out, cfg.dev_fraction)
        report = InMemorySegmentation(images, labels, indices=rows["heldout"])
    else:
        dev = dev_rows(files, cfg.dev_fraction)
        rows = {"dev": dev, "train": sorted(set(range(len(labels))) - set(dev))}
        report = InMemorySegmentation(val_images, val_labels)
    return {
        "train": InMemorySegmentation(images, labels, indices=rows["train"], flip=True),
        "train_unflipped": InMemorySegmentation(images, labels, indices=rows["train"]),
        "dev": InMemorySegmentation(images, labels, indices=rows["dev"]),
        cfg.report_split: report,
    }, id2label


def _data_settings(cfg: StudyConfig) -> dict:
    settings = {"camvid": str(Path(cfg.data_root).resolve()), "size": list(cfg.size), "dev_fraction": cfg.dev_fraction}
    return settings if cfg.held_out is None else {**settings, "held_out": cfg.held_out}  # in-sequence keys as before


def pretrained_checkpoint(cfg: StudyConfig, data, id2label) -> Path:
    """The checkpoint every run starts from: ``pretrained``, or pretrained here (cached on its settings)."""
    if cfg.pretrained:
        return Path(cfg.pretrained)
    args = pretrain_config(cfg.stage_dir / "pretrain", cfg.pretrain)

    def make():
        model = build_model(id2label, **cfg.model)
        return model, data["train"], {"dev": data["dev"], cfg.report_split: data[cfg.report_split]}, id2label

    return pretrain(args, {"model": cfg.model, "data": _data_settings(cfg)}, make)


def run_key(cfg: StudyConfig, run: Run, start: Path) -> str:
    """The hash of everything that decides what a run trains."""
    args = cfg.run_args(*run, output_dir="unused")
    return settings_hash(
        {
            "training": training_settings(args),
            "calibrate_first": cfg.arms[run.arm].calibrate_first,
            "calibration_reward": _reward_settings(args),
            "data": _data_settings(cfg),
            "start": file_hash(start / "model.safetensors"),
        }
    )


def score_key(cfg: StudyConfig) -> str:
    """The hash of the scoring settings: splits, decoders, metric settings, the reward offsets are fitted for."""
    reward = _reward_settings(study_args("unused", cfg.tune))
    return settings_hash(
        {
            "data": _data_settings(cfg),
            "decoders": cfg.decoders,
            "boundaries": cfg.boundary_tolerances,
            "things": cfg.thing_classes,
            "reward": reward,
        }
    )


def _reward_settings(args: RewardSegConfig) -> dict:
    return {"reward": args.reward, "beta": args.reward_beta, "class_weights": args.reward_class_weights}


def train_run(cfg: StudyConfig, run: Run, start: Path, data, id2label) -> Path:
    """Train one run from ``start`` into its cached directory (if it is not there yet); the directory."""
    out = run_dir(cfg, run, start)
    if (out / "train.json").is_file():
        return out
    args = cfg.run_args(*run, output_dir=out / "trainer")
    model = load_segmentation_model(str(start), id2label)
    calibration = cfg.arms[run.arm].calibrate_first
    if calibration:  # tune from the calibrated start: the bias holds the offsets, the argmax is their decision
        reward, per_image = offsets_objective(calibration, args.count_reward() or "miou")
        calibrate_model(
            model, data["train_unflipped"], reward, split="train", batch_size=16, progress=False, per_image=per_image
        )
    evals = {"dev": data["dev"], cfg.report_split: data[cfg.report_split]}
    trainer = quiet(segmentation_trainer(model, args, data["train"], evals, id2label, cfg.metric_options()))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save_pretrained(out)
    history = trainer.state.log_history
    record = {
        **run._asdict(),
        "settings": dataclasses.asdict(cfg.arms[run.arm]),
        "seconds_per_step": seconds / args.max_steps,
        "eval_curve": [e for e in history if any(k.startswith(("eval_dev_", f"eval_{cfg.report_split}_")) for k in e)],
        "train_logs": [e for e in history if "loss" in e and "train_runtime" not in e],
    }
    (out / "train.json").write_text(json.dumps(record, indent=1))
    return out


def score_model(cfg: StudyConfig, model_dir: Path, data, id2label) -> dict:
    """Every decoder's metrics on dev and the report split for ``model_dir``'s model, cached beside it with their
    per-image records (:func:`image_records` reads them back)."""
    path = scores_path(cfg, model_dir)
    if path.is_file() and path.with_suffix(".safetensors").is_file():
        return json.loads(path.read_text())
    model = load_segmentation_model(str(model_dir), id2label)
    scores = score_decoders(
        model,
        data["train_unflipped"],
        {"dev": data["dev"], cfg.report_split: data[cfg.report_split]},
        cfg.decoders,
        study_args("unused", cfg.tune).count_reward(),
        id2label,
        image_records=True,
        **cfg.metric_options(),
    )
    images = scores.pop("images")
    flat = {
        f"{split}/{decoder}/{k}": v for split, d in images.items() for decoder, r in d.items() for k, v in r.items()
    }
    safetensors.torch.save_file({k: v.contiguous() for k, v in flat.items()}, path.with_suffix(".safetensors"))
    path.write_text(json.dumps(scores, indent=1))
    return scores


def scores_path(cfg: StudyConfig, model_dir: Path) -> Path:
    """A model's cached scores (JSON; its per-image records beside it, ``.safetensors``)."""
    return Path(model_dir) / f"scores-{score_key(cfg)}.json"


def image_records(scores_path: Path) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """``{split: {decoder: per-image records}}`` saved beside a scores file by :func:`score_model`."""
    out = defaultdict(lambda: defaultdict(dict))
    for key, value in safetensors.torch.load_file(Path(scores_path).with_suffix(".safetensors")).items():
        split, decoder, name = key.split("/", 2)
        out[split][decoder][name] = value
    return out


def run_dir(cfg: StudyConfig, run: Run, start: Path) -> Path:
    return cfg.stage_dir / "runs" / f"{run.name}-{run_key(cfg, run, start)}"


def _result(cfg: StudyConfig, run: Run, start: Path, data=None, id2label=None) -> dict | None:
    """A run's record and scores: trained and scored now when ``data`` is given, else read back (None: not yet)."""
    out = run_dir(cfg, run, start)
    if data is not None:
        train_run(cfg, run, start, data, id2label)
        score_model(cfg, out, data, id2label)
    scores = scores_path(cfg, out)
    if not ((out / "train.json").is_file() and scores.is_file() and scores.with_suffix(".safetensors").is_file()):
        return None
    return {
        **json.loads((out / "train.json").read_text()),
        "scores": json.loads(scores.read_text()),
        "path": str(scores),
    }


_worker = {}


def _init_worker(cfg: StudyConfig, start: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker.update(cfg=cfg, start=start, data=load_study_data(cfg))


def _run_in_worker(run: Run) -> dict:
    data, id2label = _worker["data"]
    return _result(_worker["cfg"], run, _worker["start"], data, id2label)


def run_all(cfg: StudyConfig, runs: list[Run], start: Path, jobs: int) -> list[dict]:
    """Every run, cached ones read back; the longest first, ``jobs`` processes sharing the CPU cores."""
    done = {r: result for r in runs if (result := _result(cfg, r, start)) is not None}
    todo = sorted((r for r in runs if r not in done), key=lambda r: -cfg.horizons[r.horizon]["max_steps"])
    print(f"{len(done)} of {len(runs)} runs cached; {len(todo)} to run with {jobs} process(es)")
    if jobs == 1:  # in this process (a GPU, or a test)
        _init_worker(cfg, start, torch.get_num_threads())
        finished = ((r, _run_in_worker(r)) for r in todo)
    else:
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        threads = max(1, torch.get_num_threads() // jobs)
        pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(cfg, start, threads))
        futures = {pool.submit(_run_in_worker, r): r for r in todo}
        finished = ((futures[f], f.result()) for f in as_completed(futures))
    first = cfg.metrics[0]
    for r, result in tqdm(finished, total=len(todo), desc="study runs"):
        done[r] = result
        scores = result["scores"][cfg.report_split]
        tqdm.write(
            f"{r.name}: {cfg.report_split} {first} {scores['argmax'][first]:.4f} raw, "
            f"{max(s[first] for s in scores.values()):.4f} best decoded, {result['seconds_per_step']:.2f} s/step"
        )
    return [done[r] for r in runs]
