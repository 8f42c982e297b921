"""CamVid (Cambridge street scenes) as Hugging Face parquet: 11 classes, value 11 = unlabelled.

The parquet files (``train-*.parquet`` 367 images, ``validation-*.parquet`` 101, columns
``image``, ``label`` (L-mode PNG 0-11), ``file``) and ``id2label.json`` sit in one directory;
on the project machines that is ``../shared/datasets/camvid`` from the repository root.

Frames are named ``<sequence>_<frame>.png``. Training holds three sequences: 0006R0 and 0016E5 by
day, 0001TP at dusk; validation holds 0016E5. :func:`camvid_day_dusk` splits them for adapting a
model from day to dusk.

Example::

    ds, id2label = load_camvid("validation", root="../shared/datasets/camvid")
    len(id2label), id2label[0]  # (11, 'sky')
    parts = camvid_day_dusk()
    pool, _ = load_camvid("train", frames=parts["target_pool"])  # 32 dusk frames to label or pseudo-label
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from ..sources import CAMVID_ROOT
from .labels import DataError
from .loading import SegmentationDataset, prepare_segmentation_dataset

DEFAULT_ROOT = CAMVID_ROOT
# The classes whose connected components are objects (hf_reward.mask_scores): Cityscapes' things in CamVid.
THING_CLASSES = ("car", "pedestrian", "bicyclist")
DAY_SEQUENCES = ("0006R0", "0016E5")
DUSK_SEQUENCE = "0001TP"


def camvid_id2label(root: str | Path) -> tuple[dict[int, str], int]:
    """``(id2label, stored value of unlabelled pixels)`` from ``<root>/id2label.json``."""
    meta = json.loads((Path(root) / "id2label.json").read_text())
    return {int(k): v for k, v in meta["id2label"].items()}, int(meta["ignore_index"])


def _parquet_files(root: Path, split: str) -> list[str]:
    files = sorted(root.glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet under {root.resolve()}")
    return [str(f) for f in files]


def camvid_frames(split: str = "train", root: str | Path = DEFAULT_ROOT) -> list[str]:
    """The file names of a split's frames, in their stored order."""
    return [
        name
        for f in _parquet_files(Path(root), split)
        for name in pq.read_table(f, columns=["file"])["file"].to_pylist()
    ]


def load_camvid(
    split: str = "train",
    *,
    root: str | Path = DEFAULT_ROOT,
    frames: Collection[str] | None = None,
    ignore_index: int = 255,
    streaming: bool = True,
    **pipeline,
) -> tuple[datasets.IterableDataset | SegmentationDataset, dict[int, str]]:
    """CamVid ready for a model, and its ``id2label``; ``pipeline`` as for :func:`load_segmentation_dataset`.

    ``frames``: only these file names of the split (e.g. a part of :func:`camvid_day_dusk`); one the
    split lacks is refused.

    Example::

        ds, id2label = load_camvid("train", transform=train_transform(256, seed=0), shuffle_buffer=64)
    """
    root = Path(root)
    files = _parquet_files(root, split)
    id2label, unlabelled = camvid_id2label(root)
    raw = datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    if frames is not None:
        wanted = set(frames)
        missing = sorted(wanted - set(camvid_frames(split, root)))
        if missing:
            raise DataError(f"CamVid's {split} split has no frames {missing[:3]} ({len(missing)} missing)")
        raw = raw.filter(lambda name: name in wanted, input_columns="file")
    ds = prepare_segmentation_dataset(
        raw,
        label_map={**{i: i for i in id2label}, unlabelled: ignore_index},
        ignore_index=ignore_index,
        split=split,
        **pipeline,
    )
    return ds, id2label


def camvid_day_dusk(root: str | Path = DEFAULT_ROOT, block: int = 8) -> dict[str, list[str]]:
    """CamVid's training frames split for day -> dusk adaptation: file names of each part.

    ``source``: the day sequences' frames (305); ``target_pool`` and ``target_eval``: the dusk
    sequence's frames (62), in alternating blocks of ``block`` consecutive frames, the first to the
    pool, so that both parts span the sequence and no evaluation frame has a labelled neighbour
    closer than the block's edge.
    """
    names = sorted(camvid_frames("train", root))
    dusk = [name for name in names if name.startswith(DUSK_SEQUENCE + "_")]
    return {
        "source": [name for name in names if name.split("_")[0] in DAY_SEQUENCES],
        "target_pool": [name for i, name in enumerate(dusk) if (i // block) % 2 == 0],
        "target_eval": [name for i, name in enumerate(dusk) if (i // block) % 2 == 1],
    }
