"""Data layer: label maps, adapters (Cityscapes-shaped parquet, real CamVid, toy streets),
transforms, streaming, and a clear error for each kind of bad input."""

import io
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label as cs_id2label
from conftest import CAMVID, tiny_segformer

from hf_reward.data import (
    TOY_STREETS_ID2LABEL,
    collate_segmentation,
    eval_transform,
    label_lookup,
    load_camvid,
    load_cityscapes,
    load_segmentation_dataset,
    load_toy_streets,
    make_scene,
    map_mask,
    prepare_segmentation_dataset,
    toy_streets,
    train_transform,
)
from hf_reward.data.camvid import camvid_day_dusk, camvid_frames
from hf_reward.data.labels import DataError
from hf_reward.modeling import check_id2label


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def tiff(array: np.ndarray) -> bytes:  # PNG has no 32-bit modes
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="TIFF")
    return buf.getvalue()


def write_parquet(path: Path, rows: dict, image_columns=("image", "label")) -> str:
    features = {c: datasets.Image() if c in image_columns else datasets.Value("string") for c in rows}
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(str(path))
    return str(path)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# Label maps -----------------------------------------------------------------------------------


def test_label_lookup_maps_in_one_lookup_and_names_unknown_values():
    table = label_lookup({0: 0, 1: 1, 11: 255})
    mask = np.array([[0, 11], [1, 0]], np.uint8)
    assert map_mask(mask, table, "x").tolist() == [[0, 255], [1, 0]]
    with pytest.raises(ValueError, match=r"sample 7 \(a\.png\).*\[5, 300\]"):
        map_mask(np.array([[0, 5], [300, 1]], np.int32), table, "sample 7 (a.png)")


# Cityscapes -------------------------------------------------------------------------------------


def test_cityscapes_adapter_streams_parquet_with_official_train_ids(tmp_path):
    ids = np.array(
        [[7, 8, 26, 0], [24, 33, 9, 23]], np.uint8
    )  # road, sidewalk, car, void / person, bicycle, parking(void), sky
    mask3 = np.repeat(ids[..., None], 3, axis=-1)  # stored with 3 equal channels, as on the Hub mirror
    rows = {"image": [png(rgb(2, 4))], "semantic_segmentation": [png(mask3)]}
    files = write_parquet(tmp_path / "train-00000.parquet", rows, ("image", "semantic_segmentation"))
    ds, id2label = load_cityscapes("train", path="parquet", data_files=files)
    assert isinstance(ds, datasets.IterableDataset)
    labels = next(iter(ds))["labels"]
    expected = [
        [cs_id2label[i].trainId if not cs_id2label[i].ignoreInEval else 255 for i in row] for row in ids.tolist()
    ]
    assert labels.tolist() == expected == [[0, 1, 13, 255], [11, 18, 255, 10]]
    assert len(id2label) == 19 and id2label[0] == "road" and id2label[18] == "bicycle"


