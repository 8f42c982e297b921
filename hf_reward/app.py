"""The application layer the scripts share: arguments, ``--config`` parsing, data and model loading, pretraining.

Every script in ``scripts/`` parses a few of the dataclasses below with :func:`parse_config`:
``--config file.yaml`` sets their values (one flat mapping, keys are field names) and flags on
the command line override the file. Flags must be spelled out (no prefix matching: ``--max_step``
is an error, not ``--max_steps``), and unknown keys in the file are errors too::

    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml --max_steps 50

Mistakes in what the user asked for (a bad flag, a missing file or model, a model whose classes
are not the dataset's) raise :class:`UsageError`; :func:`run_script` prints its message on one
line and exits with status 2.

Example::

    >>> model_args, data_args, tune_args, args = parse_config(
    ...     [ModelArguments, DataArguments, TuneArguments, TuneConfig], ["--max_steps", "5"])
    >>> args.max_steps, args.estimator
    (5, 'local')
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging as transformers_logging

from .config import RewardSegConfig
from .data import (
    eval_transform,
    load_camvid,
    load_cityscapes,
    load_segmentation_dataset,
    load_toy_streets,
    train_transform,
)
from .data.camvid import DEFAULT_ROOT as CAMVID_PATH
from .data.cityscapes import HUB_REPO as CITYSCAPES_REPO
from .data.transforms import collate_segmentation
from .metrics import StreamingMeanIoU
from .modeling import build_segformer, load_segformer
from .rewards import Reward
from .trainer import RewardSegTrainer

NAMED_DATASETS = ("toy_streets", "camvid", "cityscapes")


# transformers draws a bar for every weight load and save, dozens in a run, each of a fraction of a second.
_QUIET_BARS = ("Loading weights", "Writing model shards")


def _quiet_bars(factory, args, kwargs):
    if kwargs.get("desc") in _QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


transformers_logging.set_tqdm_hook(_quiet_bars)


class UsageError(Exception):
    """A mistake in what the user asked for; scripts report it on one line, without a traceback."""


class _Parser(HfArgumentParser):
    """HfArgumentParser with the project's own options first in ``--help`` and one-line errors."""

    def _add_dataclass_arguments(self, dtype):
        hints = get_type_hints(dtype)
        inherited = (
            {f.name for f in dataclasses.fields(TrainingArguments)} if issubclass(dtype, TrainingArguments) else set()
        )
        own = self.add_argument_group(f"{dtype.__name__} ({(dtype.__doc__ or '').strip().splitlines()[0]})")
        rest = self.add_argument_group("transformers.TrainingArguments") if inherited else None
        for f in dataclasses.fields(dtype):
            if f.init:
                f.type = hints[f.name]
                self._parse_dataclass_field(rest if f.name in inherited else own, f)

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, defaults: dict | None = None
) -> tuple:
    """Instances of ``dataclass_types`` from ``defaults``, then ``--config <yaml>``, then flags (``argv``)."""
    parser = _Parser(dataclass_types, allow_abbrev=False, usage="%(prog)s [--config FILE.yaml] [--option value ...]")
    parser.add_argument("--config", default=None, help="YAML file of argument values; command-line flags override it.")
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    fields = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    values = dict(defaults or {})
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise UsageError(f"--config {known.config}: no such file")
        from_file = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(from_file) - fields)
        if unknown:
            raise UsageError(
                f"{known.config}: unknown keys {unknown}; every key must be an argument of the script (see --help)"
            )
        values.update(from_file)
    parser.set_defaults(**{k: v for k, v in values.items() if k in fields})
    try:
        *parsed, _, unknown = parser.parse_args_into_dataclasses(
            argv, look_for_args_file=False, return_remaining_strings=True
        )
    except ValueError as err:  # a dataclass's __post_init__ refused a value
        raise UsageError(str(err)) from err
    if unknown:
        raise UsageError(f"unknown arguments {unknown}: flags are spelled out in full (see --help)")
    return tuple(parsed)


def run_script(main: Callable[[], object]) -> None:
    """Run a script's ``main``: a :class:`UsageError` prints one line and exits with status 2."""
    try:
        main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


@dataclass
class ModelArguments:
    """which model to start from; without model_name_or_path, a small SegFormer built from the sizes below"""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Local directory or Hub repo id of a SegFormer (safetensors). None: build one of the sizes below."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) to load."})
    hidden_sizes: list[int] = field(
        default_factory=lambda: [16, 32, 64, 128],
        metadata={"help": "Built model: width of each of the 4 encoder stages."},
    )
    depths: list[int] = field(
        default_factory=lambda: [1, 1, 1, 1], metadata={"help": "Built model: blocks per stage."}
    )
    decoder_hidden_size: int = field(default=64, metadata={"help": "Built model: width of the all-MLP decoder."})


