"""Segmentation rewards as functions of the per-class confusion counts.

A reward is a function of three count vectors over the C classes, read off a confusion matrix
``cm[..., target, pred]``:

    tp[c] = cm[c, c]           true positives
    gt[c] = sum_p cm[c, p]     pixels whose target is c
    pd[c] = sum_t cm[t, c]     pixels predicted as c

    reward(tp, gt, pd) -> (...)     with tp, gt, pd of shape (..., C), float64

Every metric that users report for semantic segmentation is such a function (the named ones
below), and this form is what makes the local estimator exact for any of them: switching one
pixel's prediction moves one count in ``pd`` twice and at most one in ``tp``
(:mod:`hf_reward.local`). A reward must accept any leading shape, return one value per
matrix, and be finite on every matrix with non-negative counts, the empty one included
(:func:`check_reward` tests this).

Named rewards (:data:`REWARDS`); "present" classes are those the formula can score, and a
class that is not present does not count in a mean (the ``evaluate`` / Cityscapes convention):

- ``miou``: mean over classes with tp + fp + fn > 0 of tp / (gt + pd - tp).
- ``miou_gt``: mean over classes with gt > 0 of tp / (gt + pd - tp): a class only predicted costs
  the true classes' IoU but adds no term of its own (per image: Wang et al. 2023's mIoU^I).
- ``dice``: mean over classes with gt + pd > 0 of 2 tp / (gt + pd).
- ``f_beta``: mean over classes with beta^2 gt + pd > 0 of (1 + beta^2) tp / (beta^2 gt + pd);
  ``beta=1`` is ``dice``.
- ``pixel_accuracy``: sum tp / sum gt.
- ``mean_accuracy``: mean over classes with gt > 0 of tp / gt (mean class recall).
- ``fw_iou``: frequency-weighted IoU, sum_c (gt_c / sum gt) IoU_c.
- ``cohen_kappa``: (p_o - p_e) / (1 - p_e), p_o = sum tp / n, p_e = sum_c gt_c pd_c / n^2.

``miou`` and ``f_beta`` take ``class_weights (C,)``: a weighted mean over present classes
(zeros select a class subset). An empty matrix scores 0 everywhere.

Example::

    >>> cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 0]])   # [target, pred]; class 2 absent
    >>> miou(*class_counts(cm))                                # IoU(0) = 1/2, IoU(1) = 2/3
    tensor(0.5833, dtype=torch.float64)
    >>> reward = get_reward("miou", class_weights=[1.0, 3.0, 1.0])
    >>> reward(*class_counts(cm))                              # (1/2 + 3 * 2/3) / 4
    tensor(0.6250, dtype=torch.float64)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def counted_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Which pixels count: their label is a class in [0, C) (so never ``ignore_index``); bool, ``labels``' shape."""
    return (labels >= 0) & (labels < num_classes) & (labels != ignore_index)


def unknown_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Which pixels hold a label that is neither a class in [0, C) nor ``ignore_index``; bool."""
    return (labels != ignore_index) & ~counted_labels(labels, num_classes, ignore_index)


def unknown_labels_error(values, num_classes: int, ignore_index: int, where: str) -> ValueError:
    """The error for masks holding ``values`` that are neither a class nor ``ignore_index``, found ``where``."""
    values = sorted({int(v) for v in values})
    return ValueError(
        f"labels hold {values} ({where}): neither a class of the model in [0, {num_classes}) nor "
        f"ignore_index={ignore_index}. Map the dataset's values to class indices "
        "(hf_reward.data.load_segmentation_dataset's label_map), or give the model a head for this dataset's classes"
    )


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, where: str) -> None:
    """Raise :func:`unknown_labels_error` if ``labels`` hold a value neither a class nor ignore (a host sync)."""
    unknown = unknown_labels(labels, num_classes, ignore_index)
    if unknown.any():
        raise unknown_labels_error(labels[unknown].unique().tolist(), num_classes, ignore_index, where)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image confusion counts ``(B, C, C)`` (long), ``cm[b, target, pred]``.

    ``pred``/``target``: ``(B, ...)`` integer. Only pixels whose target is a class in [0, C)
    other than ``ignore_index``, and whose prediction is a class in [0, C), are counted; every
    other value falls in a bin that is dropped, so no value can ever land in another class's or
    another image's bins. (The trainer rejects labels that are neither a class nor
    ``ignore_index`` before they get here.) One ``bincount`` for the whole batch and no boolean
    indexing, so no host sync on GPU.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    batch, c = pred.shape[0], num_classes
    pred, target = pred.reshape(batch, -1), target.reshape(batch, -1)
    counted = counted_labels(target, c, ignore_index) & (pred >= 0) & (pred < c)
    bins = c * c + 1  # the last bin of each image collects what is not counted
    index = torch.where(counted, target * c + pred, c * c)
    index = index + torch.arange(batch, device=pred.device).unsqueeze(1) * bins
    counts = torch.bincount(index.reshape(-1), minlength=batch * bins)
    return counts.view(batch, bins)[:, : c * c].view(batch, c, c)


def class_counts(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tp, gt, pd)``, each ``(..., C)`` float64, of confusion matrices ``cm (..., C, C)`` [target, pred]."""
    cm = cm.double()
    return cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class ``numerator / denominator`` where the denominator is positive (0 elsewhere), and that mask."""
    present = denominator > 0
    return torch.where(present, numerator / denominator.clamp(min=1e-300), 0.0), present


def _mean_present(scores: torch.Tensor, present: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    weights = present.double() if class_weights is None else present * class_weights.to(scores)
    total = weights.sum(-1)
    return torch.where(total > 0, (scores * weights).sum(-1) / total.clamp(min=1e-300), 0.0)


def iou_per_class(tp: torch.Tensor, gt: torch.Tensor, pd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU ``(..., C)`` and the mask of classes present in the target or the prediction."""
    return _ratio(tp, gt + pd - tp)


