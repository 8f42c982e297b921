"""Cityscapes-sized logits and labels drawn at random: the benchmarks' stand-in for a model on Cityscapes.

Nothing can be downloaded here, so the calibration and metric benchmarks time their work on
images of Cityscapes' sizes: labels 1024 x 2048 with Zipf-like class frequencies in 32 x 64
blocks and 10% void, and a model's logits at a quarter of that (19 x 256 x 512), 2 for the true
class plus Gaussian noise of scale 1.5 (about a weak model's confusion).

    >>> logits, labels = cityscapes_sized_image(0)
    >>> tuple(logits.shape), tuple(labels.shape)
    ((19, 256, 512), (1024, 2048))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cityscapes_sized_image(i: int, num_classes: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(C, 256, 512)`` float32 and labels ``(1024, 2048)`` long of image ``i`` (the same for the same i)."""
    g = torch.Generator().manual_seed(i)
    frequency = 1.0 / torch.arange(1, num_classes + 1).double() ** 1.5
    coarse = torch.multinomial(frequency, 32 * 64, replacement=True, generator=g).view(1, 1, 32, 64).float()
    labels = F.interpolate(coarse, size=(1024, 2048), mode="nearest")[0, 0].long()
    labels[torch.rand(1024, 2048, generator=g) < 0.1] = 255
    low = F.interpolate(coarse, size=(256, 512), mode="nearest")[0, 0].long()
    logits = 2.0 * F.one_hot(low, num_classes).permute(2, 0, 1).float()
    return logits + 1.5 * torch.randn(num_classes, 256, 512, generator=g), labels
