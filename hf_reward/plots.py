"""PNG plots of a tuning run: training curves and prediction overlays, and the masks they draw.

Needs matplotlib (``pip install hf-reward[plots]``); it is imported inside the functions so
that the rest of the package does not.

Masks are drawn in each dataset's official colours when its class names are known: CamVid's
(the SegNet palette), Cityscapes' (from ``cityscapesscripts``, if installed), and the toy
streets' own (Cityscapes' colours for the same classes). Other datasets get matplotlib's tab20.

Example::

    plot_training({"reward tuning": trainer.state.log_history, "cross-entropy": control.state.log_history},
                  "out/training.png", start=0.52, raw={"start": 0.52, "reward tuning": 0.53, "cross-entropy": 0.53})
    plot_overlays(examples, {"start": start_masks, "tuned": tuned_masks}, id2label, "out/overlays.png")
"""

from __future__ import annotations

import math
import random
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, collate_segmentation
from .decisions import decide
from .modeling import eval_mode
from .rewards import miou_gt, reward_of_masks

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
    return decide(logits, tuple(batch["labels"].shape[-2:])).cpu()


def _objective(log_history: Sequence[Mapping]) -> tuple[str, list[tuple[int, float]]]:
    """The reward a run optimises, as logged: the batch/dataset-scope reward if there is one."""
    for key, label in (("scope_reward", "scope reward"), ("reward", "sampled-mask reward")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            return label, points
    return "", []


def plot_training(
    runs: Mapping[str, Sequence[Mapping]],
    path: str | Path,
    start: float,
    raw: Mapping[str, float],
    calibrated: Mapping[str, float] | None = None,
    metric: str = "mean_iou",
) -> Path:
    """Three panels, each on its own axis so that small differences show.

    Left: the reward each run optimises against the step (runs that optimise none, such as
    cross-entropy, are not drawn). Middle: validation ``metric`` (%) of the argmax masks against
    the step, from the start's. Right: every model at the end, raw (hollow) and calibrated
    (filled), measured once.

    ``runs``: name -> ``trainer.state.log_history``. ``start``: the starting model's ``metric``.
    ``raw`` / ``calibrated``: model name (the start included) -> its final ``metric``.
    """
    plt = pyplot()
    fig, (ax_reward, ax_curve, ax_end) = plt.subplots(1, 3, figsize=(15, 4), width_ratios=(1, 1, 0.8))
    colours = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(raw)}
    for name, history in runs.items():
        label, points = _objective(history)
        if points:
            ax_reward.plot(*zip(*points), color=colours.get(name), label=f"{name}: {label}")
        evals = [(e["step"], 100 * e[f"eval_{metric}"]) for e in history if f"eval_{metric}" in e and e["step"] > 0]
        ax_curve.plot(*zip((0, 100 * start), *evals), "o-", color=colours.get(name), markersize=4, label=name)
    names = list(raw)
    x = range(len(names))
    ax_end.scatter(x, [100 * raw[n] for n in names], facecolors="none", edgecolors=[colours[n] for n in names], s=60)
    if calibrated:
        ax_end.scatter(x, [100 * calibrated.get(n, math.nan) for n in names], color=[colours[n] for n in names], s=60)
        for i, n in enumerate(names):
            if n in calibrated:
                ax_end.annotate(
                    "", (i, 100 * calibrated[n]), (i, 100 * raw[n]), arrowprops={"arrowstyle": "->", "color": "grey"}
                )
    ax_end.set_xticks(list(x), names, fontsize=8)
    ax_end.set_xlim(-0.5, len(names) - 0.5)
    label = {"mean_iou": "mIoU"}.get(metric, metric.replace("_", " "))
    ax_reward.set(xlabel="step", ylabel="reward", title="Reward being optimised (reward tuning only)")
    ax_curve.set(xlabel="step", ylabel=f"{label} (%)", title=f"Validation {label} during training (raw)")
    ax_end.set(ylabel=f"{label} (%)", title="At the end: raw (hollow) -> calibrated (filled)")
    for ax in (ax_reward, ax_curve, ax_end):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


CALIBRATION_CAPTION = (
    "Calibration adds one offset per class to the logits. Rare classes (pole, sign, person) get positive offsets and "
    "win the uncertain pixels along object edges, so thin bands of them appear where the argmax drew none: each "
    "band holds true positives of those classes as well as false ones, and the dataset mIoU rises although the "
    "masks look noisier. The number on each mask is that image's mIoU (over the classes in its ground truth)."
)


def plot_overlays(
    examples: Sequence[Mapping[str, torch.Tensor]],
    predictions: Mapping[str, torch.Tensor],
    id2label: Mapping[int, str],
    path: str | Path,
    ignore_index: int = 255,
    caption: str | None = None,
) -> Path:
    """One row per example: the image, its ground truth and each named prediction, each mask titled with its
    per-image mIoU; a legend of the classes and an optional ``caption`` below.

    ``examples`` hold normalised ``pixel_values (3, h, w)`` and ``labels (H, W)``; ``predictions``
    map a column title to masks ``(N, H, W)``. Void pixels are black.
    """
    plt = pyplot()
    colours = np.concatenate([palette(id2label), np.array([VOID_COLOUR]) / 255])
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    columns = [("image", None), ("ground truth", None), *predictions.items()]
    height, width = examples[0]["labels"].shape
    cell, footer = 2.4, 0.5 + (0.45 if caption else 0.0)
    fig, axes = plt.subplots(
        len(examples),
        len(columns),
        squeeze=False,
        figsize=(cell * width / height * len(columns), cell * len(examples) + footer),
    )
    for row, example in enumerate(examples):
        labels = example["labels"]
        pixels = torch.nn.functional.interpolate(
            example["pixel_values"][None].float(), size=tuple(labels.shape), mode="bilinear", align_corners=False
        )[0]
        image = np.clip(pixels.permute(1, 2, 0).numpy() * std + mean, 0, 1)
        for col, (title, masks) in enumerate(columns):
            ax = axes[row, col]
            if title == "image":
                ax.imshow(image, interpolation="nearest")
            else:
                mask = labels if masks is None else masks[row]
                index = torch.where(labels == ignore_index, len(colours) - 1, mask.clamp(0, len(colours) - 2))
                ax.imshow(colours[index.numpy()], interpolation="nearest")
                if masks is not None:
                    score = reward_of_masks(miou_gt, mask[None], labels[None], len(id2label), ignore_index)
                    ax.text(
                        2, 2, f"{100 * float(score):.1f}", va="top", fontsize=8, color="white", backgroundcolor="black"
                    )
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    names = [str(id2label[i]) for i in sorted(id2label)] + ["void"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    columns_needed = math.ceil(len(names) / math.ceil(len(names) / 10))  # rows as even as possible, none alone
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=columns_needed,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, (0.45 if caption else 0.0) / (cell * len(examples) + footer)),
    )
    if caption:
        fig.text(0.5, 0.005, textwrap.fill(caption, 200), ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, footer / (cell * len(examples) + footer), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
