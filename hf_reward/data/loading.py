"""One entry point for any image + mask dataset: a Hub repo id, or local parquet / imagefolder files.

Raw rows are decoded here rather than by ``datasets`` so that a broken row raises an error
naming the sample (its stream index and, when known, its file) instead of failing deep inside
the library or, worse, yielding a wrong mask.

Random augmentation and resuming: a transform draws from its seed and the sample's key alone
(:class:`~hf_reward.data.transforms.TrainTransform`), never from a generator that advances per
sample, so what a sample gets does not depend on which samples were loaded before it.

* Map-style (:class:`SegmentationDataset`): the key is ``(epoch, index)``, ``index`` the row.
  Trainer resumes by skipping the first batches' indices unloaded; the keys of the rest are
  unchanged. The epoch comes from ``set_epoch``. Trainer calls the DataLoader's ``set_epoch``
  every epoch, but accelerate (1.15) passes it on to the dataset only when no sampler in
  between has a ``set_epoch`` of its own: not in an epoch resumed mid-way (``skip_first_batches``
  wraps the sampler) and not across processes (``BatchSamplerShard``). So
  :class:`~hf_reward.RewardSegTrainer` calls ``set_epoch`` on the dataset itself every epoch.
  Under a plain Trainer the dataset stays at epoch 0 then: the rest of an epoch resumed after
  the first, and every epoch across processes, repeat the first epoch's draws.
* Streams: the key is ``(epoch, worker, index)``, ``index`` counting the examples that each
  DataLoader worker reads, the epoch that of the returned ``IterableDataset``, which accelerate
  sets every pass (``datasets`` keeps it in shared memory, so persistent workers see it). A
  stream is resumed by iterating it up to the checkpoint, so every example gets its key again;
  RewardSegTrainer resumes in the pass the checkpoint was in, where Trainer counts ``max_steps``
  steps per pass. A dataset derived from the returned one (``take``, ``shard``) has an epoch of
  its own, which does not reach the transform.

Example::

    ds = load_segmentation_dataset(
        "parquet", "validation",
        data_files={"validation": "../shared/datasets/camvid/validation-*.parquet"},
        label_map={**{i: i for i in range(11)}, 11: 255},
    )
    ex = next(iter(ds))
    ex["pixel_values"].shape, ex["labels"].shape  # (torch.Size([3, 360, 480]), torch.Size([360, 480]))
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import datasets
import numpy as np
import PIL.Image
import torch
from datasets.iterable_dataset import ExamplesIterable

from .labels import DataError, identity_label_map, label_lookup, map_mask
from .transforms import eval_transform

# (image (H, W, 3) uint8, labels (H, W) int64, key) -> {"pixel_values", "labels"}; see the module doc for the key.
Transform = Callable[[np.ndarray, np.ndarray, tuple[int, ...]], dict]

# Columns that commonly hold the file a row came from; used to name a bad sample.
_FILE_COLUMNS = ("file", "file_name", "filename", "path", "image_path", "id")
# PIL's modes of 16-bit unsigned single-channel images.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_segmentation_dataset(
    path: str,
    split: str,
    *,
    data_files=None,
    image_column: str = "image",
    label_column: str = "label",
    label_map: Mapping[int, int] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    streaming: bool = True,
    transform: Transform | None = None,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    holdout: Holdout | None = None,
) -> datasets.IterableDataset | SegmentationDataset:
    """Load one split of an image + mask dataset, ready for a SegFormer.

    Args:
        path: a Hub repo id (``"Chris1/cityscapes"``), a local directory, or a builder name
            (``"parquet"``, ``"imagefolder"``) used with ``data_files``.
        split: the split to load (``"train"``, ``"validation"``, ...).
        data_files: as for ``datasets.load_dataset``; a plain path or list is taken as ``split``.
        image_column, label_column: the columns holding the RGB image and the mask.
        label_map: stored mask value -> class index (or ``ignore_index`` for void). Default: the
            identity over ``range(num_classes)``, i.e. masks already hold class indices.
        num_classes: needed only when ``label_map`` is not given.
        ignore_index: the label of void pixels.
        streaming: return a lazily streamed ``IterableDataset`` (default) or a map-style
            :class:`SegmentationDataset`.
        transform: ``(image (H, W, 3) uint8, labels (H, W) int64, key) -> {"pixel_values", "labels"}``,
            e.g. :func:`train_transform`; default :func:`eval_transform` (full resolution).
        shuffle_buffer: if set, shuffle with ``seed``: a buffer of this many rows when
            streaming (Trainer's ``set_epoch`` reshuffles it every pass), the rows once otherwise.
        holdout: only the rows it keeps (:class:`Holdout`: a development split, or the rest).

    Returns:
        A dataset of ``{"pixel_values": (3, H, W) float32, "labels": (H, W) int64}``, transformed
        on access, so random augmentation stays random (keyed as in the module doc).

    Example::

        ds = load_segmentation_dataset("parquet", "train", data_files="masks/*.parquet",
                                       label_column="mask", num_classes=5, streaming=False)
        ds[0]["labels"].unique()  # tensor([  0,   3, 255])
    """
    if data_files is not None and not isinstance(data_files, Mapping):
        data_files = {split: data_files}
    raw = datasets.load_dataset(path, data_files=data_files, split=split, streaming=streaming)
    return prepare_segmentation_dataset(
        raw,
        image_column=image_column,
        label_column=label_column,
        label_map=label_map,
        num_classes=num_classes,
        ignore_index=ignore_index,
        transform=transform,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        split=split,
        holdout=holdout,
    )


def prepare_segmentation_dataset(
    raw: datasets.IterableDataset | datasets.Dataset,
    *,
    image_column: str = "image",
    label_column: str = "label",
    label_map: Mapping[int, int] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    transform: Transform | None = None,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    split: str | None = None,
    holdout: Holdout | None = None,
) -> datasets.IterableDataset | SegmentationDataset:
    """The pipeline of :func:`load_segmentation_dataset`, applied to a dataset already loaded.

    ``holdout``: only the rows it keeps (a development split held out of a training split, or the rest),
    chosen by their stored position, before any shuffle.

    Columns may hold ``datasets.Image`` values, PIL images, arrays or ``{"bytes", "path"}``.

    Example::

        raw = datasets.load_dataset("parquet", data_files="train.parquet", split="train", streaming=True)
        ds = prepare_segmentation_dataset(raw, num_classes=9, transform=train_transform(256, seed=0))
    """
    if label_map is None:
        if num_classes is None:
            raise ValueError("give label_map (stored value -> class index) or num_classes (masks hold class indices)")
        label_map = identity_label_map(num_classes, ignore_index)
    table = label_lookup(label_map, ignore_index)
    transform = transform or eval_transform()
    where = f" of split {split!r}" if split else ""

    columns = raw.column_names  # None for a stream whose features are unknown: checked per row
    if columns is not None:
        _check_columns(columns, image_column, label_column)
        # Decode ourselves, so that an undecodable image names its sample.
        for column in (image_column, label_column):
            if isinstance(raw.features[column], datasets.Image):
                raw = raw.cast_column(column, datasets.Image(decode=False))

    def process(example: dict, index: int, key: tuple[int, ...]) -> dict:
        _check_columns(list(example), image_column, label_column)
        name = _sample_name(example, index, image_column) + where
        image = decode_image(example[image_column], name)
        mask = decode_mask(example[label_column], name)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{name}: image is {image.shape[0]}x{image.shape[1]} (HxW) but its mask is "
                f"{mask.shape[0]}x{mask.shape[1]}; they must have the same size"
            )
        return transform(image, map_mask(mask, table, name), key)

    if holdout is not None:
        if isinstance(raw, datasets.IterableDataset):
            # One stream in stored order: a shuffle reorders a stream's shards and numbers each shard's rows
            # from 0, so a filter by index would pick other rows every epoch.
            # Built directly, not by from_generator: its builder creates a cache directory under a lock, and two
            # processes of a launch creating the same one at once can crash.
            rows = ExamplesIterable(_held_rows, {"raw": raw, "holdout": holdout})
            raw = datasets.IterableDataset(rows, info=datasets.DatasetInfo(features=raw.features), split=raw.split)
        else:
            raw = raw.select([row for row in range(len(raw)) if holdout.keeps(row)])
    if isinstance(raw, datasets.IterableDataset):
        if shuffle_buffer:
            raw = raw.shuffle(seed=seed, buffer_size=shuffle_buffer)
        # `stream` is read when an example is processed: the epoch of the dataset returned here.
        stream = raw.map(
            lambda example, index: process(example, index, (stream.epoch, _worker_id(), index)),
            with_indices=True,
            remove_columns=columns,
        )
        return stream

    if shuffle_buffer:
        raw = raw.shuffle(seed=seed)
    return SegmentationDataset(raw, process)


@dataclass(frozen=True)
class Holdout:
    """A share of a split's rows, in blocks of ``block`` consecutive stored rows: a development split held out of a
    training split (``part="held_out"``) or what training keeps (``part="rest"``).

    Blocks, not single rows: in a video dataset neighbouring frames are near-duplicates, and a dev
    frame beside a training frame would measure memory, not generalisation. One block in every
    ``round(block / fraction)`` rows is held out, at an offset ``seed`` draws, so the share is
    ``fraction`` on a stream of unknown length, the two parts are complementary, and both are the
    same on every process and every run.

    >>> dev, rest = Holdout(0.25, seed=1, block=4), Holdout(0.25, seed=1, block=4, part="rest")
    >>> held = [row for row in range(400) if dev.keeps(row)]
    >>> len(held), any(rest.keeps(row) for row in held), len(held) + sum(map(rest.keeps, range(400)))
    (100, False, 400)
    """

    fraction: float
    seed: int = 0
    block: int = 16
    part: str = "held_out"

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise ValueError(f"holdout fraction must lie in (0, 1), got {self.fraction}")
        if self.block < 1:
            raise ValueError(f"holdout block must be at least 1 row, got {self.block}")
        if self.part not in ("held_out", "rest"):
            raise ValueError(f"holdout part must be 'held_out' or 'rest', got {self.part!r}")

    @functools.cached_property
    def _period_and_offset(self) -> tuple[int, int]:  # once, not for every row of a stream
        period = max(self.block + 1, round(self.block / self.fraction))
        return period, random.Random(self.seed).randrange(period)

    def keeps(self, row: int) -> bool:
        period, offset = self._period_and_offset
        return ((row + offset) % period < self.block) == (self.part == "held_out")


def _held_rows(raw: datasets.IterableDataset, holdout: Holdout):
    """``(row, example)`` for the rows ``holdout`` keeps, in stored order."""
    yield from ((row, example) for row, example in enumerate(raw) if holdout.keeps(row))


class EpochDataset(torch.utils.data.Dataset):
    """A map-style dataset whose random transforms are keyed by ``(epoch, index)``; ``set_epoch`` sets the epoch.

    The epoch is a shared-memory tensor, so persistent DataLoader workers see it change too.
    See the module doc for who calls ``set_epoch``.
    """

    def __init__(self):
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)


class SegmentationDataset(EpochDataset):
    """Rows of a map-style ``datasets.Dataset``, decoded, label-mapped and transformed on access.

    ``ds[i]`` is ``{"pixel_values": (3, H, W) float32, "labels": (H, W) int64}``, transformed with key ``(epoch, i)``.
    """

    def __init__(self, rows: datasets.Dataset, process: Callable[[dict, int, tuple[int, ...]], dict]):
        super().__init__()
        self.rows, self.process = rows, process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        index = range(len(self.rows))[index]  # a plain int >= 0; IndexError past the end
        return self.process(self.rows[index], index, (self.epoch, index))


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


def _check_columns(columns: list[str], image_column: str, label_column: str) -> None:
    missing = [c for c in (image_column, label_column) if c not in columns]
    if missing:
        raise DataError(
            f"column(s) {missing} not found; the dataset has columns {sorted(columns)}. "
            f"Pass image_column= and label_column= to name the image and mask columns."
        )


def _sample_name(example: dict, index: int, image_column: str) -> str:
    name = f"sample {index}"
    value = example.get(image_column)
    file = value.get("path") if isinstance(value, dict) else None
    file = file or next((example[c] for c in _FILE_COLUMNS if isinstance(example.get(c), str)), None)
    return f"{name} ({file})" if file else name


def _open(value, name: str, what: str) -> PIL.Image.Image | np.ndarray:
    """A PIL image or array from any of the forms a column can hold."""
    if isinstance(value, (PIL.Image.Image, np.ndarray)):
        return value
    if isinstance(value, dict):  # datasets.Image(decode=False)
        try:
            if value.get("bytes") is not None:
                image = PIL.Image.open(io.BytesIO(value["bytes"]))
            else:
                image = PIL.Image.open(value["path"])
            image.load()
            return image
        except Exception as err:
            raise DataError(f"{name}: could not decode the {what}: {type(err).__name__}: {err}") from err
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise DataError(f"{name}: the {what} is a {type(value).__name__}; expected an image, array or bytes")


def decode_image(value, name: str = "sample") -> np.ndarray:
    """An image column value -> (H, W, 3) uint8 RGB.

    16-bit grayscale (PIL mode ``I;16``) is scaled to 8 bit (``round(v / 257)``), where PIL's own
    conversion clips every value above 255 to white. 32-bit modes (``I``, ``F``) have no known
    range to scale from and are refused.
    """
    image = _open(value, name, "image")
    if isinstance(image, PIL.Image.Image):
        if image.mode in _UINT16_MODES:
            gray = np.rint(np.asarray(image, dtype=np.float32) / 257).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        if image.mode in ("I", "F"):
            kind = "integer" if image.mode == "I" else "float"
            raise DataError(
                f"{name}: image has PIL mode {image.mode!r} (32-bit {kind}), whose range to scale to 8 bit is "
                f"unknown; store the images as 8-bit (L, RGB) or 16-bit (I;16)"
            )
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"{name}: image array has shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8"
        )
    return image


def decode_mask(value, name: str = "sample") -> np.ndarray:
    """A mask column value -> (H, W) integer array of stored values.

    Masks saved with several equal channels are reduced to one; channels that differ mean a
    colour-coded mask, which has no value lookup and is refused.
    """
    mask = _open(value, name, "mask")
    # P-mode masks hold indices into their palette: those indices are the stored values.
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise DataError(
                f"{name}: mask has {mask.shape[-1]} channels that differ (a colour-coded mask?); "
                f"store one label value per pixel"
            )
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(f"{name}: mask has shape {mask.shape}; expected (H, W)")
    return mask
