"""Scores of whole masks that no confusion matrix holds: boundary F-score and object matching, per image.

Both take predicted and target masks ``(N, H, W)`` (class indices; the target holds
``ignore_index`` for void) and return one value (or a few counts) per image, so that the same
functions serve as metrics (:class:`hf_reward.metrics.StreamingMeanIoU`) and as rewards of
sampled masks (:data:`MASK_REWARDS`, for the score-function estimator).

**Boundary F-score** (Csurka, Larlus & Perronnin 2013, "What is a good evaluation measure for
semantic segmentation?", the measure they propose on CamVid). A non-void pixel is a boundary
pixel of a map when one of its 4 neighbours is non-void too and holds another value in that map:
void takes no part, so a score depends on the prediction at non-void pixels only (as the count
metrics do, and as the score-function estimator's gradient needs). For class c, ``G_c`` are the
target's boundary pixels of class c and ``P_c`` the prediction's. With a tolerance of ``theta``
pixels (Euclidean),

    precision_c = |{p in P_c : d(p, G_c) <= theta}| / |P_c|,
    recall_c    = |{g in G_c : d(g, P_c) <= theta}| / |G_c|,
    F_c = 2 precision_c recall_c / (precision_c + recall_c)   (0 if either set is empty).

An image's score is the mean of F_c over the classes with a boundary in the target or the
prediction (1 when neither has one: nothing to disagree on); a split's score is the mean over
images. ``theta`` is given in pixels (``"2px"``) or as a fraction of the image diagonal
(``"0.75%"``, Csurka et al.'s and MATLAB ``bfscore``'s default).

**Objects** (pseudo-instances). For each thing class, the 8-connected components of the target
and of the prediction (at non-void pixels) are objects; a target and a predicted object match
when their IoU is at least 0.5 (one-to-one, greedily by IoU). :func:`object_counts` returns per
image the target objects, the predicted objects and the matches, from which recall, precision
and F1 follow. :func:`object_f1` is the one definition of object F1, 2 matches / (target +
predicted objects), and 1 where there is no object in either (nothing to find, nothing found):
the reward ``object_f1`` scores one image's counts; the metric ``object_f1``
(:mod:`hf_reward.metrics`) scores the split's counts summed over its images, as dataset mIoU pools
pixels, so an image without objects counts there only through its false positives.

Example::

    >>> target = torch.tensor([[[0, 0, 1, 1]] * 4])          # (N=1, H=4, W=4): class 1 on the right half
    >>> boundary_f(target, target, num_classes=2, tolerance="0px")
    tensor([1.], dtype=torch.float64)
    >>> shifted = torch.tensor([[[0, 1, 1, 1]] * 4])          # the edge one pixel to the left
    >>> boundary_f(shifted, target, num_classes=2, tolerance="0px"), boundary_f(shifted, target, 2, tolerance="1px")
    (tensor([0.], dtype=torch.float64), tensor([1.], dtype=torch.float64))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch

# A reward of whole masks: (pred (N, H, W), target (N, H, W)) -> (N,), for the score-function estimator.
MaskReward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MASK_REWARDS = ("boundary_f", "object_f1")


def tolerance_pixels(tolerance: str, size: tuple[int, int]) -> float:
    """``"2px"`` -> 2.0; ``"0.75%"`` -> 0.75% of the diagonal of an image of ``size`` (H, W).

    >>> tolerance_pixels("0.75%", (300, 400))
    3.75
    """
    if tolerance.endswith("px"):
        value = float(tolerance[:-2])
    elif tolerance.endswith("%"):
        value = float(tolerance[:-1]) / 100 * math.hypot(*size)
    else:
        raise ValueError(f"a tolerance is '<pixels>px' or '<percent of the diagonal>%', got {tolerance!r}")
    if not value >= 0:
        raise ValueError(f"a tolerance must be >= 0, got {tolerance!r}")
    return value


def boundaries(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixels ``(N, H, W)`` with a 4-neighbour of another value in ``labels (N, H, W)``, both of them ``valid``."""
    b = torch.zeros_like(labels, dtype=torch.bool)
    vertical = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    horizontal = (labels[:, :, 1:] != labels[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    b[:, 1:] |= vertical
    b[:, :-1] |= vertical
    b[:, :, 1:] |= horizontal
    b[:, :, :-1] |= horizontal
    return b


def within(points: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels at Euclidean distance <= ``radius`` from a True pixel of ``points (M, H, W)`` (bool).

    A dilation by the disk, row by row: the disk's row at height dy is the horizontal run of half-width
    w(dy) = max{w : w^2 + dy^2 <= radius^2}, so the dilation is the union over dy of the points dilated by
    that run, shifted by +-dy. The rows are taken from the widest |dy| inwards, where the run only grows:
    one pixel a side at a time (2 shifted ORs), so the whole dilation is about 4 radius boolean passes
    and holds two maps besides the output.
    """
    r = int(math.floor(radius))
    if r < 1 or not points.any():
        return points.clone()
    height, width = points.shape[-2:]
    out = torch.zeros_like(points)
    run, run_width = points.clone(), 0  # the points dilated by a horizontal run of half-width run_width
    for dy in range(min(r, height - 1), -1, -1):
        w = math.isqrt(int(radius**2 - dy**2))  # a first guess, then exact for a fractional radius
        while (w + 1) ** 2 + dy**2 <= radius**2:
            w += 1
        while w > 0 and w**2 + dy**2 > radius**2:
            w -= 1
        for _ in range(min(w, width) - run_width):
            grown = run.clone()
            grown[..., 1:] |= run[..., :-1]
            grown[..., :-1] |= run[..., 1:]
            run = grown
        run_width = max(run_width, min(w, width))
        for shift in {dy, -dy}:
            out[:, max(0, -shift) : height - max(0, shift)] |= run[:, max(0, shift) : height - max(0, -shift)]
    return out


def boundary_f_per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, radius: float, ignore_index: int = 255
) -> torch.Tensor:
    """Boundary F of every class in every image ``(N, C)`` float64; NaN where neither map has a boundary of it."""
    valid = target != ignore_index
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    g = boundaries(target, valid).unsqueeze(1) & (target.unsqueeze(1) == classes)  # (N, C, H, W)
    p = boundaries(pred, valid).unsqueeze(1) & (pred.unsqueeze(1) == classes)
    near_g = within(g.flatten(0, 1), radius).view_as(g)
    near_p = within(p.flatten(0, 1), radius).view_as(p)
    n_g, n_p = g.sum((-2, -1)).double(), p.sum((-2, -1)).double()
    precision = (p & near_g).sum((-2, -1)) / n_p.clamp(min=1)
    recall = (g & near_p).sum((-2, -1)) / n_g.clamp(min=1)
    f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    return torch.where(n_g + n_p > 0, f, torch.nan)


def boundary_f(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, tolerance: str = "2px", ignore_index: int = 255
) -> torch.Tensor:
    """Per-image boundary F-score ``(N,)`` float64 of masks ``(N, H, W)`` (see the module docstring)."""
    radius = tolerance_pixels(tolerance, tuple(target.shape[-2:]))
    per_class = boundary_f_per_class(pred, target, num_classes, radius, ignore_index)
    counted = ~per_class.isnan()
    mean = per_class.nan_to_num(0.0).sum(1) / counted.sum(1).clamp(min=1)
    return torch.where(counted.any(1), mean, 1.0)


@dataclass(frozen=True)
class BoundaryFReward:
    """Each image's boundary F at ``tolerance`` as a reward of masks ``(N, H, W) -> (N,)``, with the switched
    rewards the local estimator needs (:func:`hf_reward.local_boundary.switched_boundary_f`)."""

    num_classes: int
    tolerance: str = "2px"
    ignore_index: int = 255

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return boundary_f(pred, target, self.num_classes, self.tolerance, self.ignore_index)

    def switched(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``R(pred with pixel i switched to c) - R(pred)`` for every image, class and pixel: ``(N, C, H, W)``."""
        from .local_boundary import switched_boundary_f  # it builds on this module's boundaries

        radius = tolerance_pixels(self.tolerance, tuple(target.shape[-2:]))
        return switched_boundary_f(pred, target, self.num_classes, radius, self.ignore_index)


def object_counts(
    pred: torch.Tensor, target: torch.Tensor, thing_ids: Sequence[int], ignore_index: int = 255, min_iou: float = 0.5
) -> torch.Tensor:
    """``(N, 3)`` long per image: target objects, predicted objects, and matches at IoU >= ``min_iou``."""
    counts = torch.zeros(len(target), 3, dtype=torch.long)
    structure = np.ones((3, 3), dtype=bool)  # 8-connected
    for i, (p, t) in enumerate(zip(pred.cpu().numpy(), target.cpu().numpy())):
        valid = t != ignore_index
        for c in thing_ids:
            g_labels, n_g = scipy.ndimage.label(t == c, structure)
            p_labels, n_p = scipy.ndimage.label((p == c) & valid, structure)
            counts[i] += torch.tensor([n_g, n_p, _matches(g_labels, n_g, p_labels, n_p, min_iou)])
    return counts


def _matches(g: np.ndarray, n_g: int, p: np.ndarray, n_p: int, min_iou: float) -> int:
    """One-to-one matches, greedily by IoU, between the components of two label maps at IoU >= ``min_iou``."""
    if n_g == 0 or n_p == 0:
        return 0
    both = (g > 0) & (p > 0)
    inter = np.bincount(g[both] * (n_p + 1) + p[both], minlength=(n_g + 1) * (n_p + 1)).reshape(n_g + 1, n_p + 1)
    inter = inter[1:, 1:]
    area_g = np.bincount(g.ravel(), minlength=n_g + 1)[1:]
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)[1:]
    iou = inter / (area_g[:, None] + area_p[None, :] - inter)
    pairs = sorted(zip(*np.nonzero(iou >= min_iou)), key=lambda ij: -iou[ij])
    used_g, used_p = set(), set()
    for a, b in pairs:
        if a not in used_g and b not in used_p:
            used_g.add(a)
            used_p.add(b)
    return len(used_g)


def object_f1(counts: torch.Tensor) -> torch.Tensor:
    """Object F1 ``(...)`` float64 of counts ``(..., 3)`` (:func:`object_counts`: target objects, predicted objects,
    matches): 2 matches / (target + predicted objects); 1 where there is no object in either."""
    counts = counts.double()
    total = counts[..., 0] + counts[..., 1]
    return torch.where(total > 0, 2 * counts[..., 2] / total.clamp(min=1), 1.0)


def _object_f1_of_masks(pred, target, thing_ids, ignore_index):
    return object_f1(object_counts(pred, target, thing_ids, ignore_index))


def get_mask_reward(
    name: str,
    num_classes: int,
    *,
    tolerance: str = "2px",
    thing_ids: Sequence[int] = (),
    ignore_index: int = 255,
) -> MaskReward:
    """The named reward of whole masks (:data:`MASK_REWARDS`): each image's boundary F at ``tolerance``
    (in pixels of the masks it gets), or its object F1 over ``thing_ids``.

    >>> reward = get_mask_reward("boundary_f", 2, tolerance="1px")
    >>> reward(torch.tensor([[[0, 1, 1, 1]] * 4]), torch.tensor([[[0, 0, 1, 1]] * 4]))
    tensor([1.], dtype=torch.float64)
    """
    if name == "boundary_f":
        tolerance_pixels(tolerance, (1, 1))
        return BoundaryFReward(num_classes, tolerance, ignore_index)
    if name == "object_f1":
        if not thing_ids:
            raise ValueError("reward 'object_f1' needs thing classes (RewardSegConfig.reward_thing_classes)")
        return functools.partial(_object_f1_of_masks, thing_ids=list(thing_ids), ignore_index=ignore_index)
    raise ValueError(f"a reward of whole masks is one of {MASK_REWARDS}, got {name!r}")
