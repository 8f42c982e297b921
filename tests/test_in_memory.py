"""In-memory splits: the safetensors cache against the direct load (real CamVid), normalisation on access, the
flip keyed by (seed, epoch, row), and the fixed development split."""

import numpy as np
import pytest
import torch
from conftest import CAMVID

from hf_reward.data import InMemorySegmentation, eval_transform, load_camvid, materialise_split
from hf_reward.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE = (45, 60)


def not_loaded(*args, **kwargs):
    raise AssertionError("the dataset was read although its cache exists")


def test_cache_round_trip_equals_the_direct_load(tmp_path):
    cache = tmp_path / "camvid_validation.safetensors"
    images, labels, id2label = materialise_split(cache, load_camvid, "validation", SIZE, root=CAMVID)
    assert images.shape == (101, 3, *SIZE) and images.dtype == torch.uint8
    assert labels.shape == (101, *SIZE) and labels.dtype == torch.uint8 and 255 in labels  # unlabelled: ignore

    direct, direct_id2label = load_camvid(
        "validation", root=CAMVID, transform=eval_transform(SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    )
    for i, example in zip(range(3), direct):
        assert torch.equal(images[i], (example["pixel_values"] * 255).round().to(torch.uint8))
        assert torch.equal(labels[i].long(), example["labels"])
    assert id2label == direct_id2label and len(id2label) == 11

    cached = materialise_split(cache, not_loaded, "validation", SIZE)
    assert torch.equal(cached[0], images) and torch.equal(cached[1], labels) and cached[2] == id2label
    with pytest.raises(ValueError, match=r"holds split 'validation' at size \[45, 60\], not 'train' at \[90, 120\]"):
        materialise_split(cache, not_loaded, "train", (90, 120))


def test_labels_that_do_not_fit_uint8_are_stored_wider(tmp_path):
    def loader(split, transform):
        example = transform(np.zeros((2, 2, 3), np.uint8), np.array([[0, 300], [1, 2]]))
        return [example], {i: f"c{i}" for i in range(301)}

    _, labels, _ = materialise_split(tmp_path / "wide.safetensors", loader, "train", 2)
    assert labels.dtype == torch.int32 and labels.tolist() == [[[0, 300], [1, 2]]]


def test_examples_are_the_chosen_rows_normalised():
    images = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    labels = torch.randint(0, 3, (5, 4, 6), dtype=torch.uint8)
    ds = InMemorySegmentation(images, labels, indices=[3, 1])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert len(ds) == 2
    assert torch.allclose(ds[0]["pixel_values"], (images[3] / 255 - mean) / std)
    assert ds[1]["labels"].dtype == torch.long and torch.equal(ds[1]["labels"], labels[1].long())
    with pytest.raises(ValueError, match=r"indices \[5\] are outside the 5 rows"):
        InMemorySegmentation(images, labels, indices=[0, 5])


def flips(ds) -> list[bool]:
    return [bool(ds[i]["labels"][0, 0] == 1) for i in range(len(ds))]  # row [0, 1] flipped reads [1, 0]


def test_flip_is_a_function_of_seed_epoch_and_row():
    images, labels = torch.zeros(16, 3, 1, 2, dtype=torch.uint8), torch.tensor([[[0, 1]]]).repeat(16, 1, 1)
    ds = InMemorySegmentation(images, labels, flip=True, seed=0)
    ds.set_epoch(1)
    assert flips(ds) == [bool(np.random.default_rng([0, 1, row]).random() < 0.5) for row in range(16)]
    ds.set_epoch(0)
    first = flips(ds)
    assert 0 < sum(first) < 16 and first == flips(ds)  # reading again draws nothing new
    ds.set_epoch(1)
    assert flips(ds) != first  # every epoch draws anew
    subset = InMemorySegmentation(images, labels, indices=[7, 2], flip=True, seed=0)
    subset.set_epoch(1)
    assert flips(subset) == [flips(ds)[7], flips(ds)[2]]  # keyed by the row, not the position in the subset
    other_seed = InMemorySegmentation(images, labels, flip=True, seed=1)
    other_seed.set_epoch(1)
    assert flips(other_seed) != flips(ds)
    assert not any(flips(InMemorySegmentation(images, labels)))  # no flip unless asked
