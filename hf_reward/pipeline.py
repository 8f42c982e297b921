"""The jobs every script runs, as typed functions: data, models, pretraining (cached), evaluation, calibration.

Each script in ``scripts/`` parses its arguments (:mod:`hf_reward.cli`) and calls these:

- :func:`load_data` -> :class:`Splits`: a dataset named in :data:`DATASETS`, or any image + mask set;
- :func:`load_model`: a SegFormer or UperNet from a directory or the Hub (safetensors only), or built;
- :func:`pretrain`: cross-entropy training, cached in its directory under a hash of its resolved
  settings, so a rerun with the same settings reuses it and any change retrains;
- :func:`evaluate`: the streaming metrics of a model over a split;
- :func:`calibrate_model`: exact per-class offsets fitted on a split and folded into the model.

Example::

    splits = load_data(DataArguments(dataset="camvid"), augment=False)
    model = load_model(ModelArguments(model_name_or_path="outputs/camvid"), splits.id2label)
    before = evaluate(model, splits.eval, splits.id2label).compute()["mean_iou"]
    calibrate_model(model, splits.train, "miou", split="train")
    after = evaluate(model, splits.eval, splits.id2label).compute()["mean_iou"]
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import TrainingArguments

from .calibrate import Calibration, collect_logits, fit_offsets, fold_offsets
from .cli import DataArguments, ModelArguments, UsageError, field_default
from .config import RewardSegConfig
from .data import eval_transform, load_camvid, load_cityscapes, load_segmentation_dataset, load_toy_streets
from .data import train_transform as make_train_transform
from .data.camvid import DEFAULT_ROOT as CAMVID_PATH
from .data.camvid import THING_CLASSES as CAMVID_THINGS
from .data.cityscapes import HUB_REPO as CITYSCAPES_REPO
from .data.cityscapes import cityscapes_thing_classes
from .data.folders import MAPILLARY_VERSIONS, load_easyportrait, load_gta5, load_mapillary, mapillary_classes
from .data.toy_streets import THING_CLASSES as TOY_STREETS_THINGS
from .data.transforms import collate_segmentation
from .decoders import decode
from .metrics import StreamingMeanIoU
from .modeling import build_model, eval_mode, load_segmentation_model
from .rewards import Reward, get_reward
from .trainer import RewardSegTrainer


@dataclass
class Splits:
    """A dataset's training and evaluation splits, and its classes."""

    train: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None
    eval: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None
    id2label: dict[int, str]


def _toy_streets(d: DataArguments, split: str, role: str, pipeline: dict):
    images = d.toy_train_images if role == "train" else d.toy_eval_images
    return load_toy_streets(split, num_images=images, size=d.toy_size, seed=d.toy_seed, **pipeline)


def _camvid(d: DataArguments, split: str, role: str, pipeline: dict):
    root = Path(d.data_path or CAMVID_PATH)
    if not (root / "id2label.json").is_file():
        raise UsageError(f"CamVid is not at {root.resolve()} (no id2label.json): give its directory as --data_path")
    return load_camvid(split, root=root, **pipeline)


def _cityscapes(d: DataArguments, split: str, role: str, pipeline: dict):
    if d.data_path and Path(d.data_path).is_dir():
        files = sorted(str(p) for p in Path(d.data_path).glob(f"{split}-*.parquet"))
        return load_cityscapes(split, path="parquet", data_files=files, **pipeline)
    return load_cityscapes(split, path=d.data_path or CITYSCAPES_REPO, **pipeline)


def _root(d: DataArguments, name: str) -> Path:
    if not d.data_path or not Path(d.data_path).is_dir():
        raise UsageError(f"--dataset {name} needs --data_path: the directory it was unpacked to, got {d.data_path!r}")
    return Path(d.data_path)


def _mapillary(version: str):
    def load(d: DataArguments, split: str, role: str, pipeline: dict):
        return load_mapillary(split, root=_root(d, f"mapillary_{version}"), version=version, **pipeline)

    return load


def _easyportrait(d: DataArguments, split: str, role: str, pipeline: dict):
    return load_easyportrait(split, root=_root(d, "easyportrait"), **pipeline)


def _gta5(d: DataArguments, split: str, role: str, pipeline: dict):
    return load_gta5(split, root=_root(d, "gta5"), **pipeline)


@dataclass(frozen=True)
class DatasetAdapter:
    """A dataset ``--dataset`` names: ``load(data_args, split, role, pipeline) -> (dataset, id2label)``, and
    ``thing_classes(data_args)``, its classes whose connected components are objects."""

    load: Callable
    thing_classes: Callable[[DataArguments], Sequence[str]]