@dataclass
class DataArguments:
    """which dataset, and how it is cropped and scored"""

    dataset: str = field(
        default="toy_streets",
        metadata={
            "help": f"One of {NAMED_DATASETS}, or any image + mask dataset: a Hub repo id, a local directory, or a "
            "builder ('parquet', 'imagefolder') with --data_path as its files."
        },
    )
    data_path: str | None = field(
        default=None,
        metadata={
            "help": f"camvid: its directory (default {CAMVID_PATH}). cityscapes: a Hub repo id (default "
            f"{CITYSCAPES_REPO}) or a directory of <split>-*.parquet files. Other datasets: a glob of their "
            "files, '{split}' standing for the split name (e.g. 'data/{split}-*.parquet')."
        },
    )
    image_column: str = field(default="image", metadata={"help": "Other datasets: the image column."})
    label_column: str = field(default="label", metadata={"help": "Other datasets: the mask column (class indices)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on."})
    crop_size: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "Training crop (height, width)."})
    scale_range: list[float] = field(
        default_factory=lambda: [0.75, 1.5],
        metadata={"help": "Training random rescale range (min, max), before the crop."},
    )
    eval_size: list[int] | None = field(
        default=None,
        metadata={"help": "Resize evaluation images to (height, width); labels stay at full size. None: full size."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    shuffle_buffer: int = field(
        default=256, metadata={"help": "Streaming shuffle buffer (images) of the training split."}
    )
    toy_size: int = field(default=64, metadata={"help": "toy_streets: image side in pixels."})
    toy_train_images: int = field(default=4000, metadata={"help": "toy_streets: training images."})
    toy_eval_images: int = field(default=64, metadata={"help": "toy_streets: evaluation images."})
    toy_seed: int = field(default=0, metadata={"help": "toy_streets: the seed that draws the scenes."})

    # What fixes the evaluation split: recorded with a tuned model, so evaluating it later scores the same images.
    EVALUATION_FIELDS = (
        "dataset",
        "data_path",
        "image_column",
        "label_column",
        "eval_split",
        "eval_size",
        "max_eval_samples",
        "toy_size",
        "toy_eval_images",
        "toy_seed",
    )

    def evaluation_record(self) -> dict:
        return {name: getattr(self, name) for name in self.EVALUATION_FIELDS}


def _default(cls: type, name: str, value):
    """A field of ``cls`` with another default and the same help."""
    return field(default=value, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass
class TuneArguments:
    """what scripts/tune.py does around tuning: pretraining a built model, controls, calibration, plots"""

    pretrain_steps: int = field(
        default=600,
        metadata={
            "help": "Without model_name_or_path: steps of cross-entropy pretraining of the built model, cached in "
            "<output_dir>/pretrained and reused while its settings stay the same."
        },
    )
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of that pretraining."})
    control: bool = field(
        default=True,
        metadata={"help": "Also run continued cross-entropy for the same steps from the same start, as the control."},
    )
    calibrate: bool = field(
        default=True,
        metadata={
            "help": "Fit exact per-class logit offsets on the training split for the start, the tuned model "
            "and the control, and report each calibrated; the saved model is the tuned one, uncalibrated."
        },
    )
    calibration_images: int = field(
        default=256, metadata={"help": "Training images the offsets are fitted on (streamed, without augmentation)."}
    )
    num_overlays: int = field(default=4, metadata={"help": "Evaluation images drawn in the overlays (0: no plots)."})


@dataclass
class PretrainConfig(RewardSegConfig):
    """cross-entropy training (RewardSegConfig with reward_weight=0, ce_weight=1), from scratch on toy streets"""

    output_dir: str | None = _default(RewardSegConfig, "output_dir", "outputs/pretrain")
    reward_weight: float = _default(RewardSegConfig, "reward_weight", 0.0)
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
    """reward tuning: RewardSegConfig (its defaults are the recipe) with the embedded run's length and logging"""

    output_dir: str | None = _default(RewardSegConfig, "output_dir", "outputs/default")
    max_steps: int = _default(RewardSegConfig, "max_steps", 200)
    per_device_train_batch_size: int = _default(RewardSegConfig, "per_device_train_batch_size", 8)
    per_device_eval_batch_size: int = _default(RewardSegConfig, "per_device_eval_batch_size", 16)
    eval_strategy: str = _default(RewardSegConfig, "eval_strategy", "steps")
    eval_steps: float | None = _default(RewardSegConfig, "eval_steps", 50)
    save_steps: float = _default(RewardSegConfig, "save_steps", 100)
    save_total_limit: int | None = _default(RewardSegConfig, "save_total_limit", 2)
    batch_eval_metrics: bool = _default(RewardSegConfig, "batch_eval_metrics", True)


def load_splits(
    data_args: DataArguments,
    seed: int = 0,
    ignore_index: int = 255,
    id2label: dict[int, str] | None = None,
    augment: bool = True,
):
    """``(train, eval, id2label)``: a shuffled, augmented training stream and a deterministic evaluation stream.

    ``id2label``: the classes of a dataset that is not one of :data:`NAMED_DATASETS` (its masks
    hold class indices); the named ones bring their own. ``augment=False`` streams the training
    split like the evaluation one (full size, no shuffle), for calibration. Trainer gives each
    process its part of the training stream (accelerate's batch dispatch), so every process
    loads the whole stream here.
    """
    d = data_args
    train_kwargs = dict(
        transform=train_transform(d.crop_size, scale_range=tuple(d.scale_range), ignore_index=ignore_index, seed=seed),
        shuffle_buffer=d.shuffle_buffer,
    )
    # Labels keep their size: the metric upsamples the logits and scores at full resolution.
    eval_kwargs = dict(transform=eval_transform(d.eval_size, resize_labels=False))
    train_kwargs = train_kwargs if augment else eval_kwargs
    if d.dataset == "toy_streets":
        common = dict(size=d.toy_size, seed=d.toy_seed)
        train, id2label = load_toy_streets(d.train_split, num_images=d.toy_train_images, **common, **train_kwargs)
        val, _ = load_toy_streets(d.eval_split, num_images=d.toy_eval_images, **common, **eval_kwargs)
    elif d.dataset == "camvid":
        root = Path(d.data_path or CAMVID_PATH)
        if not (root / "id2label.json").is_file():
            raise UsageError(
                f"CamVid is not at {root.resolve()} (no id2label.json): give its directory as --data_path"
            )
        train, id2label = load_camvid(d.train_split, root=root, ignore_index=ignore_index, seed=seed, **train_kwargs)
        val, _ = load_camvid(d.eval_split, root=root, ignore_index=ignore_index, **eval_kwargs)
    elif d.dataset == "cityscapes":
        source = _cityscapes_source(d.data_path)
        train, id2label = load_cityscapes(
            d.train_split, **source(d.train_split), ignore_index=ignore_index, seed=seed, **train_kwargs
        )
        val, _ = load_cityscapes(d.eval_split, **source(d.eval_split), ignore_index=ignore_index, **eval_kwargs)
    else:
        if id2label is None:
            raise UsageError(
                f"dataset {d.dataset!r} brings no class names: start from a model whose id2label names them"
            )

        def split(name, kwargs):
            files = d.data_path.format(split=name) if d.data_path else None
            return load_segmentation_dataset(
                d.dataset,
                name,
                data_files=files,
                image_column=d.image_column,
                label_column=d.label_column,
                num_classes=len(id2label),
                ignore_index=ignore_index,
                seed=seed,
                **kwargs,
            )

        train, val = split(d.train_split, train_kwargs), split(d.eval_split, eval_kwargs)
    if d.max_eval_samples is not None:
        val = val.take(d.max_eval_samples)
    return train, val, id2label


def _cityscapes_source(data_path: str | None):
    if data_path and Path(data_path).is_dir():
        return lambda split: {
            "path": "parquet",
            "data_files": sorted(str(p) for p in Path(data_path).glob(f"{split}-*.parquet")),
        }
    return lambda split: {"path": data_path or CITYSCAPES_REPO}


def load_model(model_args: ModelArguments, id2label: dict[int, str] | None, seed: int = 0, new_head: bool = False):
    """The starting model: ``model_name_or_path`` loaded (safetensors only, label map checked), or built."""
    name = model_args.model_name_or_path
    if not name:
        return build_segformer(
            id2label,
            hidden_sizes=model_args.hidden_sizes,
            depths=model_args.depths,
            decoder_hidden_size=model_args.decoder_hidden_size,
            seed=seed,
        )
    try:
        return load_segformer(name, id2label, new_head=new_head, revision=model_args.revision)
    except ValueError as err:  # the model's classes are not the dataset's
        raise UsageError(str(err)) from err
    except OSError as err:
        raise _unloadable(name, err) from err


def _unloadable(name: str, err: OSError) -> UsageError:
    if Path(name).exists():
        return UsageError(f"model {name!r}: {err}")
    return UsageError(
        f"model {name!r}: there is no such directory here ({Path.cwd()}), and as a Hub repo id it could not be loaded "
        f"({str(err).splitlines()[0]}). If another command makes this model (the --config file's header names it, "
        "e.g. scripts/pretrain.py), run that first."
    )


def model_config(model_args: ModelArguments):
    """The ``PretrainedConfig`` of ``model_name_or_path`` without loading weights; ``None`` without one."""
    if not model_args.model_name_or_path:
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, revision=model_args.revision)
    except OSError as err:
        raise _unloadable(model_args.model_name_or_path, err) from err


def model_classes(model_args: ModelArguments) -> dict[int, str] | None:
    """The ``id2label`` of ``model_name_or_path`` (for datasets that bring no class names); ``None`` without one."""
    config = model_config(model_args)
    return None if config is None else {int(k): v for k, v in config.id2label.items()}


def image_processor(data_args: DataArguments):
    """The preprocessing of evaluation, saved with the model so that users of the repo get it too."""
    # The PIL implementation: the default one needs torchvision, which this project does not.
    from transformers import SegformerImageProcessorPil

    size = data_args.eval_size
    return SegformerImageProcessorPil(
        do_resize=size is not None,
        size={"height": size[0], "width": size[1]} if size else None,
        do_reduce_labels=False,
    )


def pick_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; any other name as torch reads it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def evaluate_split(
    model,
    dataset,
    id2label: dict[int, str],
    *,
    batch_size: int = 8,
    ignore_index: int = 255,
    reward: Reward | None = None,
    desc: str = "evaluate",
) -> StreamingMeanIoU:
    """Dataset-level metrics of ``model`` (in eval mode, on its own device) over ``dataset``, with a progress bar."""
    from tqdm.auto import tqdm

    metric = StreamingMeanIoU(len(id2label), id2label, ignore_index=ignore_index, reward=reward)
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, unit="batch", desc=desc):
            metric.update(model(pixel_values=batch["pixel_values"].to(device)).logits, batch["labels"].to(device))
    model.train(was_training)
    return metric


def segmentation_trainer(
    model, args: RewardSegConfig, train, val, id2label: dict[int, str], **kwargs
) -> RewardSegTrainer:
    """A :class:`RewardSegTrainer` with the library's collator and streaming dataset-level metrics, which report
    the reward ``args`` name (class weights and all) as ``reward`` beside mIoU and the other metrics."""
    metrics = StreamingMeanIoU(len(id2label), id2label, args.ignore_index, reward=args.loss_settings().reward)
    return RewardSegTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate_segmentation,
        compute_metrics=metrics,
        **kwargs,
    )


