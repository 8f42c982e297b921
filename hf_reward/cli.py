"""What the scripts share: ``--config`` YAML + command-line parsing, data and model arguments.

Every script parses a few dataclasses with ``HfArgumentParser``. ``--config file.yaml`` sets
their values (one flat mapping, keys are field names) and flags given on the command line
override the file::

    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml --max_steps 50

Example::

    >>> model_args, data_args, tune_args, args = parse_config(
    ...     [ModelArguments, DataArguments, TuneArguments, TuneConfig], ["--config", "configs/default.yaml", "--max_steps", "5"])
    >>> args.max_steps, args.estimator
    (5, 'local')
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .config import RewardSegConfig
from .data import eval_transform, load_camvid, load_cityscapes, load_toy_streets, train_transform
from .modeling import build_segformer, load_segformer

DATASETS = ("toy_streets", "camvid", "cityscapes")


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Instances of ``dataclass_types`` from ``--config <yaml>`` (optional) and flags (``argv`` or ``sys.argv``).

    Unknown keys in the file and unknown flags are errors, so a typo never passes silently.
    """
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML file of argument values; command-line flags override it.")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        fields = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{known.config}: unknown keys {unknown}; every key must be an argument of the script (see --help)")
        parser.set_defaults(**values)
    *parsed, extra = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    del extra  # the namespace holding --config
    return tuple(parsed)


@dataclass
class ModelArguments:
    """Which model to start from. Defaults: the small SegFormer of the embedded run."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local directory or Hub repo id of a SegFormer (safetensors). None: build one from the sizes below."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) to load."})
    hidden_sizes: list[int] = field(
        default_factory=lambda: [16, 32, 64, 128], metadata={"help": "Built model: width of each of the 4 encoder stages."}
    )
    depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1], metadata={"help": "Built model: blocks per stage."})
    decoder_hidden_size: int = field(default=64, metadata={"help": "Built model: width of the all-MLP decoder."})


@dataclass
class DataArguments:
    """Which dataset and how to crop it. Defaults: toy streets at 64 x 64 (the embedded run)."""

    dataset: str = field(default="toy_streets", metadata={"help": f"One of {DATASETS}."})
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "camvid: the directory of its parquet files and id2label.json. cityscapes: a Hub repo id "
            "(default Chris1/cityscapes) or a directory of <split>-*.parquet files."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on."})
    crop_size: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "Training crop (height, width)."})
    scale_range: list[float] = field(
        default_factory=lambda: [0.75, 1.5], metadata={"help": "Training random rescale range (min, max), before the crop."}
    )
    eval_size: list[int] | None = field(
        default=None,
        metadata={"help": "Resize validation images to (height, width); labels stay at full size. None: full size."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N validation images only."})
    shuffle_buffer: int = field(default=256, metadata={"help": "Streaming shuffle buffer (images) of the training split."})
    toy_size: int = field(default=64, metadata={"help": "toy_streets: image side in pixels."})
    toy_train_images: int = field(default=4000, metadata={"help": "toy_streets: training images."})
    toy_eval_images: int = field(default=64, metadata={"help": "toy_streets: validation images."})

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")


def _default(cls: type, name: str, value):
    """A field of ``cls`` with another default and the same help."""
    return field(default=value, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass
class TuneArguments:
    """scripts/tune.py's own arguments. Defaults: the embedded run."""

    pretrain_steps: int = field(
        default=600,
        metadata={
            "help": "Without model_name_or_path: steps of maximum-likelihood pretraining of the built model, cached "
            "in <output_dir>/pretrained and reused while its settings stay the same."
        },
    )
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of that pretraining."})
    num_overlays: int = field(default=4, metadata={"help": "Validation images drawn in before/after overlays (0: no plots)."})


