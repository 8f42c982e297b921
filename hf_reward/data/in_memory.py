"""A split held in memory as uint8 tensors, for studies and benchmarks that run many short trainings on it.

:func:`materialise_split` reads a split once through one of the library's loaders, resized to one
size (image bilinear, labels nearest), and caches it in a safetensors file; a later call reads
the file. :class:`InMemorySegmentation` serves it normalised, optionally with a random horizontal
flip keyed by ``(seed, epoch, row)`` like every augmentation of :mod:`hf_reward.data`, so that
resuming is exact.

Example::

    images, labels, id2label = materialise_split("out/camvid_train.safetensors", load_camvid, "train",
                                                 (128, 160), root="../shared/datasets/camvid")
    train = InMemorySegmentation(images, labels, indices=range(300), flip=True, seed=0)
    dev = InMemorySegmentation(images, labels, indices=range(300, 367))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from .loading import EpochDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _size2, eval_transform


def materialise_split(
    cache: str | Path, loader: Callable, split: str, size: int | Sequence[int], **loader_kwargs
) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """``(images (N, 3, H, W) uint8, labels (N, H, W), id2label)`` of one split at ``size``, cached in ``cache``.

    Args:
        cache: the safetensors file. If it exists it is read instead of the dataset; it must hold
            the same split and size.
        loader: one of the library's adapters returning ``(dataset, id2label)``, called as
            ``loader(split, transform=..., **loader_kwargs)``: :func:`load_camvid`,
            :func:`load_cityscapes`, :func:`load_toy_streets`.
        split: the split to read.
        size: ``H`` or ``(H, W)``; images are resized bilinearly, labels by nearest neighbour.

    Returns:
        The images as read (rounded back to uint8 after resizing), the class indices (uint8, or
        int32 when one does not fit: more than 255 classes, or an ``ignore_index`` outside 0-255),
        and the dataset's ``id2label``.
    """
    cache, size = Path(cache), _size2(size)
    if cache.exists():
        with safetensors.safe_open(cache, "pt") as f:
            meta = f.metadata()
            if (meta["split"], json.loads(meta["size"])) != (split, list(size)):
                raise ValueError(
                    f"{cache} holds split {meta['split']!r} at size {json.loads(meta['size'])}, not {split!r} at "
                    f"{list(size)}; delete it or give another cache path"
                )
            id2label = {int(k): v for k, v in json.loads(meta["id2label"]).items()}
            return f.get_tensor("images"), f.get_tensor("labels"), id2label

    # Mean 0 and std 1: pixel_values is the resized image / 255, which rounds back to uint8.
    transform = eval_transform(size, resize_labels=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dataset, id2label = loader(split, transform=transform, **loader_kwargs)
    examples = list(dataset)
    if not examples:
        raise ValueError(f"split {split!r} has no examples")
    images = torch.stack([(ex["pixel_values"] * 255).round().to(torch.uint8) for ex in examples])
    labels = torch.stack([ex["labels"] for ex in examples])
    labels = labels.to(torch.uint8 if 0 <= labels.min() and labels.max() <= 255 else torch.int32)

    meta = {"split": split, "size": json.dumps(list(size)), "id2label": json.dumps(id2label)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")  # never a half-written cache under its name
    safetensors.torch.save_file({"images": images, "labels": labels}, partial, metadata=meta)
    partial.replace(cache)
    return images, labels, id2label


class InMemorySegmentation(EpochDataset):
    """uint8 images and labels served as ``{"pixel_values": (3, H, W) float32, "labels": (H, W) int64}``.

    Images are normalised on access with the ImageNet mean and std (SegFormer's).

    Args:
        images: ``(N, 3, H, W)`` uint8.
        labels: ``(N, H, W)`` class indices (any integer dtype).
        indices: the rows to serve, in this order (default: all); ``ds[i]`` is row ``indices[i]``.
        flip: flip horizontally with probability 1/2, drawn from ``(seed, epoch, row)``: fresh every
            epoch, the same in a resumed run. The epoch comes from ``set_epoch``, which
            :class:`~hf_reward.RewardSegTrainer` calls every epoch (see :mod:`hf_reward.data.loading`).
        seed: the flip's seed.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: Sequence[int] | None = None,
        flip: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}: expected (N, H, W)"
            )
        self.images, self.labels, self.flip, self.seed = images, labels, flip, seed
        self.indices = list(range(len(labels))) if indices is None else [int(i) for i in indices]
        outside = [i for i in self.indices if not 0 <= i < len(labels)]
        if outside:
            raise ValueError(f"indices {outside[:5]} are outside the {len(labels)} rows")
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.indices[i]
        image, labels = self.images[row].float() / 255, self.labels[row].long()
        if self.flip and np.random.default_rng([self.seed, self.epoch, row]).random() < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
        return {"pixel_values": (image - self.mean) / self.std, "labels": labels}
