"""Datasets for semantic segmentation: loading, label maps, adapters, transforms, in-memory splits.

Example::

    >>> from hf_reward.data import load_toy_streets, train_transform, collate_segmentation
    >>> ds, id2label = load_toy_streets("train", num_images=64, size=128, transform=train_transform(96, seed=0))
    >>> batch = collate_segmentation([ex for ex, _ in zip(ds, range(4))])
    >>> batch["pixel_values"].shape
    torch.Size([4, 3, 96, 96])
"""

from .camvid import load_camvid
from .cityscapes import cityscapes_id2label, cityscapes_label_map, load_cityscapes
from .folders import load_easyportrait, load_gta5, load_mapillary, mapillary_classes
from .in_memory import InMemorySegmentation, materialise_split
from .labels import DataError, identity_label_map, label_lookup, map_mask
from .loading import (
    Holdout,
    SegmentationDataset,
    decode_image,
    decode_mask,
    load_segmentation_dataset,
    prepare_segmentation_dataset,
)
from .toy_streets import ID2LABEL as TOY_STREETS_ID2LABEL
from .toy_streets import load_toy_streets, make_scene, toy_streets
from .transforms import EvalTransform, TrainTransform, collate_segmentation, eval_transform, train_transform

__all__ = [
    "load_camvid",
    "Holdout",
    "cityscapes_id2label",
    "cityscapes_label_map",
    "load_cityscapes",
    "load_easyportrait",
    "load_gta5",
    "load_mapillary",
    "mapillary_classes",
    "InMemorySegmentation",
    "materialise_split",
    "DataError",
    "identity_label_map",
    "label_lookup",
    "map_mask",
    "SegmentationDataset",
    "decode_image",
    "decode_mask",
    "load_segmentation_dataset",
    "prepare_segmentation_dataset",
    "TOY_STREETS_ID2LABEL",
    "load_toy_streets",
    "make_scene",
    "toy_streets",
    "EvalTransform",
    "TrainTransform",
    "collate_segmentation",
    "eval_transform",
    "train_transform",
]
