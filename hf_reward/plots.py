"""PNG plots of a tuning run: training curves and prediction overlays, and the masks they draw.

Needs matplotlib (``pip install hf-reward[plots]``); it is imported inside the functions so
that the rest of the package does not.

Masks are drawn in each dataset's official colours when its class names are known: CamVid's
(the SegNet palette), Cityscapes' (from ``cityscapesscripts``, if installed), and the toy
streets' own (Cityscapes' colours for the same classes). Other datasets get matplotlib's tab20.

Example::

    plot_candidates({"recipe": trainer.state.log_history}, {"start": 0.52, "recipe": 0.53}, decision,
                    "out/candidates.png", metric="image_miou", label="mIoU^I")
    plot_overlays(examples, {"start": start_masks, "shipped": shipped_masks}, id2label, "out/overlays.png")
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
    """What a run optimises, as logged: the batch/dataset-scope reward if there is one, else the sampled masks'
    reward, else (a surrogate such as cross-entropy or Lovász) its training loss."""
    for key, label in (("scope_reward", "scope reward"), ("reward", "sampled-mask reward"), ("loss", "training loss")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            return label, points
    return "", []


# The narrowest span, in points, of an axis of scores: a difference of a fraction of a point must look like one.
MIN_SPAN = 10.0


def readable_limits(values: Iterable[float], span: float = MIN_SPAN) -> tuple[float, float]:
    """Axis limits around ``values`` at least ``span`` wide, centred on them: ``(low, high)``.

    >>> readable_limits([50.0, 50.25])
    (45.125, 55.125)
    """
    values = [v for v in values if not math.isnan(v)]
    low, high = min(values), max(values)
    half = max(span, 1.1 * (high - low)) / 2  # a margin of 5% each side of a wider spread
    return (low + high) / 2 - half, (low + high) / 2 + half


def plot_candidates(
    runs: Mapping[str, Sequence[Mapping]],
    validation: Mapping[str, Mapping[str, float]],
    decision,
    path: str | Path,
    metric: str = "mean_iou",
    label: str = "mIoU",
) -> Path:
    """What a decision rests on: every candidate on validation, and the training runs when models were trained.

    Right (alone without training): each model (a column) by each decoder (a marker), on validation;
    each model's dev-best decoder filled, the shipped candidate ringed, each tuned model's dev gain
    over the decoded start and its 95% interval written above it. Left and middle (when models were
    trained): the reward each run optimises against the step, and validation ``metric`` of the argmax
    masks during training. Score axes span at least :data:`MIN_SPAN` points, so noise does not look
    like a win.

    ``runs``: name -> ``trainer.state.log_history``; ``validation``: model -> decoder -> ``metric``;
    ``decision``: :class:`hf_reward.selection.Decision`.
    """
    plt = pyplot()
    trained = any(runs.values())
    fig, axes = plt.subplots(1, 3 if trained else 1, figsize=(15 if trained else 6, 4), squeeze=False)
    axes = axes[0]
    colours = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(validation)}
    if trained:
        ax_reward, ax_curve = axes[0], axes[1]
        curve = []
        for name, history in runs.items():
            objective, points = _objective(history)
            if points:
                ax_reward.plot(*zip(*points), color=colours.get(name), label=f"{name}: {objective}")
            evals = [(e["step"], 100 * e[f"eval_{metric}"]) for e in history if f"eval_{metric}" in e]
            if evals and "argmax" in validation.get("start", {}):  # from the start, at step 0
                evals = [(0, 100 * validation["start"]["argmax"]), *evals]
            if evals:
                ax_curve.plot(*zip(*evals), "o-", color=colours.get(name), markersize=4, label=name)
                curve += [v for _, v in evals]
        ax_reward.set(xlabel="step", ylabel="reward or loss", title="What each run optimises, as logged")
        ax_curve.set(xlabel="step", ylabel=f"{label} (%)", title=f"Validation {label} during training (argmax)")
        if curve:
            ax_curve.set_ylim(*readable_limits(curve))
    ax_end = axes[-1]
    markers = dict(zip(sorted({d for decoded in validation.values() for d in decoded}), "osD^v"))
    names, everything = list(validation), []
    for i, name in enumerate(names):
        for decoder, value in validation[name].items():
            chosen = decoder == decision.decoders[name]
            ax_end.scatter(
                [i],
                [100 * value],
                marker=markers[decoder],
                s=70 if chosen else 40,
                color=colours[name],
                facecolors=None if chosen else "none",
                label=decoder if i == 0 else None,
            )
            everything.append(100 * value)
            if (name, decoder) == decision.winner:
                ax_end.scatter([i], [100 * value], s=300, facecolors="none", edgecolors="black", linewidths=1.5)
        if name in decision.gains:
            mean, low, high = (100 * v for v in decision.gains[name])
            top = 100 * max(validation[name].values())
            ax_end.annotate(
                f"dev {mean:+.2f} [{low:+.2f}, {high:+.2f}]",
                (i, top),
                textcoords="offset points",
                xytext=(0, 12),
                ha="center",
                fontsize=7,
            )
    ax_end.set_xticks(range(len(names)), names, fontsize=8)
    ax_end.set_xlim(-0.5, len(names) - 0.5)
    ax_end.set_ylim(*readable_limits(everything))
    ax_end.set(ylabel=f"{label} (%)", title="Validation by decoder (filled: dev-best; ringed: ships)")
    for ax in axes:
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