# Data settings that change what pretraining sees; the evaluation ones do not.
_PRETRAIN_DATA_FIELDS = (
    "dataset",
    "data_path",
    "image_column",
    "label_column",
    "train_split",
    "crop_size",
    "scale_range",
    "shuffle_buffer",
    "toy_size",
    "toy_train_images",
    "toy_seed",
)


def pretrained_start(
    model_args: ModelArguments, data_args: DataArguments, tune_args: TuneArguments, args: RewardSegConfig
) -> str:
    """Directory of the cross-entropy model that a run without ``model_name_or_path`` tunes.

    ``<output_dir>/pretrained`` is reused when it was trained with the same model, data and
    pretraining settings (recorded in ``pretrain_settings.json``); otherwise it is trained now.
    """
    directory = Path(args.output_dir) / "pretrained"
    inherited = {
        name: getattr(args, name)
        for name in (
            "seed",
            "use_cpu",
            "bf16",
            "disable_tqdm",
            "ignore_index",
            "dataloader_num_workers",
            "per_device_train_batch_size",
        )
    }
    config = PretrainConfig(
        output_dir=str(directory),
        max_steps=tune_args.pretrain_steps,
        learning_rate=tune_args.pretrain_learning_rate,
        logging_steps=max(tune_args.pretrain_steps // 10, 1),
        **inherited,
    )
    settings = json.loads(
        json.dumps(
            {
                "model": dataclasses.asdict(model_args),
                "data": {name: getattr(data_args, name) for name in _PRETRAIN_DATA_FIELDS},
                "pretrain": {"max_steps": config.max_steps, "learning_rate": config.learning_rate, **inherited},
            }
        )
    )
    del settings["pretrain"]["disable_tqdm"]
    marker = directory / "pretrain_settings.json"
    say = print if args.process_index == 0 else (lambda *_: None)
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        say(f"Reusing the pretrained model in {directory} (same settings).")
        return str(directory)

    say(f"Cross-entropy pretraining for {config.max_steps} steps, saved to {directory}.")
    # A stream of its own: reading the tuning stream would advance its shuffle and augmentation, and
    # tuning after a fresh pretraining would then differ from tuning from the cached model.
    train, _, id2label = load_splits(data_args, seed=args.seed, ignore_index=args.ignore_index)
    model = load_model(model_args, id2label, seed=args.seed)
    trainer = segmentation_trainer(model, config, train, None, id2label)
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        marker.write_text(json.dumps(settings, indent=2))
    trainer.accelerator.wait_for_everyone()  # every process loads the saved model next
    return str(directory)