# The datasets --dataset names; each adapter brings its classes. Any other value is an image + mask dataset.
DATASETS: dict[str, DatasetAdapter] = {
    "toy_streets": DatasetAdapter(_toy_streets, lambda d: TOY_STREETS_THINGS),
    "camvid": DatasetAdapter(_camvid, lambda d: CAMVID_THINGS),
    "cityscapes": DatasetAdapter(_cityscapes, lambda d: cityscapes_thing_classes()),
    "gta5": DatasetAdapter(_gta5, lambda d: cityscapes_thing_classes()),
    "easyportrait": DatasetAdapter(_easyportrait, lambda d: ()),  # face parts and a person: no countable objects
    **{
        f"mapillary_{v}": DatasetAdapter(
            _mapillary(v), lambda d, v=v: mapillary_classes(_root(d, f"mapillary_{v}"), v)[2]
        )
        for v in MAPILLARY_VERSIONS
    },
}


def metric_options(data_args: DataArguments) -> dict:
    """What :class:`StreamingMeanIoU` reports beyond the dataset level: per-image scores, boundary F at the
    tolerances, objects of the thing classes (``--thing_classes``, or the named dataset's own)."""
    things = data_args.thing_classes
    if things is None:
        things = DATASETS[data_args.dataset].thing_classes(data_args) if data_args.dataset in DATASETS else ()
    return {"per_image": True, "boundary_tolerances": data_args.boundary_tolerances, "thing_classes": list(things)}


def _any_dataset(d: DataArguments, split: str, id2label: dict[int, str] | None, pipeline: dict):
    if d.class_names:
        id2label = dict(enumerate(d.class_names))
    if id2label is None:
        raise UsageError(
            f"dataset {d.dataset!r} brings no class names: give them in the order of the mask values with "
            "--class_names (e.g. --class_names background person), or start from a model (--model_name_or_path) "
            "whose id2label names them"
        )
    files = d.data_path.format(split=split) if d.data_path else None
    if files is not None and not glob.glob(files):
        raise UsageError(
            f"--data_path {d.data_path!r}: no file matches {files!r} for split {split!r} (here: {Path.cwd()})"
        )
    local = d.dataset not in ("parquet", "imagefolder", "csv", "json", "arrow") and _looks_local(d.dataset)
    if local and not Path(d.dataset).is_dir():
        raise UsageError(f"--dataset {d.dataset!r}: {no_such_directory(d.dataset)}")
    try:
        ds = load_segmentation_dataset(
            d.dataset,
            split,
            data_files=files,
            image_column=d.image_column,
            label_column=d.label_column,
            num_classes=len(id2label),
            **pipeline,
        )
    except ConnectionError as err:  # not a directory here, so a Hub dataset, and the Hub is out of reach
        raise UsageError(
            f"--dataset {d.dataset!r}: {no_such_directory(d.dataset)}, and as a Hub dataset it could not be "
            f"loaded ({err})"
        ) from err
    except (
        FileNotFoundError,
        datasets.exceptions.DataFilesNotFoundError,
        datasets.data_files.EmptyDatasetError,
    ) as err:
        raise UsageError(f"--dataset {d.dataset!r}, split {split!r}: {str(err).splitlines()[0]}") from err
    except ValueError as err:
        if "split" not in str(err).lower() and "data file" not in str(err).lower():
            raise
        raise UsageError(f"--dataset {d.dataset!r}, split {split!r}: {str(err).splitlines()[0]}") from err
    return ds, id2label


def load_data(
    data_args: DataArguments,
    *,
    seed: int = 0,
    ignore_index: int = 255,
    id2label: dict[int, str] | None = None,
    augment: bool = True,
    roles: tuple[str, ...] = ("train", "eval"),
) -> Splits:
    """A shuffled, augmented training stream and a deterministic evaluation stream, and the classes.

    ``id2label``: the classes of a dataset that is not one of :data:`DATASETS` (its masks hold
    class indices) when ``--class_names`` does not give them; those bring their own.
    ``augment=False`` streams the training split like the evaluation one (full size, no shuffle),
    for calibration. ``roles``: the splits to load (``("eval",)``: the evaluation split alone,
    ``train`` is then ``None``). Trainer gives each process its part of the training stream
    (accelerate's batch dispatch), so every process loads the whole stream.
    """
    d = data_args
    check_data_source(d)
    train_pipeline = dict(
        transform=make_train_transform(
            d.crop_size, scale_range=tuple(d.scale_range), ignore_index=ignore_index, seed=seed
        ),
        shuffle_buffer=d.shuffle_buffer,
    )
    # Labels keep their size: the metric upsamples the logits and scores at full resolution.
    eval_pipeline = dict(transform=eval_transform(d.eval_size, resize_labels=False))
    splits = {
        "train": (d.train_split, train_pipeline if augment else eval_pipeline),
        "eval": (d.eval_split, eval_pipeline),
    }
    loaded = {"train": (None, None), "eval": (None, None)}
    for role in roles:
        split, pipeline = splits[role]
        pipeline = {**pipeline, "ignore_index": ignore_index}
        if d.dataset in DATASETS:
            if d.dataset != "toy_streets":  # toy_streets' seed draws its scenes; the shuffle follows it
                pipeline["seed"] = seed
            try:
                loaded[role] = DATASETS[d.dataset].load(d, split, role, pipeline)
            except (FileNotFoundError, ValueError) as err:  # a split the dataset does not have
                raise UsageError(f"--dataset {d.dataset}, split {split!r}: {str(err).splitlines()[0]}") from err
        else:
            loaded[role] = _any_dataset(d, split, id2label, {**pipeline, "seed": seed})
    (train, train_classes), (val, eval_classes) = loaded["train"], loaded["eval"]
    if val is not None and d.max_eval_samples is not None:
        val = val.take(d.max_eval_samples)
    return Splits(train, val, train_classes or eval_classes)


