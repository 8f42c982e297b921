"""PNG plots of a tuning run: training curves and prediction overlays, and the masks they draw.

Needs matplotlib (``pip install hf-reward[plots]``); it is imported inside the functions so
that the rest of the package does not.

Masks are drawn in each dataset's official colours when its class names are known: CamVid's
(the SegNet palette), Cityscapes' (from ``cityscapesscripts``, if installed), and the toy
streets' own (Cityscapes' colours for the same classes). Other datasets get matplotlib's tab20.

Example::

    plot_training({"reward tuning": trainer.state.log_history, "cross-entropy": control.state.log_history},
                  "out/training.png", start=before["eval_mean_iou"])
    plot_overlays(examples, {"start": start_masks, "tuned": tuned_masks}, id2label, "out/overlays.png")
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, collate_segmentation
from .metrics import upsample_logits
from .modeling import eval_mode

CAMVID_COLOURS = {
    "sky": (128, 128, 128),
    "building": (128, 0, 0),
    "pole": (192, 192, 128),
    "road": (128, 64, 128),
    "sidewalk": (0, 0, 192),
    "tree": (128, 128, 0),
    "sign_symbol": (192, 128, 128),
    "fence": (64, 64, 128),
    "car": (64, 0, 128),
    "pedestrian": (64, 64, 0),
    "bicyclist": (0, 128, 192),
}
TOY_STREETS_COLOURS = {
    "road": (128, 64, 128),
    "sidewalk": (244, 35, 232),
    "building": (70, 70, 70),
    "sky": (70, 130, 180),
    "vegetation": (107, 142, 35),
    "car": (0, 0, 142),
    "pole": (153, 153, 153),
    "person": (220, 20, 60),
    "sign": (220, 220, 0),
}
VOID_COLOUR = (0, 0, 0)


def pyplot():
    """matplotlib.pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _cityscapes_colours() -> dict[str, tuple[int, int, int]]:
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        return {}
    return {label.name: label.color for label in labels if not label.ignoreInEval}


def palette(id2label: Mapping[int, str]) -> np.ndarray:
    """``(C, 3)`` colours in [0, 1] for the classes ``id2label``: a dataset's official ones where all names match."""
    names = [str(id2label[i]) for i in sorted(id2label)]
    for table in (CAMVID_COLOURS, TOY_STREETS_COLOURS, _cityscapes_colours()):
        if table and all(name in table for name in names):
            return np.array([table[name] for name in names], dtype=float) / 255
    plt = pyplot()
    colours = np.array(plt.get_cmap("tab20").colors)[: len(names)]
    extra = np.random.default_rng(0).uniform(0, 1, (max(len(names) - len(colours), 0), 3))
    return np.concatenate([colours, extra])


def spread_sample(examples: Iterable[dict], count: int, seed: int = 0) -> list[dict]:
    """``count`` examples drawn evenly at random from a stream, in stream order (reservoir sampling: one pass,
    ``count`` examples in memory), so that a video split does not show ``count`` consecutive frames."""
    rng, kept = random.Random(seed), []
    for i, example in enumerate(examples):
        if i < count:
            kept.append((i, example))
        elif (j := rng.randrange(i + 1)) < count:
            kept[j] = (i, example)
    return [example for _, example in sorted(kept, key=lambda pair: pair[0])]


@torch.no_grad()
def predict_masks(model, examples: Sequence[dict]) -> torch.Tensor:
    """Argmax masks ``(N, H, W)`` at the label size of ``examples`` (dicts of ``pixel_values``, ``labels``)."""
    batch = collate_segmentation(examples)
    device = next(model.parameters()).device
    with eval_mode(model):
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float()
    return upsample_logits(logits, tuple(batch["labels"].shape[-2:])).argmax(1).cpu()