@dataclass
class PretrainConfig(TrainingArguments):
    """TrainingArguments of the maximum-likelihood stage; defaults train a SegFormer from scratch on toy streets."""

    output_dir: str | None = _default(TrainingArguments, "output_dir", "outputs/pretrain")
    max_steps: int = _default(TrainingArguments, "max_steps", 600)
    learning_rate: float = _default(TrainingArguments, "learning_rate", 2e-3)
    lr_scheduler_type: str = _default(TrainingArguments, "lr_scheduler_type", "cosine")
    warmup_steps: float = _default(TrainingArguments, "warmup_steps", 50)
    per_device_train_batch_size: int = _default(TrainingArguments, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _default(TrainingArguments, "per_device_eval_batch_size", 16)
    logging_steps: float = _default(TrainingArguments, "logging_steps", 50)
    save_strategy: str = _default(TrainingArguments, "save_strategy", "no")
    # StreamingMeanIoU accumulates batch by batch instead of holding every logit of the split.
    batch_eval_metrics: bool = _default(TrainingArguments, "batch_eval_metrics", True)
    remove_unused_columns: bool = _default(TrainingArguments, "remove_unused_columns", False)
    report_to: None | str | list[str] = _default(TrainingArguments, "report_to", "none")


@dataclass
class TuneConfig(RewardSegConfig):
    """RewardSegConfig with the embedded run's defaults (configs/default.yaml holds the same values)."""

    output_dir: str | None = _default(RewardSegConfig, "output_dir", "outputs/default")
    estimator: str = _default(RewardSegConfig, "estimator", "local")
    reward_scope: str = _default(RewardSegConfig, "reward_scope", "dataset")
    temperature: float = _default(RewardSegConfig, "temperature", 0.5)
    num_samples: int = _default(RewardSegConfig, "num_samples", 1)
    max_steps: int = _default(RewardSegConfig, "max_steps", 200)
    per_device_train_batch_size: int = _default(RewardSegConfig, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _default(RewardSegConfig, "per_device_eval_batch_size", 16)
    eval_strategy: str = _default(RewardSegConfig, "eval_strategy", "steps")
    eval_steps: float | None = _default(RewardSegConfig, "eval_steps", 50)
    save_steps: float = _default(RewardSegConfig, "save_steps", 100)
    save_total_limit: int | None = _default(RewardSegConfig, "save_total_limit", 2)
    batch_eval_metrics: bool = _default(RewardSegConfig, "batch_eval_metrics", True)


def load_splits(data_args: DataArguments, seed: int = 0, ignore_index: int = 255):
    """``(train, eval, id2label)``: a shuffled, augmented training stream and a deterministic eval stream.

    Trainer gives each process its part of the training stream (accelerate's batch dispatch),
    so every process loads the whole stream here.
    """
    d = data_args
    train_kwargs = dict(
        transform=train_transform(d.crop_size, scale_range=tuple(d.scale_range), ignore_index=ignore_index, seed=seed),
        shuffle_buffer=d.shuffle_buffer,
    )
    # Labels keep their size: the metric upsamples the logits and scores at full resolution.
    eval_kwargs = dict(transform=eval_transform(d.eval_size, resize_labels=False))
    if d.dataset == "toy_streets":
        common = dict(size=d.toy_size, seed=seed)
        train, id2label = load_toy_streets(d.train_split, num_images=d.toy_train_images, **common, **train_kwargs)
        val, _ = load_toy_streets(d.eval_split, num_images=d.toy_eval_images, **common, **eval_kwargs)
    elif d.dataset == "camvid":
        root = d.data_path or "../shared/datasets/camvid"
        train, id2label = load_camvid(d.train_split, root=root, ignore_index=ignore_index, seed=seed, **train_kwargs)
        val, _ = load_camvid(d.eval_split, root=root, ignore_index=ignore_index, **eval_kwargs)
    else:
        source = _cityscapes_source(d.data_path)
        train, id2label = load_cityscapes(d.train_split, **source(d.train_split), ignore_index=ignore_index, seed=seed, **train_kwargs)
        val, _ = load_cityscapes(d.eval_split, **source(d.eval_split), ignore_index=ignore_index, **eval_kwargs)
    if d.max_eval_samples is not None:
        val = val.take(d.max_eval_samples)
    return train, val, id2label


def _cityscapes_source(data_path: str | None):
    if data_path and Path(data_path).is_dir():
        return lambda split: {"path": "parquet", "data_files": sorted(str(p) for p in Path(data_path).glob(f"{split}-*.parquet"))}
    return lambda split: {"path": data_path or "Chris1/cityscapes"}


def load_model(model_args: ModelArguments, id2label: dict[int, str], seed: int = 0, new_head: bool = False):
    """The starting model: ``model_name_or_path`` loaded (safetensors only, label map checked), or built."""
    if model_args.model_name_or_path:
        return load_segformer(model_args.model_name_or_path, id2label, new_head=new_head, revision=model_args.revision)
    return build_segformer(
        id2label, hidden_sizes=model_args.hidden_sizes, depths=model_args.depths,
        decoder_hidden_size=model_args.decoder_hidden_size, seed=seed,
    )


def image_processor(data_args: DataArguments):
    """The preprocessing of evaluation, saved with the model so that users of the repo get it too."""
    # Imported here: without torchvision, transformers warns on import that it falls back to PIL.
    from transformers import SegformerImageProcessor

    size = data_args.eval_size
    return SegformerImageProcessor(
        do_resize=size is not None, size={"height": size[0], "width": size[1]} if size else None, do_reduce_labels=False
    )
