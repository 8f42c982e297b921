"""Batched segmentation rewards: per-image mIoU, pixel accuracy and Dice.

Every reward has the signature ``reward(pred, target, num_classes, ignore_index=255) -> (B,)``
with ``pred`` and ``target`` of shape (B, H, W), dtype long. All images are counted in one
``bincount`` over B*C*C bins into a confusion matrix ``cm[b, t, p]`` (rows: target class t,
columns: predicted class p); the rewards are then closed-form functions of that matrix.

Semantics, shared with dataset-level evaluation (:mod:`hf_reward.metrics`):

- pixels whose target is ``ignore_index`` are excluded from prediction and target alike;
- a class absent from both the prediction and the target of an image does not count in that
  image's mean (the ``evaluate`` mean_iou and Cityscapes convention);
- an image with no valid pixel gets NaN; :func:`hf_reward.reinforce_loss` turns that into a zero
  advantage.

Example::

    >>> pred = torch.tensor([[[0, 0], [1, 1]]])
    >>> target = torch.tensor([[[0, 1], [1, 1]]])
    >>> miou(pred, target, num_classes=3)   # IoU(0) = 1/2, IoU(1) = 2/3, class 2 absent
    tensor([0.5833])
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-image confusion counts ``(B, C, C)`` (long), ``cm[b, target, pred]``.

    ``pred``/``target``: (B, ...) integer; ``pred`` in [0, C), ``target`` in [0, C) or
    ``ignore_index`` (other target values are not checked here; the data layer rejects them). Each image owns ``rows * C`` bins, with one row for every target value up to
    the ignore index, so ignored pixels land in rows that are dropped afterwards: no mask, no
    boolean indexing (no host sync on GPU), one ``bincount`` for the whole batch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    batch, c = pred.shape[0], num_classes
    if not c <= ignore_index:  # e.g. -100, or a class index: move it to row C, one extra pass
        target = torch.where(target == ignore_index, c, target)
        ignore_index = c
    rows = ignore_index + 1
    index = torch.add(pred.reshape(batch, -1), target.reshape(batch, -1), alpha=c)
    index += torch.arange(batch, device=pred.device).unsqueeze(1) * (rows * c)
    counts = torch.bincount(index.reshape(-1), minlength=batch * rows * c)
    return counts.view(batch, rows, c)[:, :c]


def _class_counts(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, target counts, predicted counts), each ``(..., C)`` float."""
    cm = cm.double()
    return cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)


def miou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Mean IoU over present classes of ``cm (..., C, C)`` -> ``(...)``; NaN where no class is present."""
    tp, gt, pd = _class_counts(cm)
    union = gt + pd - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), 0.0)
    return (iou.sum(-1) / present.sum(-1)).float()


def dice_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Mean Dice (2TP / (|target| + |pred|)) over present classes -> ``(...)``; NaN where none is present."""
    tp, gt, pd = _class_counts(cm)
    size = gt + pd
    present = size > 0
    dice = torch.where(present, 2 * tp / size.clamp(min=1), 0.0)
    return (dice.sum(-1) / present.sum(-1)).float()


def pixel_accuracy_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Fraction of valid pixels predicted correctly -> ``(...)``; NaN where no pixel is valid."""
    tp, gt, _ = _class_counts(cm)
    return (tp.sum(-1) / gt.sum(-1)).float()


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-image mean IoU ``(B,)`` of ``pred`` against ``target`` (both (B, H, W) long)."""
    return miou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


def dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-image mean Dice ``(B,)`` over classes present in prediction or target."""
    return dice_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-image pixel accuracy ``(B,)`` over valid pixels."""
    return pixel_accuracy_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


REWARDS = {"miou": miou, "pixel_accuracy": pixel_accuracy, "dice": dice}
FROM_CONFUSION = {"miou": miou_from_confusion, "pixel_accuracy": pixel_accuracy_from_confusion, "dice": dice_from_confusion}