def recall_per_class(tp: torch.Tensor, gt: torch.Tensor, pd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall (class accuracy) ``(..., C)`` and the mask of classes present in the target."""
    return _ratio(tp, gt)


def miou(tp, gt, pd, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean IoU over present classes, optionally weighted by ``class_weights (C,)``."""
    return _mean_present(*iou_per_class(tp, gt, pd), class_weights)


def miou_gt(tp, gt, pd) -> torch.Tensor:
    """Mean IoU over the classes present in the ground truth (gt > 0): per image, Wang et al. 2023's mIoU^I."""
    iou, _ = iou_per_class(tp, gt, pd)
    return _mean_present(iou, gt > 0, None)


def f_beta(tp, gt, pd, beta: float = 1.0, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean F-beta over present classes: recall weighs beta^2 times as much as precision."""
    b2 = beta * beta
    return _mean_present(*_ratio((1 + b2) * tp, b2 * gt + pd), class_weights)


def dice(tp, gt, pd) -> torch.Tensor:
    """Mean Dice (F1) over present classes."""
    return f_beta(tp, gt, pd, 1.0)


def pixel_accuracy(tp, gt, pd) -> torch.Tensor:
    """Fraction of counted pixels predicted correctly."""
    return _ratio(tp.sum(-1), gt.sum(-1))[0]


def mean_accuracy(tp, gt, pd) -> torch.Tensor:
    """Mean over classes with ground truth of their recall tp / gt."""
    return _mean_present(*recall_per_class(tp, gt, pd), None)


def fw_iou(tp, gt, pd) -> torch.Tensor:
    """Frequency-weighted IoU: each class's IoU weighted by its share of the ground truth."""
    iou, _ = iou_per_class(tp, gt, pd)
    return _ratio((gt * iou).sum(-1), gt.sum(-1))[0]


def cohen_kappa(tp, gt, pd) -> torch.Tensor:
    """Cohen's kappa of prediction against target; 0 where chance agreement is 1 (a single class)."""
    n = gt.sum(-1)
    observed = _ratio(tp.sum(-1), n)[0]
    chance = _ratio((gt * pd).sum(-1), n * n)[0]
    return _ratio(observed - chance, 1 - chance)[0]


REWARDS: dict[str, Reward] = {
    "miou": miou,
    "miou_gt": miou_gt,
    "dice": dice,
    "f_beta": f_beta,
    "pixel_accuracy": pixel_accuracy,
    "mean_accuracy": mean_accuracy,
    "fw_iou": fw_iou,
    "cohen_kappa": cohen_kappa,
}
WEIGHTED_REWARDS = ("miou", "f_beta")  # the rewards that take class_weights


def get_reward(name: str, *, beta: float = 1.0, class_weights: Sequence[float] | None = None) -> Reward:
    """The named reward as a function of ``(tp, gt, pd)``, with its ``beta`` and ``class_weights`` bound.

    >>> get_reward("f_beta", beta=2.0)(*class_counts(torch.eye(3)))
    tensor(1., dtype=torch.float64)
    """
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {tuple(REWARDS)}, got {name!r}")
    if class_weights is not None and name not in WEIGHTED_REWARDS:
        raise ValueError(f"class_weights apply to {WEIGHTED_REWARDS}, not reward={name!r}")
    kwargs = {}
    if class_weights is not None:
        kwargs["class_weights"] = torch.as_tensor(class_weights, dtype=torch.float64)
    if name == "f_beta":
        kwargs["beta"] = beta
    return functools.partial(REWARDS[name], **kwargs) if kwargs else REWARDS[name]


def check_reward(reward: Reward, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``reward`` maps counts ``(..., C)`` to finite values ``(...)``.

    Tried with two leading dimensions, (4, 3), on four kinds of matrix: the empty one, ones where
    every class is present in target and prediction, ones where class 0 is in neither, and ones
    where class 0 is in the target but never predicted (as happens before calibration).
    """
    kinds = ("empty", "every class present", "class 0 absent", "class 0 never predicted")
    cm = torch.rand(4, 3, num_classes, num_classes, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cm[0] = 0
    cm[1] += 1  # every entry positive: every class in target and prediction
    cm[2, :, 0, :] = cm[2, :, :, 0] = 0
    cm[3, :, :, 0] = 0
    try:
        value = reward(*class_counts(cm))
    except Exception as err:
        raise ValueError(
            f"the reward failed on counts of shape (4, 3, {num_classes}): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(value, torch.Tensor) or value.shape != (4, 3):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"a reward maps tp, gt, pd of shape (..., C) to (...); for (4, 3, {num_classes}) it gave {shape}"
        )
    bad = [kind for kind, row in zip(kinds, value) if not row.isfinite().all()]
    if bad:
        raise ValueError(
            f"the reward is not finite on count matrices of kind {bad}: {value.tolist()}; select with torch.where "
            "where a denominator can be 0"
        )


def reward_of_masks(
    reward: Reward, pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image reward ``(B,)`` of masks ``pred`` against ``target`` (both ``(B, H, W)`` long).

    >>> reward_of_masks(miou, torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 1], [1, 1]]]), 3)
    tensor([0.5833], dtype=torch.float64)
    """
    return reward(*class_counts(confusion_matrix(pred, target, num_classes, ignore_index)))