def test_imagefolder_with_mask_files_in_metadata(tmp_path):
    for i in range(2):
        PIL.Image.fromarray(rgb(6, 8, seed=i)).save(tmp_path / f"img{i}.png")
        PIL.Image.fromarray(np.full((6, 8), 3 * i, np.uint8)).save(tmp_path / f"mask{i}.png")
    lines = [f'{{"file_name": "img{i}.png", "label_file_name": "mask{i}.png"}}' for i in range(2)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_segmentation_dataset("imagefolder", "train", data_files=str(tmp_path / "*"), label_map={0: 0, 3: 1})
    got = sorted(ex["labels"].unique().tolist() for ex in ds)
    assert got == [[0], [1]]


# CamVid (real data) -----------------------------------------------------------------------------


def test_camvid_streams_real_examples_into_a_segformer():
    ds, id2label = load_camvid("validation", root=CAMVID, transform=train_transform(64, seed=0))
    batch = collate_segmentation([ex for ex, _ in zip(ds, range(2))])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["labels"].dtype == torch.long
    assert set(batch["labels"].unique().tolist()) <= set(range(11)) | {255}

    model = tiny_segformer(id2label=id2label)
    check_id2label(model.config.id2label, id2label)
    out = model(**batch)
    assert out.logits.shape == (2, 11, 16, 16) and torch.isfinite(out.loss)


def test_camvid_unlabelled_becomes_ignore_at_full_resolution():
    raw = datasets.load_dataset(
        "parquet", data_files=str(CAMVID / "validation-*.parquet"), split="train", streaming=True
    )
    stored = np.asarray(next(iter(raw))["label"])
    ds, _ = load_camvid("validation", root=CAMVID)
    labels = next(iter(ds))["labels"].numpy()
    assert (stored == 11).any()
    np.testing.assert_array_equal(labels, np.where(stored == 11, 255, stored))


# Toy streets ------------------------------------------------------------------------------------


def test_toy_streets_is_deterministic():
    a, la = make_scene(5, (64, 96), seed=3)
    b, lb = make_scene(5, (64, 96), seed=3)
    assert (a == b).all() and (la == lb).all()
    assert not (make_scene(5, (64, 96), seed=4)[0] == a).all()
    assert not (make_scene(5, (64, 96), seed=3, split="validation")[0] == a).all()


def test_toy_streets_has_large_easy_and_thin_rare_classes():
    counts = np.zeros(len(TOY_STREETS_ID2LABEL))
    for i in range(40):
        counts += np.bincount(make_scene(i, 96)[1].ravel(), minlength=len(counts))
    share = dict(zip(TOY_STREETS_ID2LABEL.values(), counts / counts.sum()))
    assert all(share[c] > 0.1 for c in ("road", "sidewalk", "building", "sky"))
    assert all(0 < share[c] < 0.03 for c in ("pole", "person", "sign"))


def test_toy_streets_streaming_and_map_style_give_the_same_examples():
    streamed, id2label = load_toy_streets("train", num_images=3, size=32)
    stored, _ = load_toy_streets("train", num_images=3, size=32, streaming=False)
    assert len(stored) == 3 and id2label == TOY_STREETS_ID2LABEL
    for i, ex in enumerate(streamed):
        assert torch.equal(ex["labels"], stored[i]["labels"])
        assert torch.allclose(ex["pixel_values"], stored[i]["pixel_values"])
        assert ex["labels"].shape == (32, 32)


# Transforms --------------------------------------------------------------------------------------


def test_train_transform_is_seeded_and_pads_labels_with_ignore():
    image, labels = make_scene(0, 32)

    def t():
        return train_transform(48, scale_range=(0.5, 0.5), seed=1)  # 16x16 after scaling: mostly padding

    a, b = t()(image, labels, (0, 3)), t()(image, labels, (0, 3))
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    assert a["labels"].shape == (48, 48) and a["pixel_values"].shape == (3, 48, 48)
    pad = a["labels"] == 255
    assert pad.sum() == 48 * 48 - 16 * 16
    assert (a["pixel_values"][:, pad] == 0).all()  # the mean after normalisation
    assert set(a["labels"][~pad].unique().tolist()) <= set(np.unique(labels).tolist())


def test_train_transform_is_a_function_of_seed_and_key():
    image, labels = make_scene(0, 32)
    t = train_transform(24, seed=0)
    first = [t(image, labels, (0, i))["pixel_values"] for i in range(3)]
    assert torch.equal(t(image, labels, (0, 1))["pixel_values"], first[1])  # whatever was drawn before
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(t(image, labels, (1, 1))["pixel_values"], first[1])  # the next epoch draws anew
    assert not torch.equal(train_transform(24, seed=1)(image, labels, (0, 1))["pixel_values"], first[1])


def test_train_transform_flips_and_normalises_with_processor_stats():
    from transformers import SegformerImageProcessor

    processor = SegformerImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image, labels = make_scene(1, 32)
    t = train_transform(32, scale_range=(1.0, 1.0), jitter=0.0, image_processor=processor, seed=0)
    outs = [t(image, labels, (0, i)) for i in range(8)]
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    flipped = [torch.allclose(o["pixel_values"], expected.flip(-1), atol=1e-5) for o in outs]
    plain = [torch.allclose(o["pixel_values"], expected, atol=1e-5) for o in outs]
    assert all(f or p for f, p in zip(flipped, plain)) and any(flipped) and any(plain)
    for o, f in zip(outs, flipped):
        assert torch.equal(
            o["labels"],
            torch.from_numpy(labels.astype(np.int64)).flip(-1) if f else torch.from_numpy(labels.astype(np.int64)),
        )


def test_eval_transform_resizes_labels_by_nearest_or_keeps_them():
    image, labels = make_scene(2, (64, 96))
    out = eval_transform((32, 48))(image, labels)
    assert out["pixel_values"].shape == (3, 32, 48) and out["labels"].shape == (32, 48)
    assert set(out["labels"].unique().tolist()) <= set(np.unique(labels).tolist())
    assert out["labels"].tolist() == labels[1::2, 1::2].tolist()  # the pixel under each output centre
    full = eval_transform((32, 48), resize_labels=False)(image, labels)
    assert full["pixel_values"].shape == (3, 32, 48) and full["labels"].tolist() == labels.tolist()


def test_collate_stacks_and_refuses_mixed_sizes():
    a = {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.zeros(4, 4, dtype=torch.long)}
    b = {"pixel_values": torch.zeros(3, 4, 5), "labels": torch.zeros(4, 5, dtype=torch.long)}
    batch = collate_segmentation([a, a])
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["labels"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="different sizes"):
        collate_segmentation([a, b])


# Streaming ---------------------------------------------------------------------------------------


def fingerprint(ex):
    return round(float(ex["pixel_values"].sum()), 2)


def test_shuffle_buffer_is_seeded():
    base = [fingerprint(e) for e in load_toy_streets("train", num_images=8, size=16)[0]]
    shuffled = [fingerprint(e) for e in load_toy_streets("train", num_images=8, size=16, shuffle_buffer=8)[0]]
    again = [fingerprint(e) for e in load_toy_streets("train", num_images=8, size=16, shuffle_buffer=8)[0]]
    assert shuffled == again and shuffled != base and sorted(shuffled) == sorted(base)


# Bad input: each gets a clear error naming the sample, column or value --------------------------------


def bad_parquet(tmp_path, image, label, n_good=1):
    rows = {
        "image": [png(rgb(4, 4))] * n_good + [image],
        "label": [png(np.zeros((4, 4), np.uint8))] * n_good + [label],
    }
    rows["file"] = [f"img{i}.png" for i in range(n_good + 1)]
    return write_parquet(tmp_path / "train.parquet", rows)


@pytest.mark.parametrize("streaming", [True, False])
def test_mask_value_neither_class_nor_ignore_names_sample_and_values(tmp_path, streaming):
    label = np.zeros((4, 4), np.uint8)
    label[0, :2] = [7, 42]
    files = bad_parquet(tmp_path, png(rgb(4, 4)), png(label))
    ds = load_segmentation_dataset("parquet", "train", data_files=files, num_classes=5, streaming=streaming)
    with pytest.raises(ValueError, match=r"sample 1 \(img1\.png\).*mask values \[7, 42\]"):
        list(ds) if streaming else ds[1]


def test_image_and_mask_of_different_sizes_name_the_sample(tmp_path):
    files = bad_parquet(tmp_path, png(rgb(4, 4)), png(np.zeros((4, 6), np.uint8)))
    ds = load_segmentation_dataset("parquet", "train", data_files=files, num_classes=5)
    with pytest.raises(ValueError, match=r"sample 1 \(img1\.png\).*4x4.*4x6"):
        list(ds)


def test_undecodable_image_bytes_name_the_sample(tmp_path):
    rows = {
        "image": [{"bytes": b"not an image", "path": None}],
        "label": [png(np.zeros((4, 4), np.uint8))],
        "file": ["broken.jpg"],
    }
    files = write_parquet(tmp_path / "train.parquet", rows)
    ds = load_segmentation_dataset("parquet", "train", data_files=files, num_classes=5)
    with pytest.raises(ValueError, match=r"sample 0 \(broken\.jpg\).*could not decode the image"):
        next(iter(ds))


def test_missing_column_lists_the_columns_that_exist(tmp_path):
    files = bad_parquet(tmp_path, png(rgb(4, 4)), png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match=r"\['mask'\] not found.*\['file', 'image', 'label'\]"):
        load_segmentation_dataset("parquet", "train", data_files=files, label_column="mask", num_classes=5)
    # A stream with unknown features is checked on its first row.
    ds = prepare_segmentation_dataset(toy_streets(2, 16), label_column="mask", num_classes=9)
    with pytest.raises(ValueError, match=r"\['mask'\] not found.*\['file', 'image', 'label'\]"):
        next(iter(ds))


def test_model_classes_disagreeing_with_dataset_classes():
    five = {i: TOY_STREETS_ID2LABEL[i] for i in range(5)}
    with pytest.raises(ValueError, match=r"the model has 5 classes but the dataset has 9: save it with"):
        check_id2label(five, TOY_STREETS_ID2LABEL)


def test_colour_coded_mask_is_refused(tmp_path):
    files = bad_parquet(tmp_path, png(rgb(4, 4)), png(rgb(4, 4, seed=1)), n_good=0)
    with pytest.raises(ValueError, match=r"sample 0 \(img0\.png\).*channels that differ"):
        next(iter(load_segmentation_dataset("parquet", "train", data_files=files, num_classes=5)))


def test_16_bit_grayscale_image_is_scaled_to_8_bit_not_clipped(tmp_path):
    gray = np.array([[0, 257, 1000], [32768, 65280, 65535]], np.uint16)  # saved as a 16-bit PNG (mode I;16)
    rows = {"image": [png(gray)], "label": [png(np.zeros((2, 3), np.uint8))]}
    files = write_parquet(tmp_path / "train.parquet", rows)
    ds = load_segmentation_dataset(
        "parquet", "train", data_files=files, num_classes=5, transform=eval_transform(mean=(0, 0, 0), std=(1, 1, 1))
    )
    pixels = (next(iter(ds))["pixel_values"] * 255).round()
    assert pixels.tolist() == [[[0, 1, 4], [128, 254, 255]]] * 3  # round(v / 257); PIL's convert gave all 255


@pytest.mark.parametrize(
    "array,mode", [(np.full((4, 4), 70000, np.int32), "I"), (np.full((4, 4), 0.5, np.float32), "F")]
)
def test_32_bit_images_are_refused_naming_sample_and_mode(tmp_path, array, mode):
    files = bad_parquet(tmp_path, tiff(array), png(np.zeros((4, 4), np.uint8)))
    ds = load_segmentation_dataset("parquet", "train", data_files=files, num_classes=5)
    with pytest.raises(ValueError, match=rf"sample 1 \(img1\.png\).*PIL mode '{mode}'"):
        list(ds)


@pytest.mark.parametrize("streaming", [True, False])
def test_16_bit_masks_keep_label_ids_above_255(tmp_path, streaming):
    ids = np.array([[0, 300], [1000, 300]], np.uint16)  # saved as a 16-bit PNG (mode I;16)
    files = write_parquet(tmp_path / "train.parquet", {"image": [png(rgb(2, 2))], "label": [png(ids)]})
    ds = load_segmentation_dataset(
        "parquet", "train", data_files=files, label_map={0: 0, 300: 1, 1000: 255}, streaming=streaming
    )
    labels = next(iter(ds))["labels"] if streaming else ds[0]["labels"]
    assert labels.tolist() == [[0, 1], [255, 1]]


def test_cityscapes_without_its_extra_names_the_extra(monkeypatch):
    import sys

    from hf_reward.data import cityscapes_id2label

    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'hf-reward\[cityscapes\]'"):
        cityscapes_id2label()


def test_camvid_day_dusk_parts_split_the_training_frames_by_sequence_and_block():
    parts = camvid_day_dusk(CAMVID, block=8)
    frames = camvid_frames("train", CAMVID)
    dusk = sorted(f for f in frames if f.startswith("0001TP_"))
    assert sorted(parts["target_pool"] + parts["target_eval"]) == dusk and len(dusk) == 62
    assert not set(parts["target_pool"]) & set(parts["target_eval"])
    assert sorted(parts["source"] + dusk) == sorted(frames) and not any(
        f.startswith("0001TP") for f in parts["source"]
    )
    assert parts["target_pool"][:8] == dusk[:8] and parts["target_eval"][:8] == dusk[8:16]
    pool, _ = load_camvid("train", root=CAMVID, frames=parts["target_pool"], streaming=False)
    assert len(pool) == 32
    with pytest.raises(DataError, match=r"no frames \['0001TP_999999.png'\]"):
        load_camvid("train", root=CAMVID, frames=["0001TP_999999.png"])


def test_a_dev_split_held_out_of_training_is_the_same_rows_streamed_or_not_and_training_never_sees_them():
    from hf_reward.cli import DataArguments
    from hf_reward.cli.data import load_data
    from hf_reward.data import Holdout, load_toy_streets

    def digests(ds):
        return [hash(x["pixel_values"].numpy().tobytes()) for x in ds]

    held = Holdout(0.25, seed=3, block=4)
    streamed, _ = load_toy_streets("train", num_images=48, size=16, holdout=held)
    indexed, _ = load_toy_streets("train", num_images=48, size=16, holdout=held, streaming=False)
    everything, _ = load_toy_streets("train", num_images=48, size=16, streaming=False)
    rows = [row for row in range(48) if held.keeps(row)]
    assert len(rows) == 12 and digests(streamed) == digests(indexed) == [digests(everything)[r] for r in rows]

    # load_data: training (shuffled, augmented, every epoch) and dev are disjoint and together the whole split
    data = DataArguments(
        toy_train_images=64, toy_size=16, crop_size=[16, 16], scale_range=[1.0, 1.0], shuffle_buffer=8
    )
    splits = load_data(data, roles=("train", "dev", "eval"), dev_fraction=0.25, seed=1)
    plain = load_data(data, roles=("train", "dev"), dev_fraction=0.25, seed=1, augment=False)
    dev, train = set(digests(splits.dev)), set(digests(plain.train))
    assert len(dev) == 16 and len(train) == 48 and not dev & train  # one block of 16 in every 64 rows
    assert dev | train == set(digests(load_toy_streets("train", num_images=64, size=16, seed=0)[0]))
    for epoch in (0, 1):
        splits.train.set_epoch(epoch)
        assert sum(1 for _ in splits.train) == 48
    named = load_data(data, roles=("dev",), dev_split="validation")
    assert sum(1 for _ in named.dev) == data.toy_eval_images
