"""PNG plots of a tuning run: training curves and before/after prediction overlays.

Needs matplotlib (``pip install hf-reward[plots]``); it is imported inside the functions so
that the rest of the package does not.

Example::

    >>> plot_training(trainer.state.log_history, "out/training.png")
    >>> plot_overlays(examples, before_masks, after_masks, id2label, "out/overlays.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_training(log_history: Sequence[Mapping], path: str | Path) -> Path:
    """Reward mean with +-1 std band, and eval mIoU, against the training step, from ``trainer.state.log_history``."""
    plt = _pyplot()
    train = [e for e in log_history if "reward" in e]
    evals = [e for e in log_history if "eval_mean_iou" in e]
    fig, (ax_reward, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        steps = np.array([e["step"] for e in train])
        mean = np.array([e["reward"] for e in train])
        std = np.array([e.get("reward_std", 0.0) for e in train])
        ax_reward.plot(steps, mean, label="sampled-mask reward")
        ax_reward.fill_between(steps, mean - std, mean + std, alpha=0.3, label="+-1 std")
        if "greedy_reward" in train[0]:
            ax_reward.plot(steps, [e["greedy_reward"] for e in train], "--", label="greedy-mask reward")
        ax_reward.legend(fontsize=8)
    ax_reward.set(xlabel="step", ylabel="reward", title="Training reward")
    if evals:
        ax_miou.plot([e["step"] for e in evals], [100 * e["eval_mean_iou"] for e in evals], "o-")
    ax_miou.set(xlabel="step", ylabel="mIoU (%)", title="Validation mIoU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _palette(num_classes: int) -> np.ndarray:
    """(C, 3) floats in [0, 1]; the first 20 from matplotlib's tab20, then seeded random colours."""
    plt = _pyplot()
    colours = np.array(plt.get_cmap("tab20").colors)[:num_classes]
    extra = np.random.default_rng(0).uniform(0, 1, (max(num_classes - len(colours), 0), 3))
    return np.concatenate([colours, extra])


def plot_overlays(
    examples: Sequence[Mapping[str, torch.Tensor]],
    before: torch.Tensor,
    after: torch.Tensor,
    id2label: Mapping[int, str],
    path: str | Path,
    ignore_index: int = 255,
    alpha: float = 0.6,
) -> Path:
    """One row per example: image, ground truth, prediction before, prediction after (masks blended on the image).

    ``examples`` hold normalised ``pixel_values (3, h, w)`` and ``labels (H, W)``; ``before`` and
    ``after`` are masks ``(N, H, W)``. Ignored pixels show the bare image.
    """
    plt = _pyplot()
    palette = _palette(len(id2label))
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    fig, axes = plt.subplots(len(examples), 4, figsize=(12, 3 * len(examples)), squeeze=False)
    for row, (ex, b, a) in enumerate(zip(examples, before, after)):
        labels = ex["labels"]
        pixels = torch.nn.functional.interpolate(ex["pixel_values"][None].float(), size=tuple(labels.shape), mode="bilinear")[0]
        image = np.clip(pixels.permute(1, 2, 0).numpy() * std + mean, 0, 1)
        valid = (labels != ignore_index).numpy()[..., None]
        for col, (title, mask) in enumerate([("image", None), ("ground truth", labels), ("before", b), ("after", a)]):
            shown = image
            if mask is not None:
                colour = palette[np.clip(mask.numpy(), 0, len(palette) - 1)]
                shown = np.where(valid, (1 - alpha) * image + alpha * colour, image)
            axes[row, col].imshow(shown)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i]) for i in sorted(id2label)]
    fig.legend(handles, [id2label[i] for i in sorted(id2label)], loc="lower center", ncol=min(len(id2label), 10), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