def load_model(model_args: ModelArguments, id2label: dict[int, str] | None, seed: int = 0, new_head: bool = False):
    """The starting model: ``model_name_or_path`` loaded (safetensors only, label map checked), or built."""
    name = model_args.model_name_or_path
    if not name:
        return build_model(id2label, model_args.architecture, **model_args.sizes(), seed=seed)
    check_model_source(name, model_args.revision)
    try:
        return load_segmentation_model(name, id2label, new_head=new_head, revision=model_args.revision)
    except ValueError as err:  # the model's classes are not the dataset's
        raise UsageError(str(err)) from err
    except OSError as err:
        raise _unloadable(name, err) from err


def no_such_directory(name: str) -> str:
    """``"no such directory"``, and for a relative path the directory it was looked for in."""
    return "no such directory" + ("" if Path(name).expanduser().is_absolute() else f" here ({Path.cwd()})")


def check_data_source(d: DataArguments) -> None:
    """Raise :class:`UsageError` naming ``--dataset`` or ``--data_path`` as given when it is a path that does not
    exist: before a run writes anything or loads anything."""
    builders = ("parquet", "imagefolder", "csv", "json", "arrow")
    if d.dataset not in DATASETS and d.dataset not in builders and _looks_local(d.dataset):
        if not Path(d.dataset).expanduser().is_dir():
            raise UsageError(f"--dataset {d.dataset!r}: {no_such_directory(d.dataset)}")
    folder_datasets = ("camvid", "gta5", "easyportrait", *(f"mapillary_{v}" for v in MAPILLARY_VERSIONS))
    if d.data_path and d.dataset in folder_datasets and not Path(d.data_path).expanduser().is_dir():
        raise UsageError(f"--data_path {d.data_path!r}: {no_such_directory(d.data_path)}")
    if d.data_path and d.dataset == "cityscapes" and _looks_local(d.data_path) and not Path(d.data_path).is_dir():
        raise UsageError(f"--data_path {d.data_path!r}: {no_such_directory(d.data_path)}")


def _looks_local(name: str) -> bool:
    """A path rather than a Hub repo id: relative to here or absolute, nested, or under a directory that exists."""
    parts = Path(name).parts
    return name.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def check_model_source(name: str, revision: str | None = None) -> None:
    """Raise :class:`UsageError` at once, before transformers retries the Hub for tens of seconds, when ``name``
    is neither a local directory nor a model the Hub cache or the Hub has (``HF_HUB_OFFLINE``: the cache only)."""
    if Path(name).is_dir():
        return
    made_by = (
        "If another command makes this model (the --config file's header names it, e.g. scripts/pretrain.py), "
        "run that first."
    )
    if Path(name).exists() or _looks_local(name):
        raise UsageError(f"model {name!r}: there is {no_such_directory(name)}. {made_by}")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", revision=revision), str):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UsageError(
            f"model {name!r}: {no_such_directory(name)}, and HF_HUB_OFFLINE is set and the Hub cache "
            f"does not hold it. {made_by}"
        )
    try:
        huggingface_hub.model_info(name, revision=revision, timeout=10)
    except huggingface_hub.errors.RepositoryNotFoundError as err:
        raise UsageError(f"model {name!r}: {no_such_directory(name)} nor repo on the Hub. {made_by}") from err
    except huggingface_hub.errors.HfHubHTTPError as err:
        raise UsageError(f"model {name!r}: the Hub refused it ({str(err).splitlines()[0]})") from err
    except Exception as err:  # the network: DNS, connection, timeout
        raise UsageError(
            f"model {name!r}: {no_such_directory(name)}, and the Hub cannot be reached "
            f"({type(err).__name__}: {err}). {made_by}"
        ) from err


