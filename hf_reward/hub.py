"""Results tables, the model card, and pushing a tuned model to the Hub through Trainer.

Scores are :class:`ModelScores` by model name (or plain metric dicts, keys as
:meth:`hf_reward.metrics.StreamingMeanIoU.compute` names them).

Example::

    >>> tuned = ModelScores({"mean_iou": 0.6}, {"mean_iou": 0.7}, steps=200)
    >>> scores = {"start": ModelScores({"mean_iou": 0.5}), "tuned": tuned}
    >>> print(summary_table(scores))
    | model | mIoU (%) | calibrated |
    |---|---:|---:|
    | start | 50.0 | — |
    | tuned, 200 steps | 60.0 | 70.0 |
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .calibrate import Calibration
from .config import RewardSegConfig
from .metrics import class_key

Metrics = Mapping[str, float]


@dataclass
class ModelScores:
    """One model's metrics (:meth:`StreamingMeanIoU.compute` keys), raw and, once it is calibrated, after."""

    raw: dict[str, float]
    calibrated: dict[str, float] | None = None
    calibration: Calibration | None = None
    steps: int | None = None  # the optimiser steps the model was trained for, as its trainer counted them

    def to_dict(self) -> dict:
        calibration = None if self.calibration is None else dataclasses.asdict(self.calibration)
        return {"raw": self.raw, "calibrated": self.calibrated, "calibration": calibration, "steps": self.steps}


def _fmt(value: float | None) -> str:
    return "—" if value is None else "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def summary_table(scores: Mapping, metric: str = "mean_iou", label: str = "mIoU") -> str:
    """One row per model (the start, then each tuned model with the steps it trained): ``metric`` raw and
    calibrated, in %."""
    lines = [f"| model | {label} (%) | calibrated |", "|---|---:|---:|"]
    for name, s in scores.items():
        calibrated = None if s.calibrated is None else s.calibrated.get(metric, math.nan)
        row = name if s.steps is None else f"{name}, {s.steps} steps"
        lines.append(f"| {row} | {_fmt(s.raw.get(metric, math.nan))} | {_fmt(calibrated)} |")
    return "\n".join(lines)


def score_columns(scores: Mapping) -> dict[str, Metrics]:
    """Every model's metrics as table columns: ``name`` raw, then ``name, calibrated`` where it was calibrated."""
    columns = {}
    for name, s in scores.items():
        columns[name] = s.raw
        if s.calibrated is not None:
            columns[f"{name}, calibrated"] = s.calibrated
    return columns


def per_class_table(columns: Mapping[str, Metrics], id2label: Mapping[int, str]) -> str:
    """Markdown table of mIoU and per-class IoU (%) of every column (a name and its metrics), in label order.

    A class absent from both prediction and ground truth of the split shows ``n/a``.

    >>> print(per_class_table({"start": {"mean_iou": 0.5, "iou_car": 0.5}}, {0: "car"}))
    | class | start |
    |---|---:|
    | **mIoU** | 50.0 |
    | car | 50.0 |
    """
    names = list(columns)
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| **mIoU** | " + " | ".join(_fmt(columns[n].get("mean_iou", math.nan)) for n in names) + " |")
    for _, label in sorted(id2label.items()):
        lines.append(
            f"| {label} | " + " | ".join(_fmt(columns[n].get(class_key(label), math.nan)) for n in names) + " |"
        )
    return "\n".join(lines)


def describe_recipe(args: RewardSegConfig) -> str:
    """One sentence on what the loss optimised."""
    parts = []
    if args.reward_weight > 0:
        scope = {"image": "per-image", "batch": "batch-level", "dataset": "dataset-level"}[args.reward_scope]
        estimator = (
            "the local expectation gradient (each pixel's exact expectation over its own class)"
            if args.estimator == "local"
            else f"REINFORCE with the {args.baseline!r} baseline"
        )
        parts.append(
            f"{estimator} of the {scope} {args.reward} of masks sampled from the model's per-pixel softmax "
            f"at temperature {args.temperature:g}"
        )
    if args.ce_weight > 0:
        parts.append(f"pixel cross-entropy (weight {args.ce_weight:g})")
    if args.lovasz_weight > 0:
        parts.append(f"Lovász-softmax (weight {args.lovasz_weight:g})")
    return " plus ".join(parts)


