"""Image + mask transforms for training and evaluation, and the batch collator.

A transform takes one decoded example, ``image`` (H, W, 3) uint8 and ``labels`` (H, W) int64
class indices, and the sample's ``key``, and returns ``{"pixel_values": (3, H', W') float32,
"labels": (H', W') int64}``. The key is a tuple of ints naming the draw: ``(epoch, index)`` for a
map-style dataset, ``(epoch, worker, index)`` for a stream (see :mod:`hf_reward.data.loading`).
Images are interpolated bilinearly, labels always by nearest neighbour (a blend of two class
indices is a third, wrong class), in its ``nearest-exact`` form: output pixel i takes the input
pixel under its centre, where bilinear (``align_corners=False``) samples the image too; plain
``nearest`` reads the top-left of the cell and shifts the mask against the image. Plain torch:
torchvision is not a dependency.

Example::

    >>> t = train_transform(crop_size=64, seed=0)
    >>> out = t(np.zeros((48, 80, 3), np.uint8), np.zeros((48, 80), np.int64), key=(0, 7))
    >>> out["pixel_values"].shape, out["labels"].shape
    (torch.Size([3, 64, 64]), torch.Size([64, 64]))
    >>> batch = collate_segmentation([out, out])
    >>> batch["pixel_values"].shape, batch["labels"].dtype
    (torch.Size([2, 3, 64, 64]), torch.int64)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# SegformerImageProcessor defaults (ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _mean_std(image_processor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    if image_processor is not None:
        mean, std = image_processor.image_mean, image_processor.image_std
    return torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), torch.tensor(std, dtype=torch.float32).view(3, 1, 1)


def _to_tensors(image: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8, (H, W) int -> (3, H, W) float in [0, 1], (H, W) long."""
    # Decoded PIL arrays are read-only; torch wants writable memory (copied only when needed).
    image = np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    labels = np.require(labels, np.int64, ["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255), torch.from_numpy(labels)


def _resize(pixels: torch.Tensor, labels: torch.Tensor | None, size: tuple[int, int]):
    pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)[0]
    if labels is not None:
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return pixels, labels


class TrainTransform:
    """Random scale, photometric jitter, horizontal flip, normalisation, random crop padded with ignore.

    Each call draws from ``numpy.random.default_rng([seed, *key])``: the augmentation is a pure
    function of the seed and the sample's key ``(epoch, index)``, not of the samples transformed
    before it. That is what makes resuming exact: Trainer resumes a map-style dataset by skipping
    the first batches' indices without loading them, so a generator that advanced per sample
    would be in another state than in the uninterrupted run; and DataLoader workers each hold
    a copy of the transform, whose state would be lost with the worker at the end of an epoch.
    A new epoch gives a new key, so every epoch draws fresh augmentations for a sample.
    ``seed=None`` draws a seed when the transform is made: runs then differ, and so does a resumed one.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        jitter: float = 0.1,
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        seed: int | None = None,
        image_processor=None,
    ):
        self.crop_size = _size2(crop_size)
        self.scale_range = scale_range
        self.jitter = jitter
        self.flip = flip
        self.mean, self.std = _mean_std(image_processor, mean, std)
        self.ignore_index = ignore_index
        self.seed = np.random.SeedSequence().entropy if seed is None else seed

    def __call__(self, image: np.ndarray, labels: np.ndarray, key: Sequence[int]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, *key])
        pixels, labels = _to_tensors(image, labels)
        height, width = labels.shape
        scale = rng.uniform(*self.scale_range)
        pixels, labels = _resize(pixels, labels, (max(1, round(height * scale)), max(1, round(width * scale))))

        if self.jitter > 0:
            brightness, contrast, saturation = 1 + rng.uniform(-self.jitter, self.jitter, size=3)
            pixels = pixels * brightness
            pixels = (pixels - pixels.mean()) * contrast + pixels.mean()
            gray = pixels.mean(0, keepdim=True)
            pixels = ((pixels - gray) * saturation + gray).clamp_(0, 1)
        if self.flip and rng.random() < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        pixels = (pixels - self.mean) / self.std

        # Pad to at least the crop size (image with 0 = the mean after normalisation, label with
        # ignore so padding never counts), then crop at a random offset.
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - labels.shape[0], 0), max(crop_w - labels.shape[1], 0)
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(rng.integers(0, labels.shape[0] - crop_h + 1))
        left = int(rng.integers(0, labels.shape[1] - crop_w + 1))
        return {
            "pixel_values": pixels[:, top : top + crop_h, left : left + crop_w].contiguous(),
            "labels": labels[top : top + crop_h, left : left + crop_w].contiguous(),
        }


class EvalTransform:
    """Deterministic: optional resize to ``size``, then normalisation.

    ``size=None`` keeps full resolution. With ``resize_labels=False`` only the image is
    resized and the labels keep their full resolution; the metric then upsamples the logits to
    the label size, which scores at the dataset's native resolution.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        resize_labels: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_processor=None,
    ):
        self.size = None if size is None else _size2(size)
        self.resize_labels = resize_labels
        self.mean, self.std = _mean_std(image_processor, mean, std)

    def __call__(self, image: np.ndarray, labels: np.ndarray, key: Sequence[int] = ()) -> dict[str, torch.Tensor]:
        """``key`` is unused: the result does not depend on the sample's epoch or index."""
        pixels, labels = _to_tensors(image, labels)
        if self.size is not None:
            pixels, resized = _resize(pixels, labels if self.resize_labels else None, self.size)
            labels = resized if self.resize_labels else labels
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": labels}


def train_transform(crop_size: int | Sequence[int] = 512, **kwargs) -> TrainTransform:
    """Training augmentation; see :class:`TrainTransform` for the keyword arguments.

    >>> from transformers import SegformerImageProcessor
    >>> t = train_transform(crop_size=(256, 512), image_processor=SegformerImageProcessor(), seed=0)
    """
    return TrainTransform(crop_size, **kwargs)


def eval_transform(size: int | Sequence[int] | None = None, **kwargs) -> EvalTransform:
    """Evaluation preprocessing; see :class:`EvalTransform` for the keyword arguments.

    >>> t = eval_transform()            # full resolution
    >>> t = eval_transform((512, 1024))  # image and labels resized (labels: nearest)
    """
    return EvalTransform(size, **kwargs)


def collate_segmentation(batch: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack examples into ``{"pixel_values": (B, 3, H, W) float, "labels": (B, H, W) long}``.

    >>> example = {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.zeros(4, 4, dtype=torch.long)}
    >>> collate_segmentation([example])["labels"].shape
    torch.Size([1, 4, 4])
    """
    shapes = {tuple(ex["labels"].shape) for ex in batch}
    if len(shapes) > 1:
        raise ValueError(f"cannot stack labels of different sizes {sorted(shapes)}: crop or resize them to one size")
    return {
        "pixel_values": torch.stack([torch.as_tensor(ex["pixel_values"], dtype=torch.float32) for ex in batch]),
        "labels": torch.stack([torch.as_tensor(ex["labels"], dtype=torch.long) for ex in batch]),
    }
