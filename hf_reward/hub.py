"""Results table, model card, and pushing a tuned model to the Hub through Trainer.

Example::

    >>> print(results_table(before, after, {0: "road", 1: "car"}))   # evaluate() dicts
    | class | before | after | change |
    ...
    >>> card = model_card(base_model="nvidia/mit-b0", dataset="Chris1/cityscapes", args=config,
    ...                   before=before, after=after, id2label=id2label)
    >>> push_to_hub(trainer, card)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import yaml

from .config import RewardSegConfig


def _iou(metrics: Mapping[str, float], name: str) -> float:
    # StreamingMeanIoU names per-class keys iou_<name> with spaces as underscores; evaluate() adds "eval_".
    return metrics.get(f"eval_iou_{str(name).replace(' ', '_')}", float("nan"))


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def results_table(before: Mapping[str, float], after: Mapping[str, float], id2label: Mapping[int, str]) -> str:
    """Markdown table of mIoU and per-class IoU (in %) before and after, from two ``evaluate()`` dicts.

    A class absent from both prediction and ground truth of the split shows ``n/a``.

    >>> print(results_table({"eval_mean_iou": 0.5, "eval_iou_car": 0.5}, {"eval_mean_iou": 0.6, "eval_iou_car": 0.6}, {0: "car"}))
    | class | before | after | change |
    |---|---:|---:|---:|
    | **mIoU** | 50.0 | 60.0 | +10.0 |
    | car | 50.0 | 60.0 | +10.0 |
    """
    rows = [("**mIoU**", before.get("eval_mean_iou", math.nan), after.get("eval_mean_iou", math.nan))]
    rows += [(str(name), _iou(before, name), _iou(after, name)) for _, name in sorted(id2label.items())]
    lines = ["| class | before | after | change |", "|---|---:|---:|---:|"]
    for name, b, a in rows:
        change = "n/a" if math.isnan(a - b) else f"{100 * (a - b):+.1f}"
        lines.append(f"| {name} | {_fmt(b)} | {_fmt(a)} | {change} |")
    return "\n".join(lines)


def model_card(
    *,
    base_model: str,
    dataset: str,
    args: RewardSegConfig,
    before: Mapping[str, float],
    after: Mapping[str, float],
    id2label: Mapping[int, str],
) -> str:
    """The README.md of a reward-tuned model: base model, dataset, tuning settings, results.

    ``base_model`` is a Hub repo id or a description of where the starting model came from.
    """
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-segmentation",
        "tags": ["segformer", "semantic-segmentation", "reward-tuning", "hf-reward"],
        "datasets": [dataset],
    }
    if "/" in base_model and not Path(base_model).exists():  # a Hub repo id, not a local path or description
        metadata["base_model"] = base_model
    settings = [
        ("reward", args.reward),
        ("estimator", args.estimator),
        ("reward scope", args.reward_scope),
        ("baseline", args.baseline if args.estimator == "score" else "none (local estimator)"),
        ("samples per image (K)", args.num_samples),
        ("sampling resolution", args.sample_resolution),
        ("temperature", args.temperature),
        ("learning rate", f"{args.learning_rate:g} ({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} schedule)"),
        ("steps", args.max_steps),
        ("batch size per device", args.per_device_train_batch_size),
        ("loss weights: reward / ce / lovasz / kl", f"{args.reward_weight:g} / {args.ce_weight:g} / "
                                                    f"{args.lovasz_weight:g} / {args.kl_coef:g}"),
        ("seed", args.seed),
    ]
    settings_table = "\n".join(["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings])
    return (
        "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n"
        f"# SegFormer reward-tuned on mean IoU\n\n"
        f"Tuned from **{base_model}** on **{dataset}** with hf-reward: "
        "REINFORCE on the model's own sampled masks, rewarded by their mIoU against the ground truth.\n\n"
        f"## Reward-tuning settings\n\n{settings_table}\n\n"
        f"## Results\n\nDataset-level IoU (%) on the validation split, before and after reward tuning.\n\n"
        f"{results_table(before, after, id2label)}\n\n"
        "## Use\n\n"
        "```python\n"
        "from transformers import SegformerForSemanticSegmentation\n"
        f"model = SegformerForSemanticSegmentation.from_pretrained(\"<this repo id>\", use_safetensors=True)\n"
        "```\n"
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
