"""The datasets a command names (``--dataset``), loaded as streams with their classes; paths checked first.

- :func:`load_data` -> :class:`Splits`: a dataset named in :data:`DATASETS`, or any image + mask set;
- :func:`check_data_source`: a ``--dataset`` or ``--data_path`` that does not exist, named at once;
- :func:`metric_options`: what the metrics report for that dataset (its thing classes).

Example::

    splits = load_data(DataArguments(dataset="camvid"), augment=False)
    splits.id2label[0], splits.eval  # 'sky', the validation stream
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from ..data import Holdout, eval_transform, load_camvid, load_cityscapes, load_segmentation_dataset, load_toy_streets
from ..data import train_transform as make_train_transform
from ..data.camvid import DEFAULT_ROOT as CAMVID_PATH
from ..data.camvid import THING_CLASSES as CAMVID_THINGS
from ..data.cityscapes import HUB_REPO as CITYSCAPES_REPO
from ..data.cityscapes import cityscapes_thing_classes
from ..data.folders import MAPILLARY_VERSIONS, load_easyportrait, load_gta5, load_mapillary, mapillary_classes
from ..data.toy_streets import THING_CLASSES as TOY_STREETS_THINGS
from .arguments import DataArguments, UsageError, looks_local, no_such_directory


@dataclass
class Splits:
    """A dataset's training and evaluation splits, and its classes."""

    train: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None
    eval: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None
    id2label: dict[int, str]
    dev: torch.utils.data.Dataset | torch.utils.data.IterableDataset | None = None


def _toy_streets(d: DataArguments, split: str, role: str, pipeline: dict):
    images = d.toy_eval_images if role == "eval" else d.toy_train_images  # dev: held out of train
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
    local = d.dataset not in ("parquet", "imagefolder", "csv", "json", "arrow") and looks_local(d.dataset)
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
    dev_fraction: float | None = None,
    dev_split: str | None = None,
) -> Splits:
    """A shuffled, augmented training stream and a deterministic evaluation stream, and the classes.

    ``id2label``: the classes of a dataset that is not one of :data:`DATASETS` (its masks hold
    class indices) when ``--class_names`` does not give them; those bring their own.
    ``augment=False`` streams the training split like the evaluation one (full size, no shuffle),
    for calibration. ``roles``: the splits to load (``("eval",)``: the evaluation split alone,
    ``train`` is then ``None``; ``"dev"``: a development split, streamed like the evaluation one).
    The dev split is ``dev_split`` when given, else ``dev_fraction`` of the training split in seeded
    blocks of consecutive images (:class:`hf_reward.data.Holdout`), which the training split then
    leaves out. Trainer gives each process its part of the training stream (accelerate's batch
    dispatch), so every process loads the whole stream.
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
        "dev": (dev_split or d.train_split, eval_pipeline),
    }
    if dev_fraction is not None and not dev_split:
        held = dict(fraction=dev_fraction, seed=seed)
        splits["train"] = (d.train_split, {**splits["train"][1], "holdout": Holdout(**held, part="rest")})
        splits["dev"] = (d.train_split, {**eval_pipeline, "holdout": Holdout(**held)})
    elif "dev" in roles and not dev_split:
        raise ValueError("a dev role needs dev_fraction or dev_split")
    loaded = {"train": (None, None), "eval": (None, None), "dev": (None, None)}
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
    (train, train_classes), (val, eval_classes), (dev, dev_classes) = loaded["train"], loaded["eval"], loaded["dev"]
    if val is not None and d.max_eval_samples is not None:
        val = val.take(d.max_eval_samples)
    return Splits(train, val, train_classes or eval_classes or dev_classes, dev)


def check_data_source(d: DataArguments) -> None:
    """Raise :class:`UsageError` naming ``--dataset`` or ``--data_path`` as given when it is a path that does not
    exist: before a run writes anything or loads anything."""
    builders = ("parquet", "imagefolder", "csv", "json", "arrow")
    if d.dataset not in DATASETS and d.dataset not in builders and looks_local(d.dataset):
        if not Path(d.dataset).expanduser().is_dir():
            raise UsageError(f"--dataset {d.dataset!r}: {no_such_directory(d.dataset)}")
    folder_datasets = ("camvid", "gta5", "easyportrait", *(f"mapillary_{v}" for v in MAPILLARY_VERSIONS))
    if d.data_path and d.dataset in folder_datasets and not Path(d.data_path).expanduser().is_dir():
        raise UsageError(f"--data_path {d.data_path!r}: {no_such_directory(d.data_path)}")
    if d.data_path and d.dataset == "cityscapes" and looks_local(d.data_path) and not Path(d.data_path).is_dir():
        raise UsageError(f"--data_path {d.data_path!r}: {no_such_directory(d.data_path)}")
