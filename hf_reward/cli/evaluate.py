"""Evaluate a segmentation checkpoint on a dataset split: dataset-level mIoU, the other metrics, per-class IoU.

    python scripts/evaluate_model.py --model_name_or_path outputs/default        # as its tuning run scored it
    python scripts/evaluate_model.py --model_name_or_path <dir or repo id> --dataset camvid --eval_size 180 240

The data arguments are those of ``scripts/tune.py`` (``--dataset``, ``--data_path``,
``--eval_split``, ``--eval_size``, ...). A model saved by ``scripts/tune.py`` records the ones it
was scored with, and they are the defaults here, so evaluating it as it is reproduces the number
its run reported; ``--config`` and flags override them. Weights load from safetensors only, and
the model's class names must be the dataset's, in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.cli import DataArguments, ModelArguments, UsageError, parse_config
from hf_reward.cli.data import load_data, metric_options
from hf_reward.cli.evaluation import evaluate
from hf_reward.cli.models import load_model, model_config, pick_device
from hf_reward.decoders import recorded_decoder
from hf_reward.metrics import EXTRA_METRICS

# The metrics beyond the dataset level, by key prefix: per image, boundaries, objects.
SHAPE_METRICS = ("image_miou", "class_miou", "boundary_f", "object_")


@dataclass
class EvaluateArguments:
    """how to run the evaluation and where its scores go"""

    batch_size: int = field(default=8, metadata={"help": "Images per forward pass."})
    ignore_index: int = field(default=255, metadata={"help": "Label value of void pixels."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, ... ; auto picks cuda when available."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the metrics to this JSON file."})
    decoder: str | None = field(
        default=None,
        metadata={
            "help": "'argmax', or 'rankseg': each image decoded for its own expected IoU (RankSEG). "
            "Default: the decoder the model records (config.json's hf_reward_decoder, written by scripts/tune.py; "
            "offsets are folded into the model), else the argmax."
        },
    )


ARGUMENTS = (ModelArguments, DataArguments, EvaluateArguments)
# Options that do not apply here: the sizes of a built model, the shaping of a training split.
EXCLUDED = (*ModelArguments.BUILT_MODEL_FIELDS, *DataArguments.training_only())
# What --help lists first (--help_all: every option).
BRIEF = ("model_name_or_path", "dataset", "data_path", "eval_split", "eval_size", "decoder", "output_json")


def format_table(scores: dict, computed: dict, id2label: dict[int, str]) -> str:
    """Per-class IoU and accuracy, then the dataset-level metrics, in %."""
    width = max(len("pixel accuracy"), *(len(n) for n in id2label.values()))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}", "-" * (width + 18)]
    for i, name in id2label.items():
        lines.append(f"{name:<{width}}  {scores['iou'][i] * 100:7.2f}  {scores['accuracy'][i] * 100:7.2f}")
    lines.append("-" * (width + 18))
    rows = [
        ("mean IoU", "mean_iou"),
        ("mean accuracy", "mean_accuracy"),
        ("pixel accuracy", "overall_accuracy"),
        *((name.replace("_", " "), name) for name in EXTRA_METRICS),
    ]
    rows += [(key.replace("_", " "), key) for key in computed if key.startswith(SHAPE_METRICS)]
    lines += [f"{label:<{width}}  {computed[key] * 100:7.2f}" for label, key in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    description = __doc__.split("\n\n")[0]
    model_args, data_args, eval_args = parse_config(
        ARGUMENTS, argv, description=description, exclude=EXCLUDED, brief=BRIEF
    )
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required: a local directory or a Hub repo id")
    config = model_config(model_args)
    classes = {int(k): v for k, v in config.id2label.items()}
    record = getattr(config, "hf_reward_evaluation", None)
    if record:  # the tuning run's evaluation settings, under whatever --config and flags say
        model_args, data_args, eval_args = parse_config(
            ARGUMENTS, argv, defaults=record, description=description, exclude=EXCLUDED
        )
    splits = load_data(data_args, ignore_index=eval_args.ignore_index, id2label=classes, roles=("eval",))
    device = pick_device(eval_args.device)
    model = load_model(model_args, splits.id2label).to(device)
    metric = evaluate(
        model,
        splits.eval,
        splits.id2label,
        batch_size=eval_args.batch_size,
        ignore_index=eval_args.ignore_index,
        metric_options=metric_options(data_args),
        decoder=eval_args.decoder or recorded_decoder(config),
        desc=f"{data_args.dataset}/{data_args.eval_split}",
    )
    result = metric.compute()
    print(format_table(metric.scores(), result, splits.id2label))
    if eval_args.output_json:
        Path(eval_args.output_json).write_text(json.dumps(result, indent=2))
    return result
