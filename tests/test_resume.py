"""Random augmentation is a function of (seed, epoch, sample): resuming RewardSegTrainer from a checkpoint gives
the parameters of an uninterrupted run, for map-style, streaming and in-memory datasets, with and without
DataLoader workers, and every epoch still draws new augmentations."""

import pytest
import torch
from conftest import tiny_segformer

from hf_reward import RewardSegConfig, RewardSegTrainer
from hf_reward.data import (
    TOY_STREETS_ID2LABEL,
    InMemorySegmentation,
    collate_segmentation,
    load_toy_streets,
    make_scene,
    train_transform,
)


def dataset(kind: str):
    # 4 images in batches of 2: two steps an epoch (a pass of the stream), so checkpoint-3 lies in the middle of
    # the second.
    if kind == "in_memory":
        scenes = [make_scene(i, 32) for i in range(4)]
        images = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _ in scenes])
        return InMemorySegmentation(images, torch.stack([torch.from_numpy(labels) for _, labels in scenes]), flip=True)
    transform = train_transform(32, scale_range=(0.75, 1.5), seed=0)
    return load_toy_streets("train", num_images=4, size=32, streaming=kind == "stream", transform=transform)[0]


def train(tmp_path, kind: str, workers: int, resume: bool = False) -> list[torch.Tensor]:
    model = tiny_segformer(num_labels=len(TOY_STREETS_ID2LABEL))
    args = RewardSegConfig(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        reward_weight=0.0,
        ce_weight=1.0,
        save_strategy="steps",
        save_steps=3,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=workers,
    )
    trainer = RewardSegTrainer(model=model, args=args, train_dataset=dataset(kind), data_collator=collate_segmentation)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3") if resume else None)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind,workers", [("map", 0), ("map", 2), ("stream", 0), ("stream", 2), ("in_memory", 0)])
def test_resuming_mid_epoch_equals_an_uninterrupted_run(tmp_path, kind, workers):
    uninterrupted = train(tmp_path, kind, workers)  # also writes checkpoint-3
    resumed = train(tmp_path, kind, workers, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed))


def images_by_epoch(ds, epochs: list[int], persistent: bool) -> list[list[torch.Tensor]]:
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, persistent_workers=persistent, collate_fn=collate_segmentation
    )
    seen = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        seen.append([image for batch in loader for image in batch["pixel_values"]])
    return seen


@pytest.mark.parametrize("kind", ["map", "stream"])
@pytest.mark.parametrize("persistent", [False, True])
def test_every_epoch_draws_new_augmentations_in_every_worker(kind, persistent):
    first, second = images_by_epoch(dataset(kind), [0, 1], persistent)
    assert len(first) == len(second) == 4
    # A stream may come in another order in the next epoch: no image of it may repeat one of the first.
    assert not any(torch.equal(a, b) for a in second for b in first)
    # What an epoch draws depends on the epoch alone, not on the epochs before it (so a resumed run draws it too).
    (alone,) = images_by_epoch(dataset(kind), [1], persistent)
    assert all(torch.equal(a, b) for a, b in zip(alone, second))
