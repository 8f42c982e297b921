"""CamVid (Cambridge street scenes) as Hugging Face parquet: 11 classes, value 11 = unlabelled.

The parquet files (``train-*.parquet`` 367 images, ``validation-*.parquet`` 101, columns
``image``, ``label`` (L-mode PNG 0-11), ``file``) and ``id2label.json`` sit in one directory;
on the project machines that is ``../shared/datasets/camvid`` from the repository root.

Example::

    ds, id2label = load_camvid("validation", root="../shared/datasets/camvid")
    len(id2label), id2label[0]  # (11, 'sky')
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from .loading import SegmentationDataset, load_segmentation_dataset

DEFAULT_ROOT = "../shared/datasets/camvid"  # where the project machines hold CamVid, from the repository root
# The classes whose connected components are objects (hf_reward.masks): Cityscapes' things among CamVid's classes.
THING_CLASSES = ("car", "pedestrian", "bicyclist")


def camvid_id2label(root: str | Path) -> tuple[dict[int, str], int]:
    """``(id2label, stored value of unlabelled pixels)`` from ``<root>/id2label.json``."""
    meta = json.loads((Path(root) / "id2label.json").read_text())
    return {int(k): v for k, v in meta["id2label"].items()}, int(meta["ignore_index"])


def load_camvid(
    split: str = "train",
    *,
    root: str | Path = DEFAULT_ROOT,
    ignore_index: int = 255,
    streaming: bool = True,
    **pipeline,
) -> tuple[datasets.IterableDataset | SegmentationDataset, dict[int, str]]:
    """CamVid ready for a model, and its ``id2label``; ``pipeline`` as for :func:`load_segmentation_dataset`.

    Example::

        ds, id2label = load_camvid("train", transform=train_transform(256, seed=0), shuffle_buffer=64)
    """
    root = Path(root)
    files = sorted(root.glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet under {root.resolve()}")
    id2label, unlabelled = camvid_id2label(root)
    label_map = {**{i: i for i in id2label}, unlabelled: ignore_index}
    ds = load_segmentation_dataset(
        "parquet",
        split,
        data_files=[str(f) for f in files],
        label_map=label_map,
        ignore_index=ignore_index,
        streaming=streaming,
        **pipeline,
    )
    return ds, id2label
