"""Cityscapes: label ids 0-33 -> the 19 evaluation classes (trainIds), everything else -> ignore.

The map and the class names come from ``cityscapesscripts.helpers.labels``, the official
table, not a copy; that package is the ``cityscapes`` extra (``pip install 'hf-reward[cityscapes]'``),
imported only when Cityscapes is used. The default source is the Hub parquet mirror ``Chris1/cityscapes``
(columns ``image`` and ``semantic_segmentation``, masks holding label ids, sometimes saved
with 3 equal channels).

Example::

    ds, id2label = load_cityscapes("validation", transform=eval_transform((512, 1024)))
    id2label[0], id2label[18], len(id2label)  # ('road', 'bicycle', 19)
"""

from __future__ import annotations

import datasets

from ..sources import CITYSCAPES_HUB_REPO
from .loading import SegmentationDataset, load_segmentation_dataset

HUB_REPO = CITYSCAPES_HUB_REPO


def _official_labels() -> list:
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError as err:
        raise ImportError(
            "Cityscapes' label table comes from the cityscapesscripts package, the 'cityscapes' extra: "
            "pip install 'hf-reward[cityscapes]'"
        ) from err
    return labels


def cityscapes_label_map(ignore_index: int = 255) -> dict[int, int]:
    """Label id -> trainId for ids 0-33; ids not evaluated (``ignoreInEval``) -> ``ignore_index``.

    >>> m = cityscapes_label_map(); m[7], m[26], m[0]
    (0, 13, 255)
    """
    return {
        label.id: ignore_index if label.ignoreInEval else label.trainId
        for label in _official_labels()
        if label.id >= 0
    }


def cityscapes_id2label() -> dict[int, str]:
    """The 19 evaluation classes, trainId -> name.

    >>> id2label = cityscapes_id2label(); id2label[0], id2label[18], len(id2label)
    ('road', 'bicycle', 19)
    """
    labels = sorted(_official_labels(), key=lambda label: label.trainId)
    return {label.trainId: label.name for label in labels if not label.ignoreInEval}


def cityscapes_thing_classes() -> tuple[str, ...]:
    """The evaluated classes that have instances (the official table's ``hasInstances``).

    >>> cityscapes_thing_classes()
    ('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')
    """
    labels = sorted(_official_labels(), key=lambda label: label.trainId)
    return tuple(label.name for label in labels if label.hasInstances and not label.ignoreInEval)


def load_cityscapes(
    split: str = "train",
    *,
    path: str = HUB_REPO,
    data_files=None,
    image_column: str = "image",
    label_column: str = "semantic_segmentation",
    ignore_index: int = 255,
    streaming: bool = True,
    **pipeline,
) -> tuple[datasets.IterableDataset | SegmentationDataset, dict[int, str]]:
    """Cityscapes ready for a model, and its ``id2label`` (19 classes).

    ``path``/``data_files`` as for :func:`load_segmentation_dataset` (the Hub mirror by default,
    or ``"parquet"`` with local files); ``pipeline`` takes its other keyword arguments.

    Example::

        ds, id2label = load_cityscapes("train", path="parquet", data_files="cityscapes/train-*.parquet",
                                       transform=train_transform(512, seed=0), shuffle_buffer=256)
    """
    ds = load_segmentation_dataset(
        path,
        split,
        data_files=data_files,
        image_column=image_column,
        label_column=label_column,
        label_map=cityscapes_label_map(ignore_index),
        ignore_index=ignore_index,
        streaming=streaming,
        **pipeline,
    )
    return ds, cityscapes_id2label()