def model_card(
    *,
    base_model: str,
    dataset: str,
    args: RewardSegConfig,
    scores: Mapping,
    id2label: Mapping[int, str],
    calibration: Mapping | None = None,
    headline: tuple[str, str] = ("mean_iou", "mIoU"),
) -> str:
    """The README.md of a tuned model: base model, dataset, tuning settings, results, calibration.

    ``base_model`` is a Hub repo id or a description of where the starting model came from;
    ``calibration`` the record :func:`hf_reward.calibrate.fold_offsets` left in the model's config.
    """
    settings = [
        ("reward", args.reward),
        ("estimator", args.estimator),
        ("reward scope", args.reward_scope),
        ("baseline", args.baseline if args.estimator == "score" else "none (local estimator)"),
        ("samples per image (K)", args.num_samples),
        ("sampling resolution", args.sample_resolution),
        ("temperature", args.temperature),
        (
            "learning rate",
            f"{args.learning_rate:g} ({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} schedule)",
        ),
        ("steps", args.max_steps),
        ("batch size per device", args.per_device_train_batch_size),
        (
            "loss weights: reward / ce / lovasz / kl",
            f"{args.reward_weight:g} / {args.ce_weight:g} / {args.lovasz_weight:g} / {args.kl_coef:g}",
        ),
        ("seed", args.seed),
    ]
    settings_table = "\n".join(["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings])
    calibrated = f"{_calibration_section(calibration)}\n\n" if calibration else ""
    return (
        _metadata(base_model, dataset, ["reward-tuning"]) + f"# SegFormer tuned on {args.reward} with hf-reward\n\n"
        f"Tuned from **{base_model}** on **{dataset}** with hf-reward: {describe_recipe(args)}.\n\n"
        f"## Tuning settings\n\n{settings_table}\n\n"
        f"## Results\n\nValidation {headline[1]} (%), from the same start and on the same data.\n\n"
        f"{summary_table(scores, *headline)}\n\n"
        f"Per-class IoU (%):\n\n{per_class_table(score_columns(scores), id2label)}\n\n"
        f"{calibrated}" + _USE
    )


def _calibration_section(calibration: Mapping) -> str:
    offsets = ", ".join(f"{name} {value:+.2f}" for name, value in calibration["offsets"].items())
    return (
        "## Calibration\n\n"
        f"Per-class logit offsets fitted on {calibration['split']} to maximise the dataset-level "
        f"{calibration['reward']} ({100 * calibration['metric_before']:.1f} -> "
        f"{100 * calibration['metric_after']:.1f} there) are folded into the classifier bias, so this "
        f"checkpoint predicts with them: {offsets}."
    )


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repo id (``owner/name``) rather than a local path or a description.

    >>> is_hub_id("nvidia/mit-b0"), is_hub_id("toy_streets"), is_hub_id("../shared/datasets/camvid")
    (True, False, False)
    """
    return bool(_HUB_ID.fullmatch(name)) and not Path(name).exists()


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _metadata(base_model: str, dataset: str, tags: list[str]) -> str:
    """The card's YAML header: only Hub ids go in ``base_model`` and ``datasets``, which the Hub links."""
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "tags": ["segformer", "semantic-segmentation", *tags, "hf-reward"],
    }
    if is_hub_id(dataset):
        metadata["datasets"] = [dataset]
    if is_hub_id(base_model):
        metadata["base_model"] = base_model
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n"


_USE = (
    "## Use\n\n"
    "```python\n"
    "from transformers import AutoModelForSemanticSegmentation\n"
    'model = AutoModelForSemanticSegmentation.from_pretrained("<this repo id>", use_safetensors=True)\n'
    "```\n"
)


def calibration_card(
    *, base_model: str, dataset: str, columns: Mapping[str, Metrics], id2label: Mapping[int, str], calibration: Mapping
) -> str:
    """The README.md of a calibrated model (``columns``: the evaluation split's metrics before and after)."""
    return (
        _metadata(base_model, dataset, ["calibration"])
        + f"# {base_model}, calibrated for {calibration['reward']} with hf-reward\n\n"
        f"**{base_model}** with exact per-class logit offsets and no other change to its weights.\n\n"
        f"{_calibration_section(calibration)}\n\n"
        f"## Results\n\nDataset-level IoU (%) on the evaluation split of **{dataset}**.\n\n"
        f"{per_class_table(columns, id2label)}\n\n" + _USE
    )


def push_to_hub(trainer, card: str, commit_message: str = "Reward tuning with hf-reward"):
    """Push the trainer's model (``args.hub_model_id``) with ``card`` as its README.md; call on every process.

    The upload itself is ``Trainer.push_to_hub``: it saves the model and uploads the output
    directory without checkpoints, from the main process only.
    """

    def write_card(**_):
        if trainer.is_world_process_zero():
            Path(trainer.args.output_dir, "README.md").write_text(card)

    # Trainer.push_to_hub writes its generic card (create_model_card) just before the upload;
    # ours replaces it for this push.
    trainer.create_model_card = write_card
    return trainer.push_to_hub(commit_message=commit_message)
