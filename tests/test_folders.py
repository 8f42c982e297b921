"""The folder datasets (Mapillary Vistas, EasyPortrait, GTA5) on small files in their publishers' layouts."""

import json

import numpy as np
import PIL.Image
import pytest
from cityscapesscripts.helpers.labels import id2label as cityscapes_labels

from hf_reward.cli import DataArguments, UsageError
from hf_reward.cli.data import load_data, metric_options
from hf_reward.data import DataError, load_easyportrait, load_gta5, load_mapillary, mapillary_classes


def write_pair(image_path, mask_path, mask: np.ndarray, palette: bool = False):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)).save(image_path)
    m = PIL.Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:  # as Mapillary and GTA5 ship them: indices into a colour palette
        m = m.convert("P")
        m.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    m.save(mask_path)


# A config in Mapillary's format: void labels between classes, things flagged by "instances".
MAPILLARY_LABELS = [
    {"name": "animal--bird", "readable": "Bird", "instances": True, "evaluate": True, "color": [165, 42, 42]},
    {
        "name": "construction--flat--road",
        "readable": "Road",
        "instances": False,
        "evaluate": True,
        "color": [128, 64, 128],
    },
    {
        "name": "void--ego-vehicle",
        "readable": "Ego Vehicle",
        "instances": False,
        "evaluate": False,
        "color": [0, 0, 0],
    },
    {"name": "object--vehicle--car", "readable": "Car", "instances": True, "evaluate": True, "color": [0, 0, 142]},
    {"name": "void--unlabeled", "readable": "Unlabeled", "instances": False, "evaluate": False, "color": [0, 0, 0]},
]


@pytest.fixture
def mapillary(tmp_path):
    (tmp_path / "config_v1.2.json").write_text(json.dumps({"labels": MAPILLARY_LABELS}))
    mask = np.array([[0, 1, 2, 3, 4]] * 6)
    for split in ("training", "validation"):
        write_pair(tmp_path / split / "images" / "a1.jpg", tmp_path / split / "v1.2" / "labels" / "a1.png", mask, True)
    return tmp_path


def test_mapillary_classes_are_the_evaluated_labels_in_the_configs_order(mapillary):
    label_map, id2label, things = mapillary_classes(mapillary, "v1.2")
    assert id2label == {0: "animal--bird", 1: "construction--flat--road", 2: "object--vehicle--car"}
    assert label_map == {0: 0, 1: 1, 2: 255, 3: 2, 4: 255}
    assert things == ("animal--bird", "object--vehicle--car")
    ds, _ = load_mapillary("train", root=mapillary, version="v1.2", streaming=False)  # the scripts' split name
    assert ds[0]["labels"][0].tolist() == [0, 1, 255, 2, 255]
    with pytest.raises(FileNotFoundError, match="no config_v2.0.json"):
        load_mapillary("training", root=mapillary)
    with pytest.raises(ValueError, match="versions are"):
        mapillary_classes(mapillary, "v3")


def test_a_mapillary_run_takes_its_classes_and_things_from_the_config(mapillary):
    data_args = DataArguments(dataset="mapillary_v1.2", data_path=str(mapillary), eval_size=[6, 5])
    splits = load_data(data_args, augment=False)
    assert splits.id2label[2] == "object--vehicle--car"
    assert next(iter(splits.eval))["labels"][0].tolist() == [0, 1, 255, 2, 255]
    assert metric_options(data_args)["thing_classes"] == ["animal--bird", "object--vehicle--car"]


def test_easyportrait_has_the_published_nine_classes_and_refuses_other_values(tmp_path):
    published = ["BACKGROUND", "PERSON", "SKIN", "LEFT BROW", "RIGHT_BROW", "LEFT_EYE", "RIGHT_EYE", "LIPS", "TEETH"]
    write_pair(tmp_path / "images/val/u1.jpg", tmp_path / "annotations/val/u1.png", np.array([list(range(9))] * 3))
    write_pair(tmp_path / "images/train/u2.jpg", tmp_path / "annotations/train/u2.png", np.array([[0, 9]] * 3))
    ds, id2label = load_easyportrait("validation", root=tmp_path, streaming=False)
    assert list(id2label.values()) == [name.lower().replace("_", " ") for name in published]
    assert ds[0]["labels"][0].tolist() == list(range(9))
    train, _ = load_easyportrait("train", root=tmp_path, streaming=False)
    with pytest.raises(DataError, match=r"u2\.jpg.*9"):
        train[0]
    with pytest.raises(ValueError, match=r"splits \['test', 'train', 'val'\], not 'dev'"):
        load_easyportrait("dev", root=tmp_path)


def test_gta5_maps_cityscapes_label_ids_by_the_official_table(tmp_path):
    ids = np.arange(0, 36).reshape(4, 9)  # every Cityscapes id 0-33, and two beyond
    write_pair(tmp_path / "images/00001.png", tmp_path / "labels/00001.png", ids, palette=True)
    ds, id2label = load_gta5("train", root=tmp_path, streaming=False)
    expected = [
        255 if i not in cityscapes_labels or cityscapes_labels[i].ignoreInEval else cityscapes_labels[i].trainId
        for i in range(36)
    ]
    assert ds[0]["labels"].flatten().tolist() == expected
    assert len(id2label) == 19 and id2label[13] == "car"
    with pytest.raises(ValueError, match="GTA5 has the splits"):
        load_gta5("validation", root=tmp_path)


def test_an_image_without_its_mask_is_named(tmp_path):
    write_pair(tmp_path / "images/00001.png", tmp_path / "labels/00001.png", np.zeros((3, 3)))
    write_pair(tmp_path / "images/00002.png", tmp_path / "elsewhere/00002.png", np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"1 of 2 images .* no mask .*00002\.png"):
        load_gta5("train", root=tmp_path)


def test_a_folder_dataset_without_its_directory_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="--dataset gta5 needs --data_path: the directory it was unpacked to"):
        load_data(DataArguments(dataset="gta5"), augment=False)
    with pytest.raises(UsageError, match=r"--data_path '.*/nowhere': no such directory$"):
        load_data(DataArguments(dataset="gta5", data_path=str(tmp_path / "nowhere")), augment=False)