def _objective(log_history: Sequence[Mapping]) -> tuple[str, list[tuple[int, float]]]:
    """The reward a run optimises, as logged: the batch/dataset-scope reward if there is one."""
    for key, label in (("scope_reward", "scope reward (optimised)"), ("reward", "sampled-mask reward (optimised)")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            return label, points
    return "", []


def plot_training(
    runs: Mapping[str, Sequence[Mapping]],
    path: str | Path,
    start: float | None = None,
    calibrated: Mapping[str, float] | None = None,
) -> Path:
    """Left: the reward each run optimises against the step. Right: validation mIoU (%) against the step.

    ``runs``: name -> ``trainer.state.log_history``. ``start``: the starting model's validation
    mIoU, drawn at step 0 of every curve. ``calibrated``: name -> mIoU after calibration, drawn
    as a dashed level in the run's colour.
    """
    plt = pyplot()
    fig, (ax_reward, ax_miou) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, history) in enumerate(runs.items()):
        colour = plt.get_cmap("tab10")(i)
        label, points = _objective(history)
        if points:
            ax_reward.plot(*zip(*points), color=colour, label=f"{name}: {label}")
        evals = [(e["step"], 100 * e["eval_mean_iou"]) for e in history if "eval_mean_iou" in e]
        if start is not None:
            evals = [(0, 100 * start), *[p for p in evals if p[0] > 0]]
        if evals:
            ax_miou.plot(*zip(*evals), "o-", color=colour, markersize=4, label=name)
        if calibrated and name in calibrated:
            ax_miou.axhline(
                100 * calibrated[name], color=colour, linestyle="--", linewidth=1, label=f"{name}, calibrated"
            )
    if start is not None and calibrated and "start" in calibrated:
        ax_miou.axhline(100 * calibrated["start"], color="grey", linestyle=":", linewidth=1, label="start, calibrated")
    ax_reward.set(xlabel="step", ylabel="reward", title="Optimised training reward")
    ax_miou.set(xlabel="step", ylabel="mIoU (%)", title="Validation mIoU")
    for ax in (ax_reward, ax_miou):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_overlays(
    examples: Sequence[Mapping[str, torch.Tensor]],
    predictions: Mapping[str, torch.Tensor],
    id2label: Mapping[int, str],
    path: str | Path,
    ignore_index: int = 255,
) -> Path:
    """One row per example: the image, its ground truth and each named prediction, as opaque masks side by side.

    ``examples`` hold normalised ``pixel_values (3, h, w)`` and ``labels (H, W)``; ``predictions``
    map a name to masks ``(N, H, W)``. Void pixels are black.
    """
    plt = pyplot()
    colours = np.concatenate([palette(id2label), np.array([VOID_COLOUR]) / 255])
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    columns = [("image", None), ("ground truth", None), *predictions.items()]
    height, width = examples[0]["labels"].shape
    cell = 3.0
    fig, axes = plt.subplots(
        len(examples),
        len(columns),
        squeeze=False,
        figsize=(cell * width / height * len(columns), cell * len(examples) + 0.9),
    )
    for row, example in enumerate(examples):
        labels = example["labels"]
        pixels = torch.nn.functional.interpolate(
            example["pixel_values"][None].float(), size=tuple(labels.shape), mode="bilinear", align_corners=False
        )[0]
        image = np.clip(pixels.permute(1, 2, 0).numpy() * std + mean, 0, 1)
        for col, (title, masks) in enumerate(columns):
            if title == "image":
                shown = image
            else:
                mask = labels if masks is None else masks[row]
                index = torch.where(labels == ignore_index, len(colours) - 1, mask.clamp(0, len(colours) - 2))
                shown = colours[index.numpy()]
            axes[row, col].imshow(shown, interpolation="nearest")
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title, fontsize=10)
    names = [str(id2label[i]) for i in sorted(id2label)] + ["void"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    columns_needed = math.ceil(len(names) / math.ceil(len(names) / 8))  # rows as even as possible, none alone
    fig.legend(handles, names, loc="lower center", ncol=columns_needed, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.7 / (cell * len(examples) + 0.9), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
