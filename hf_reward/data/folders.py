"""Datasets shipped as folders of images and masks, in their publishers' layouts: Mapillary Vistas,
EasyPortrait, GTA5.

Each loader pairs every image with the mask of the same file stem, refuses an image without a mask
(naming it), maps the stored mask values to class indices, and returns the dataset with its
``id2label``, as :func:`hf_reward.data.load_camvid` does. The split names the publishers use are
accepted, and so are the scripts' defaults ``train`` and ``validation``.

- **Mapillary Vistas** (https://www.mapillary.com/dataset/vistas, after registration): ``<root>/
  config_v1.2.json`` and ``config_v2.0.json``; ``<root>/{training,validation}/images/<id>.jpg``;
  masks ``<root>/{training,validation}/{v1.2,v2.0}/labels/<id>.png`` holding the index of the label in
  that version's config. Labels whose ``evaluate`` is false (``void--unlabeled``, ...) are void; the
  others are the classes, in the config's order (v1.2: 65, v2.0: 123), with ``instances`` naming the
  thing classes.
- **EasyPortrait** (https://github.com/hukenovs/easyportrait): ``<root>/images/{train,val,test}/<id>.jpg``
  and ``<root>/annotations/{train,val,test}/<id>.png``, values 0-8: background, person, skin,
  left brow, right brow, left eye, right eye, lips, teeth.
- **GTA5** (https://download.visinf.tu-darmstadt.de/data/from_games/): ``<root>/images/<id>.png`` and
  ``<root>/labels/<id>.png`` holding Cityscapes label ids, mapped to the 19 trainIds by the official
  table as the GTA5 -> Cityscapes protocol does (the other ids are void). One split, ``train``: all
  images, the synthetic source of that protocol.

Example::

    ds, id2label = load_mapillary("validation", root="/data/vistas", version="v1.2")
    len(id2label)  # 65
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from .cityscapes import cityscapes_id2label, cityscapes_label_map
from .labels import DataError
from .loading import SegmentationDataset, prepare_segmentation_dataset

MAPILLARY_VERSIONS = ("v1.2", "v2.0")
EASYPORTRAIT_CLASSES = (
    "background",
    "person",
    "skin",
    "left brow",
    "right brow",
    "left eye",
    "right eye",
    "lips",
    "teeth",
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def paired_folders(
    images: Path,
    masks: Path,
    *,
    label_map: dict[int, int],
    split: str,
    ignore_index: int = 255,
    streaming: bool = True,
    **pipeline,
) -> datasets.IterableDataset | SegmentationDataset:
    """Every image under ``images`` with the mask ``<masks>/<stem>.png``, through the loading pipeline.

    ``label_map``: stored mask value -> class index or ``ignore_index``; a value it lacks is refused
    with the file named. ``pipeline``: ``transform``, ``shuffle_buffer``, ``seed``.
    """
    if not images.is_dir():
        raise FileNotFoundError(f"no image directory {images.resolve()}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images (.jpg, .png) in {images.resolve()}")
    pairs = [(f, masks / f"{f.stem}.png") for f in files]
    missing = [image.name for image, mask in pairs if not mask.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(pairs)} images in {images} have no mask <stem>.png in {masks}, e.g. {missing[:3]}"
        )
    raw = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": None, "path": str(image)} for image, _ in pairs],
            "label": [{"bytes": None, "path": str(mask)} for _, mask in pairs],
            "file": [image.name for image, _ in pairs],
        }
    )
    return prepare_segmentation_dataset(
        raw.to_iterable_dataset() if streaming else raw,
        label_map=label_map,
        ignore_index=ignore_index,
        split=split,
        **pipeline,
    )


def _split(split: str, names: dict[str, str], dataset: str) -> str:
    """The publisher's name of ``split`` (its own, or the scripts' ``train`` / ``validation``)."""
    if split in names.values():
        return split
    if split in names:
        return names[split]
    raise ValueError(f"{dataset} has the splits {sorted(set(names.values()))}, not {split!r}")


def mapillary_classes(root: str | Path, version: str = "v2.0", ignore_index: int = 255):
    """``(label_map, id2label, thing_classes)`` of a Mapillary Vistas version, from its config file.

    The evaluated labels, in the config's order, are the classes; the others are void.
    """
    if version not in MAPILLARY_VERSIONS:
        raise ValueError(f"Mapillary Vistas versions are {MAPILLARY_VERSIONS}, not {version!r}")
    config = Path(root) / f"config_{version}.json"
    if not config.is_file():
        raise FileNotFoundError(f"no {config.name} in {Path(root).resolve()}: is that the Mapillary Vistas directory?")
    labels = json.loads(config.read_text())["labels"]
    evaluated = [i for i, label in enumerate(labels) if label["evaluate"]]
    label_map = {i: ignore_index for i in range(len(labels))}
    label_map.update({stored: index for index, stored in enumerate(evaluated)})
    id2label = {index: labels[stored]["name"] for index, stored in enumerate(evaluated)}
    things = tuple(labels[stored]["name"] for stored in evaluated if labels[stored]["instances"])
    return label_map, id2label, things


def load_mapillary(
    split: str = "training",
    *,
    root: str | Path,
    version: str = "v2.0",
    ignore_index: int = 255,
    streaming: bool = True,
    **pipeline,
):
    """Mapillary Vistas ready for a model, and its ``id2label`` (see the module docstring for the layout)."""
    split = _split(split, {"train": "training", "validation": "validation"}, "Mapillary Vistas")
    label_map, id2label, _ = mapillary_classes(root, version, ignore_index)
    root = Path(root)
    ds = paired_folders(
        root / split / "images",
        root / split / version / "labels",
        label_map=label_map,
        split=split,
        ignore_index=ignore_index,
        streaming=streaming,
        **pipeline,
    )
    return ds, id2label


def load_easyportrait(
    split: str = "train", *, root: str | Path, ignore_index: int = 255, streaming: bool = True, **pipeline
):
    """EasyPortrait ready for a model, and its ``id2label`` (9 classes)."""
    split = _split(split, {"train": "train", "validation": "val", "test": "test"}, "EasyPortrait")
    root = Path(root)
    ds = paired_folders(
        root / "images" / split,
        root / "annotations" / split,
        label_map={i: i for i in range(len(EASYPORTRAIT_CLASSES))},
        split=split,
        ignore_index=ignore_index,
        streaming=streaming,
        **pipeline,
    )
    return ds, dict(enumerate(EASYPORTRAIT_CLASSES))


def load_gta5(split: str = "train", *, root: str | Path, ignore_index: int = 255, streaming: bool = True, **pipeline):
    """GTA5 with Cityscapes' 19 classes, and its ``id2label``; ``split`` is ``train``, all images."""
    _split(split, {"train": "train"}, "GTA5")
    # Cityscapes' ids 0-33 as the official table maps them; any other stored value is void, as the
    # protocol scores the 19 classes only.
    label_map = {**{v: ignore_index for v in range(256)}, **cityscapes_label_map(ignore_index)}
    root = Path(root)
    ds = paired_folders(
        root / "images",
        root / "labels",
        label_map=label_map,
        split=split,
        ignore_index=ignore_index,
        streaming=streaming,
        **pipeline,
    )
    return ds, cityscapes_id2label()
