"""Results tables, the model card of a shipped model, and pushing it to the Hub through Trainer.

Scores are metric dicts, keys as :meth:`hf_reward.metrics.StreamingMeanIoU.compute` names them.

Example::

    >>> print(per_class_table({"start": {"mean_iou": 0.5, "iou_car": 0.5}}, {0: "car"}))
    | class | start |
    |---|---:|
    | **mIoU** | 50.0 |
    | car | 50.0 |
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from .config import RewardSegConfig
from .decoders import DECODER_KEY
from .metrics import class_key
from .recipes import MetricPlan
from .selection import Decision

Metrics = Mapping[str, float]


def _fmt(value: float | None) -> str:
    return "—" if value is None else "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def decision_table(decision: Decision, validation: Mapping[str, Mapping[str, Metrics]], label: str) -> str:
    """Every candidate (model + decoder) on dev and validation for the decision's metric, in points; each model's
    dev-best decoder marked, the winner in bold, each model's dev gain over the decoded start with its interval.

    ``validation``: model -> decoder -> metrics (:meth:`StreamingMeanIoU.compute` keys).
    """
    lines = [f"| candidate | dev {label} | validation {label} | dev gain over {decision.baseline} (95% interval) |"]
    lines.append("|---|---:|---:|---|")
    for model, decoded in decision.dev.items():
        for decoder, dev in decoded.items():
            chosen = decoder == decision.decoders[model]
            name = f"{model} + {decoder}"
            gain = ""
            if chosen and model in decision.gains:
                mean, low, high = decision.gains[model]
                gain = f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
            if (model, decoder) == decision.winner:
                name = f"**{name}** (ships)"
            elif chosen:
                name += " (dev-best decoder)"
            score = validation[model][decoder].get(decision.metric, math.nan)
            lines.append(f"| {name} | {_fmt(dev)} | {_fmt(score)} | {gain} |")
    return "\n".join(lines)


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


def decision_card(
    *,
    base_model: str,
    dataset: str,
    plan: MetricPlan,
    table: str,
    decision: Decision,
    validation: Metrics,
    id2label: Mapping[int, str],
    location: str,
    candidates: str = "",
) -> str:
    """The README.md of a model ``scripts/tune.py`` shipped: what it is, how to decode it, how it was chosen.

    ``validation``: the shipped model's metrics, decoded; ``location``: the repo id or directory it loads from;
    ``candidates``: what the table's tuned models are.
    """
    model, decoder = decision.winner
    how = {
        "argmax": "the argmax of its logits",
        "offsets": "the argmax of its logits, per-class offsets fitted for the dataset metric folded into its bias",
        "image_offsets": "the argmax of its logits, per-class offsets fitted for per-image mIoU folded into its bias",
        "rankseg": "RankSEG (each image decoded for its own expected IoU; the `rankseg` package)",
    }[decoder]
    trained = f"**{base_model}**" if model == "start" else f"**{model}** from **{base_model}**"
    return (
        _metadata(base_model, dataset, ["reward-tuning"])
        + f"# {plan.label}: {model} + {decoder}, chosen with hf-reward\n\n"
        f"{trained}, on **{dataset}**, decoded by {how}. Chosen for {plan.label} on a dev split held out of "
        f"training: {decision.reason()}\n\n"
        "## Decode\n\n"
        f"`config.json` records the decoder (`{DECODER_KEY}: {decoder}`); `hf_reward.segment` follows it:\n\n"
        "```python\n"
        "import torch\n"
        "from transformers import AutoModelForSemanticSegmentation\n\n"
        "from hf_reward import segment\n\n"
        f'model = AutoModelForSemanticSegmentation.from_pretrained("{location}")\n'
        "pixel_values = torch.rand(1, 3, 256, 256)  # normalised images, as the image processor makes them\n"
        "masks = segment(model, pixel_values)  # (1, 256, 256) class indices\n"
        "```\n\n"
        f"## Candidates\n\n{plan.label} (%):\n\n{table}\n\n"
        + (f"{candidates}\n\n" if candidates else "")
        + f"Evidence behind the candidates (hf_reward.recipes): {plan.evidence}\n\n"
        f"## Shipped model, validation\n\nPer-class IoU (%):\n\n{per_class_table({'shipped': validation}, id2label)}\n"
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