def _unloadable(name: str, err: OSError) -> UsageError:
    if Path(name).exists():
        return UsageError(f"model {name!r}: {err}")
    return UsageError(
        f"model {name!r}: there is {no_such_directory(name)}, and as a Hub repo id it could not be loaded "
        f"({str(err).splitlines()[0]}). If another command makes this model (the --config file's header names it, "
        "e.g. scripts/pretrain.py), run that first."
    )


def model_config(model_args: ModelArguments):
    """The ``PretrainedConfig`` of ``model_name_or_path`` without loading weights; ``None`` without one."""
    if not model_args.model_name_or_path:
        return None
    from transformers import AutoConfig

    check_model_source(model_args.model_name_or_path, model_args.revision)
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


def segmentation_trainer(
    model, args: RewardSegConfig, train, val, id2label: dict[int, str], metric_options: dict | None = None, **kwargs
) -> RewardSegTrainer:
    """A :class:`RewardSegTrainer` with the library's collator and streaming metrics, which report the reward
    ``args`` name (class weights and all) as ``reward`` beside mIoU and the other metrics; ``metric_options``
    go to :class:`StreamingMeanIoU` (``per_image``, ``boundary_tolerances``, ``thing_classes``)."""
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
    checkpoints = sorted(
        out.glob("checkpoint-*"),
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


@torch.no_grad()
def evaluate(
    model,
    dataset,
    id2label: dict[int, str],
    *,
    batch_size: int = 8,
    ignore_index: int = 255,
    reward: Reward | None = None,
    metric_options: dict | None = None,
    decoder: str = "argmax",
    desc: str = "evaluate",
    progress: bool = True,
) -> StreamingMeanIoU:
    """The metrics of ``model`` (in eval mode, on its own device) over ``dataset``, with a progress bar.

    ``metric_options`` go to :class:`StreamingMeanIoU`; ``decoder``: ``"argmax"`` or ``"rankseg"``
    (:mod:`hf_reward.decoders`; offsets are folded into the model by :func:`calibrate_model`).
    """
    if decoder not in ("argmax", "rankseg"):
        raise UsageError(f"decoder {decoder!r}: evaluate with 'argmax' or 'rankseg' (offsets: scripts/calibrate.py)")
    metric = StreamingMeanIoU(len(id2label), id2label, ignore_index, reward=reward, **(metric_options or {}))
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    with eval_mode(model):
        for i, batch in enumerate(tqdm(loader, unit="batch", desc=desc, disable=not progress)):
            logits, labels = model(pixel_values=batch["pixel_values"].to(device)).logits, batch["labels"].to(device)
            if not logits.isfinite().all():
                raise UsageError(
                    f"{desc}: the model's logits are not finite (NaN or inf) on batch {i}: its weights are broken; "
                    "an argmax of them would score a meaningless number"
                )
            metric.update_masks(decode(decoder, logits, tuple(labels.shape[-2:]), {}), labels)
    if metric.confusion is None:
        raise UsageError(f"{desc}: the evaluation split yields no image (check --eval_split and the data's source)")
    return metric


def calibrate_model(
    model,
    dataset,
    reward: str | Reward,
    *,
    split: str,
    batch_size: int = 8,
    ignore_index: int = 255,
    cache_dir: str | None = None,
    progress: bool = True,
    num_images: int | None = None,
    **fit_kwargs,
) -> Calibration:
    """Fit exact per-class offsets for ``reward`` on ``dataset`` (as evaluation sees it) and fold them into ``model``.

    ``split`` names the data in the model's calibration record; ``num_images``: how many a stream holds
    (for the progress bar; a map-style dataset knows). ``fit_kwargs`` go to
    :func:`hf_reward.calibrate.fit_offsets` (``step``, ``max_offset``, ``max_sweeps``); the fit runs on the
    model's device unless ``device`` says otherwise.
    """
    reward = get_reward(reward) if isinstance(reward, str) else reward
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    num_images = len(dataset) if hasattr(dataset, "__len__") else num_images
    total = None if num_images is None else math.ceil(num_images / batch_size)
    cache = collect_logits(
        model, loader, cache_dir=cache_dir, ignore_index=ignore_index, progress=progress, total=total
    )
    if len(cache) == 0:
        raise UsageError(f"the calibration split {split!r} yields no image (check its name and the data's source)")
    fit_kwargs.setdefault("device", next(model.parameters()).device)
    calibration = fit_offsets(cache, reward, ignore_index=ignore_index, progress=progress, **fit_kwargs)
    fold_offsets(model, calibration, split=f"{split} ({len(cache)} images)")
    return calibration
