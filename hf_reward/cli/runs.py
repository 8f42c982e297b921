"""Training runs as the commands make them: the trainer, the configs of pretraining and tuning, their cache keys,
cached pretraining, and the output directory's resume policy.

- :func:`segmentation_trainer`: a :class:`~hf_reward.RewardSegTrainer` with the streaming metrics;
- :class:`PretrainConfig`, :class:`TuneConfig`: ``RewardSegConfig`` with the commands' defaults;
- :func:`training_settings`, :func:`settings_hash`: what decides a run, and its key (every cache's);
- :func:`pretrain`: cross-entropy training, cached in its directory under a hash of its resolved
  settings, so a rerun with the same settings reuses it and any change retrains;
- :func:`prepare_output_dir`: the checkpoint a run resumes from, or one line refusing another run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainingArguments

from ..config import RewardSegConfig
from .arguments import UsageError, field_default

if TYPE_CHECKING:
    from ..trainer import RewardSegTrainer


def segmentation_trainer(
    model, args: RewardSegConfig, train, val, id2label: dict[int, str], metric_options: dict | None = None, **kwargs
) -> RewardSegTrainer:
    """A :class:`RewardSegTrainer` with the library's collator and streaming metrics, which report the reward
    ``args`` name (class weights and all) as ``reward`` beside mIoU and the other metrics; ``metric_options``
    go to :class:`StreamingMeanIoU` (``per_image``, ``boundary_tolerances``, ``thing_classes``)."""
    # Here: Trainer costs seconds to import, and the commands' --help and flag errors need none of it.
    from ..data.transforms import collate_segmentation
    from ..metrics import StreamingMeanIoU
    from ..trainer import RewardSegTrainer

    metrics = StreamingMeanIoU(
        len(id2label), id2label, args.ignore_index, reward=args.count_reward(), **(metric_options or {})
    )
    return RewardSegTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate_segmentation,
        compute_metrics=metrics,
        **kwargs,
    )


def unprefixed(metrics: dict[str, float], prefix: str = "eval_") -> dict[str, float]:
    """``Trainer.evaluate()``'s metrics under :class:`StreamingMeanIoU`'s own keys."""
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def _default(cls: type, name: str, value):
    """A field of ``cls`` with another default and the same help."""
    return dataclasses.field(default=value, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass
class PretrainConfig(RewardSegConfig):
    """cross-entropy training (RewardSegConfig with reward_weight=0, ce_weight=1), from scratch on toy streets"""

    output_dir: str | None = _default(RewardSegConfig, "output_dir", "outputs/pretrain")
    reward_weight: float = _default(RewardSegConfig, "reward_weight", 0.0)
    # Explicit, whatever the recipe's default becomes: pretraining is cross-entropy.
    ce_weight: float = _default(RewardSegConfig, "ce_weight", 1.0)
    max_steps: int = _default(RewardSegConfig, "max_steps", 600)
    learning_rate: float = _default(RewardSegConfig, "learning_rate", 2e-3)
    lr_scheduler_type: str = _default(RewardSegConfig, "lr_scheduler_type", "cosine")
    warmup_steps: float = _default(RewardSegConfig, "warmup_steps", 50)
    per_device_train_batch_size: int = _default(RewardSegConfig, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _default(RewardSegConfig, "per_device_eval_batch_size", 16)
    logging_steps: float = _default(RewardSegConfig, "logging_steps", 50)
    save_strategy: str = _default(RewardSegConfig, "save_strategy", "no")
    # StreamingMeanIoU accumulates batch by batch instead of holding every logit of the split.
    batch_eval_metrics: bool = _default(RewardSegConfig, "batch_eval_metrics", True)


@dataclass
class TuneConfig(RewardSegConfig):
    """reward tuning: RewardSegConfig (its defaults are the recipe) with scripts/tune.py's length and logging"""

    # Here, not in the script: Trainer pickles its arguments into every checkpoint (training_args.bin), and a
    # class defined in a script does not unpickle anywhere else.
    output_dir: str | None = _default(RewardSegConfig, "output_dir", "outputs/default")
    max_steps: int = _default(RewardSegConfig, "max_steps", 200)
    per_device_train_batch_size: int = _default(RewardSegConfig, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _default(RewardSegConfig, "per_device_eval_batch_size", 16)
    eval_strategy: str = _default(RewardSegConfig, "eval_strategy", "steps")
    eval_steps: float | None = _default(RewardSegConfig, "eval_steps", 50)
    save_steps: float = _default(RewardSegConfig, "save_steps", 100)
    save_total_limit: int | None = _default(RewardSegConfig, "save_total_limit", 2)
    batch_eval_metrics: bool = _default(RewardSegConfig, "batch_eval_metrics", True)


# TrainingArguments fields that change where and how loudly a run goes, not the model it trains.

_NOT_RESULT_FIELDS = {
    "output_dir",
    "logging_dir",
    "run_name",
    "disable_tqdm",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_strategy",
    "hub_private_repo",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
}


def training_settings(args: TrainingArguments) -> dict:
    """The fields of ``args`` that decide what a run trains and differ from their class's defaults (JSON types).

    A cache key: a field added to the class later, at its default, leaves every key as it was.
    """
    # The declared defaults, not a second instance: building TrainingArguments sets up accelerate's process state.
    defaults = {f.name: field_default(f) for f in dataclasses.fields(type(args))}
    defaults = json.loads(json.dumps(defaults, default=str))
    return {
        k: v
        for k, v in json.loads(args.to_json_string()).items()
        if k not in _NOT_RESULT_FIELDS and (k not in defaults or defaults[k] != v)
    }


def settings_hash(settings) -> str:
    """A short stable hash of JSON-able ``settings``."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain(
    args: PretrainConfig,
    settings: dict,
    make: Callable[[], tuple[torch.nn.Module, object, object, dict[int, str]]],
) -> Path:
    """Train by cross-entropy into ``args.output_dir``, or reuse the model there when it was trained the same way.

    ``settings`` describe the model and the data (JSON-able); with :func:`training_settings` of
    ``args`` they are hashed into ``pretrain_settings.json`` beside the model. ``make()`` returns
    ``(model, train, eval, id2label)``; it is called only when training is needed.
    """
    directory = Path(args.output_dir)
    settings = json.loads(json.dumps({**settings, "training": training_settings(args)}, default=str))
    key = settings_hash(settings)
    marker = directory / "pretrain_settings.json"
    say = print if args.process_index == 0 else (lambda *_: None)
    if (
        marker.is_file()
        and json.loads(marker.read_text()).get("hash") == key
        and (directory / "config.json").is_file()
    ):
        say(f"Reusing the pretrained model in {directory} (same settings).")
        return directory
    say(f"Cross-entropy pretraining for {args.max_steps} steps, saved to {directory}.")
    model, train, val, id2label = make()
    trainer = segmentation_trainer(model, args, train, val, id2label)
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        marker.write_text(json.dumps({"hash": key, "settings": settings}, indent=2))
    trainer.accelerator.wait_for_everyone()  # every process loads the saved model next
    return directory


def prepare_output_dir(args: RewardSegConfig, settings: dict) -> str | None:
    """The checkpoint a script's run resumes from, after making sure ``args.output_dir`` holds no other run.

    ``settings`` describe the model and data (JSON-able); with :func:`training_settings` of ``args``
    (``max_steps`` aside: a run may be resumed to go further) they are recorded in
    ``run_settings.json``, with ``max_steps``. In a directory that holds checkpoints or a model of
    a run with other settings (or with no record), or of the same run trained for more steps than
    ``max_steps`` (its tables would carry the other length), the run is refused with the settings
    that differ, unless ``overwrite_output_dir`` (which removes the checkpoints first). A run of the
    same settings resumes from its latest checkpoint.
    ``resume_from_checkpoint``: a path, or ``"true"`` for the latest here.
    """
    out = Path(args.output_dir)
    checkpoints = sorted(  # whole ones only: a process killed while saving leaves one without its trainer state
        (p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1,
    )
    training = {k: v for k, v in training_settings(args).items() if k != "max_steps"}
    record = json.loads(json.dumps({"settings": {**settings, "training": training}}, default=str))
    record["hash"] = settings_hash(record["settings"])
    marker = out / "run_settings.json"
    before = json.loads(marker.read_text()) if marker.is_file() else {}
    earlier = before.get("hash")
    resume = args.resume_from_checkpoint
    if str(resume).lower() in ("false", "none", ""):
        resume = None
    elif str(resume).lower() == "true":
        if not checkpoints:
            raise UsageError(f"--resume_from_checkpoint true: {out} holds no checkpoint-* to resume from")
        resume = str(checkpoints[-1])
    holds_a_run = bool(checkpoints) or (out / "model.safetensors").is_file()
    steps = [int(p.name.rsplit("-", 1)[-1]) for p in checkpoints if p.name.rsplit("-", 1)[-1].isdigit()]
    same_run = holds_a_run and earlier == record["hash"] and not args.overwrite_output_dir
    trained = max([before.get("max_steps", 0), *steps]) if same_run else 0
    if args.overwrite_output_dir:
        for checkpoint in checkpoints:
            shutil.rmtree(checkpoint)
        resume = None
    elif holds_a_run and earlier != record["hash"]:
        what = ", ".join(p.name for p in checkpoints[-2:]) or "model.safetensors"
        differ = _differences(before.get("settings", {}), record["settings"]) if earlier else "no settings record"
        raise UsageError(
            f"{out} holds another run ({what}; {differ}): give another --output_dir, or --overwrite_output_dir true "
            "to start afresh there (its checkpoints are removed)"
        )
    elif trained > args.max_steps:
        raise UsageError(
            f"{out} holds this run at {trained} steps, more than --max_steps {args.max_steps}: give another "
            "--output_dir, or --overwrite_output_dir true to start afresh there (its checkpoints are removed)"
        )
    elif checkpoints and resume is None:
        resume = str(checkpoints[-1])
        if args.process_index == 0:
            print(f"Resuming from {resume}: {out} holds this run's checkpoints (--overwrite_output_dir true: afresh).")
    if args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({**record, "max_steps": max(trained, args.max_steps)}, indent=2, default=str))
    return resume


def _differences(there: dict, here: dict) -> str:
    """``"other settings: learning_rate 0.001 there, 0.0001 here"`` between two run records (nested dicts)."""

    def flat(d: dict) -> dict:
        return {
            k: v
            for key, value in d.items()
            for k, v in (flat(value) if isinstance(value, dict) else {key: value}).items()
        }

    a, b = flat(there), flat(here)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = "; ".join(f"{k} {a.get(k, 'default')} there, {b.get(k, 'default')} here" for k in keys[:3])
    return "other settings" + (f": {shown}" if keys else "") + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
