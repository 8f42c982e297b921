"""Evaluate a segmentation checkpoint on a dataset split: dataset-level mIoU and a per-class table.

    python scripts/evaluate.py --model runs/tuned --dataset camvid --split validation
    python scripts/evaluate.py --config configs/eval_cityscapes.yaml --batch_size 2   # flags override the YAML

``--model`` is a local directory or a Hub repo id; weights load from safetensors only.
``--dataset`` is ``toy_streets``, ``camvid``, ``cityscapes``, or any Hub repo id / local
directory / builder name (``parquet``, ``imagefolder`` with ``--data_files``) whose masks hold
class indices of the model's ``id2label``, with ``--ignore_index`` for void.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# This file is named evaluate.py: keep its directory off sys.path so that `import evaluate`
# anywhere below (transformers, datasets) finds the library, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoModelForSemanticSegmentation  # noqa: E402

from hf_reward.cli import parse_config  # noqa: E402
from hf_reward.data import (  # noqa: E402
    check_num_labels,
    collate_segmentation,
    eval_transform,
    load_camvid,
    load_cityscapes,
    load_segmentation_dataset,
    load_toy_streets,
)
from hf_reward.metrics import StreamingMeanIoU  # noqa: E402


@dataclass
class EvaluateArguments:
    model: str | None = field(default=None, metadata={"help": "Checkpoint: a local directory or a Hub repo id."})
    dataset: str = field(
        default="toy_streets",
        metadata={"help": "toy_streets, camvid, cityscapes, or a Hub repo id / local dir / builder name (parquet, imagefolder)."},
    )
    split: str = field(default="validation", metadata={"help": "Dataset split."})
    data_files: str | None = field(default=None, metadata={"help": "Glob of local files (for parquet / imagefolder / cityscapes)."})
    data_root: str = field(default="../shared/datasets/camvid", metadata={"help": "CamVid directory (parquet + id2label.json)."})
    image_column: str = field(default="image", metadata={"help": "Image column (generic datasets)."})
    label_column: str = field(default="label", metadata={"help": "Mask column (generic datasets)."})
    ignore_index: int = field(default=255, metadata={"help": "Label value of void pixels."})
    eval_size: list[int] | None = field(
        default=None, metadata={"help": "Resize images to H W before the model; scores stay at label resolution."}
    )
    batch_size: int = field(default=4, metadata={"help": "Images per forward pass."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images."})
    num_images: int = field(default=500, metadata={"help": "toy_streets: images in the split."})
    image_size: int = field(default=128, metadata={"help": "toy_streets: image side in pixels."})
    seed: int = field(default=0, metadata={"help": "toy_streets: generator seed."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, ... ; auto picks cuda when available."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the metrics to this JSON file."})


def parse_args(argv: list[str] | None = None) -> EvaluateArguments:
    """Flags, with ``--config file.yaml`` supplying defaults that flags override."""
    (args,) = parse_config([EvaluateArguments], argv)
    if args.model is None:
        raise SystemExit("--model is required (on the command line or in --config)")
    return args


def load_dataset_split(args: EvaluateArguments, model_config):
    """The evaluation dataset and its id2label."""
    transform = eval_transform(args.eval_size, resize_labels=False)
    if args.dataset == "toy_streets":
        return load_toy_streets(args.split, num_images=args.num_images, size=args.image_size, seed=args.seed, transform=transform)
    if args.dataset == "camvid":
        return load_camvid(args.split, root=args.data_root, ignore_index=args.ignore_index, transform=transform)
    if args.dataset == "cityscapes":
        path = "parquet" if args.data_files else "Chris1/cityscapes"
        return load_cityscapes(args.split, path=path, data_files=args.data_files, ignore_index=args.ignore_index, transform=transform)
    ds = load_segmentation_dataset(
        args.dataset,
        args.split,
        data_files=args.data_files,
        image_column=args.image_column,
        label_column=args.label_column,
        num_classes=model_config.num_labels,
        ignore_index=args.ignore_index,
        transform=transform,
    )
    return ds, {int(k): v for k, v in model_config.id2label.items()}


def format_table(scores: dict, id2label: dict[int, str]) -> str:
    """Per-class IoU and accuracy, then the dataset-level means."""
    width = max(len("pixel accuracy"), *(len(n) for n in id2label.values()))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}", "-" * (width + 18)]
    for i, name in id2label.items():
        lines.append(f"{name:<{width}}  {scores['iou'][i] * 100:7.2f}  {scores['accuracy'][i] * 100:7.2f}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mean IoU':<{width}}  {scores['mean_iou'] * 100:7.2f}")
    lines.append(f"{'mean accuracy':<{width}}  {scores['mean_accuracy'] * 100:7.2f}")
    lines.append(f"{'pixel accuracy':<{width}}  {scores['overall_accuracy'] * 100:7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model = AutoModelForSemanticSegmentation.from_pretrained(args.model, use_safetensors=True).to(device).eval()
    dataset, id2label = load_dataset_split(args, model.config)
    check_num_labels(model.config, id2label)
    if args.max_samples is not None:
        dataset = dataset.take(args.max_samples)

    metric = StreamingMeanIoU(len(id2label), id2label, ignore_index=args.ignore_index)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_segmentation)
    with torch.inference_mode(), tqdm(total=args.max_samples, unit="img", desc=f"{args.dataset}/{args.split}") as bar:
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"].to(device)).logits
            metric.update(logits, batch["labels"].to(device))
            bar.update(len(batch["labels"]))

    print(format_table(metric.scores(), id2label))
    result = metric.compute()
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
