"""Segmentation metrics, streamed: one confusion matrix over the split, and optionally per-image scores.

Dataset level (those of the Cityscapes pixel-level evaluation and of ``evaluate``'s mean_iou):
pixels labelled ``ignore_index`` do not count; IoU_c = TP / (TP + FP + FN) over the split; a
class with no ground truth and no prediction has IoU NaN and is left out of the mean; mean
accuracy averages TP / |target| over classes with ground truth; overall accuracy is
TP / valid pixels. The other rewards of :mod:`hf_reward.rewards` (:data:`EXTRA_METRICS`) are
reported too, computed by the same functions the trainer optimises, so the metric tuned is the
metric evaluated (``mean_iou`` is ``miou``, ``overall_accuracy`` is ``pixel_accuracy``); a
custom or weighted reward passed as ``reward=`` is reported as ``reward``. A split with no
counted pixel scores NaN everywhere, never 0.

Per image, on request (Wang, Blaschko et al. 2023, "Revisiting evaluation metrics for semantic
segmentation", NeurIPS; their JDTLosses ``metrics/``), with IoU_ic the IoU of class c in image i
and G_i the classes in image i's ground truth:

- ``image_miou`` (mIoU^I): mean over images of mean_{c in G_i} IoU_ic (:func:`rewards.miou_gt`);
- ``class_miou`` (mIoU^C): mean over classes of the mean of IoU_ic over the images whose ground
  truth has c;
- ``image_miou_worst10``: the mean of the lowest 10% of the images' mIoU^I (at least one image).

Boundary F-score at each tolerance (``boundary_f_<tolerance>``, e.g. ``boundary_f_2px``,
``boundary_f_0.75%``) and object recall, precision and F1 of the thing classes
(``object_recall``, ``object_precision``, ``object_f1``): :mod:`hf_reward.mask_scores`.

The confusion matrix lives on the logits' device; per-image scores are a few numbers per image
on the CPU, so memory grows only by those. With Trainer, pass the metric as ``compute_metrics``
and set ``batch_eval_metrics=True``; Trainer then calls it once per batch and reads the result
on the last one.

Example::

    >>> metric = StreamingMeanIoU(num_classes=2, id2label={0: "road", 1: "car"})
    >>> logits = torch.tensor([[[[4.0, 4.0]], [[0.0, 0.0]]]])   # (B=1, C=2, h=1, w=2): predicts road
    >>> metric.update(logits, torch.tensor([[[0, 1]]]))         # labels (B=1, H=1, W=2)
    >>> metric.compute()["mean_iou"], metric.compute()["iou_car"]
    (0.25, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import mask_scores
from .decisions import decide
from .rewards import (
    REWARDS,
    Reward,
    check_labels,
    class_counts,
    confusion_matrix,
    iou_per_class,
    miou,
    miou_gt,
    recall_per_class,
)

# The named rewards besides those evaluate's mean_iou reports (mean_iou, mean_accuracy, overall_accuracy);
# f_beta at its default beta is dice.
EXTRA_METRICS = ("dice", "fw_iou", "cohen_kappa")


def scores_from_confusion(cm: np.ndarray | torch.Tensor) -> dict[str, np.ndarray | float]:
    """Dataset-level scores of a confusion matrix ``cm[target, pred]`` (C, C), by the reward functions.

    Returns ``iou`` and ``accuracy`` per class (C,) with NaN for classes that do not count, and
    ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` floats (NaN if nothing counts).

    >>> s = scores_from_confusion(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    >>> s["iou"], s["mean_iou"]
    (array([0.75      , 0.66666667,        nan]), 0.7083333333333333)
    """
    counts = class_counts(torch.as_tensor(np.asarray(cm) if not isinstance(cm, torch.Tensor) else cm).cpu())
    iou, present = iou_per_class(*counts)
    accuracy, has_target = recall_per_class(*counts)
    nothing = counts[1].sum() == 0

    def mean(name, mask):
        return float("nan") if not mask.any() else float(REWARDS[name](*counts))

    return {
        "iou": torch.where(present, iou, torch.nan).numpy(),
        "accuracy": torch.where(has_target, accuracy, torch.nan).numpy(),
        "mean_iou": mean("miou", present),
        "mean_accuracy": mean("mean_accuracy", has_target),
        "overall_accuracy": float("nan") if nothing else float(REWARDS["pixel_accuracy"](*counts)),
    }


def class_key(name: str) -> str:
    """The metrics' key of class ``name``'s IoU: ``iou_<name>``, spaces as underscores (``iou_traffic_light``)."""
    return "iou_" + str(name).replace(" ", "_")


class StreamingMeanIoU:
    """Streaming segmentation metrics (dataset-level mIoU and more); a Trainer ``compute_metrics`` and an accumulator.

    Args:
        num_classes: C.
        id2label: class index -> name, for the ``iou_<name>`` keys (default: the index).
        ignore_index: target value of pixels that do not count.
        reward: a reward of the counts (:mod:`hf_reward.rewards`) to report as ``reward``, e.g. the
            custom or class-weighted one a model was tuned on.
        per_image: also report ``image_miou``, ``class_miou`` and ``image_miou_worst10`` (and, with a
            ``reward``, ``image_reward``: the mean over images of each image's reward).
        boundary_tolerances: report ``boundary_f_<tolerance>`` for each (``"2px"``, ``"0.75%"``).
        thing_classes: names of the classes scored as objects (``object_recall``, ...).

    Outside Trainer::

        metric = StreamingMeanIoU(19, cityscapes_id2label())
        for batch in loader:
                metric.update(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        metric.compute()["mean_iou"]

    With Trainer::

        args = TrainingArguments(..., batch_eval_metrics=True)
        trainer = Trainer(model, args, compute_metrics=StreamingMeanIoU(19, cityscapes_id2label()), ...)
    """

    def __init__(
        self,
        num_classes: int,
        id2label: Mapping[int, str] | None = None,
        ignore_index: int = 255,
        reward: Reward | None = None,
        *,
        per_image: bool = False,
        boundary_tolerances: Sequence[str] = (),
        thing_classes: Sequence[str] = (),
    ):
        if id2label is not None and len(id2label) != num_classes:
            raise ValueError(f"id2label has {len(id2label)} classes but num_classes={num_classes}")
        self.num_classes = num_classes
        self.id2label = {i: str(id2label[i]) if id2label is not None else str(i) for i in range(num_classes)}
        self.ignore_index = ignore_index
        self.reward = reward
        self.per_image = per_image
        for tolerance in boundary_tolerances:
            mask_scores.tolerance_pixels(tolerance, (1, 1))  # a bad spelling fails here, not after the first batch
        self.boundary_tolerances = tuple(boundary_tolerances)
        ids = {name: i for i, name in self.id2label.items()}
        unknown = [name for name in thing_classes if name not in ids]
        if unknown:
            raise ValueError(f"thing_classes {unknown} are not classes of {list(ids)}")
        self.thing_ids = [ids[name] for name in thing_classes]
        self.reset()

    def reset(self) -> None:
        self.confusion: torch.Tensor | None = None  # (C, C) long, cm[target, pred], on the logits' device
        self.image_confusions: list[torch.Tensor] = []  # (B, C, C) per batch, per_image only, on the CPU
        # Per image, in the order added: whether it has a counted pixel, boundary F (NaN without), object counts.
        self.counted: list[torch.Tensor] = []  # (B,) bool per batch
        self.boundary_scores: dict[str, list[torch.Tensor]] = {t: [] for t in self.boundary_tolerances}
        self.object_counts: list[torch.Tensor] = []  # (B, 3) long per batch: target objects, predicted, matches

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: logits ``(B, C, h, w)``, labels ``(B, H, W)`` (class indices or ignore).

        Logits are upsampled to the label size (bilinear) before the argmax (:func:`hf_reward.decisions.decide`).
        """
        logits = torch.as_tensor(logits)
        labels = torch.as_tensor(labels)
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, C={self.num_classes}, h, w), got {tuple(logits.shape)}")
        if labels.dim() != 3:
            raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
        pred = decide(logits, tuple(labels.shape[-2:]))
        self.update_masks(pred, labels)

    @torch.no_grad()
    def update_masks(self, pred: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of predicted class maps ``(B, H, W)`` against labels ``(B, H, W)``."""
        pred = torch.as_tensor(pred)
        labels = torch.as_tensor(labels).to(pred.device).long()
        pred = pred.long()
        if pred.shape != labels.shape:
            raise ValueError(
                f"predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} must have the same shape"
            )
        # Out-of-range values would land in another class's bins: refuse them (one host sync per
        # batch, acceptable at evaluation).
        check_labels(labels, self.num_classes, self.ignore_index, "evaluation")
        if ((pred < 0) | (pred >= self.num_classes)).any():
            raise ValueError(f"predictions must be classes in [0, {self.num_classes})")
        per_image = confusion_matrix(pred, labels, self.num_classes, self.ignore_index)  # (B, C, C)
        cm = per_image.sum(0)
        self.confusion = cm if self.confusion is None else self.confusion + cm
        if self.per_image:
            self.image_confusions.append(per_image.cpu())
        self.counted.append((labels != self.ignore_index).flatten(1).any(1).cpu())
        counted = self.counted[-1].tolist()  # an image with no counted pixel scores nothing
        for tolerance in self.boundary_tolerances:
            score = torch.full((len(labels),), torch.nan, dtype=torch.float64)
            for i in (i for i, c in enumerate(counted) if c):  # one image at a time: its boundary maps are (C, H, W)
                score[i] = mask_scores.boundary_f(
                    pred[i, None], labels[i, None], self.num_classes, tolerance, self.ignore_index
                )
            self.boundary_scores[tolerance].append(score)
        if self.thing_ids:
            self.object_counts.append(mask_scores.object_counts(pred, labels, self.thing_ids, self.ignore_index))

    def scores(self) -> dict[str, np.ndarray | float]:
        """:func:`scores_from_confusion` of the matrix so far (per-class arrays and the means)."""
        cm = self.confusion if self.confusion is not None else torch.zeros(self.num_classes, self.num_classes)
        return scores_from_confusion(cm)

    def compute(self) -> dict[str, float]:
        """``mean_iou``, ``mean_accuracy``, ``overall_accuracy``, :data:`EXTRA_METRICS`, ``reward`` (if given)
        and ``iou_<class name>`` (NaN: class absent)."""
        scores = self.scores()
        cm = self.confusion if self.confusion is not None else torch.zeros(self.num_classes, self.num_classes)
        counts = class_counts(cm.cpu())
        nothing = counts[1].sum() == 0  # no pixel counted: every score is NaN, never a 0 for nothing

        def score(reward):
            return float("nan") if nothing else float(reward(*counts))

        out = {k: scores[k] for k in ("mean_iou", "mean_accuracy", "overall_accuracy")}
        out.update({name: score(REWARDS[name]) for name in EXTRA_METRICS})
        if self.reward is not None:
            out["reward"] = score(self.reward)
        out.update({class_key(name): float(scores["iou"][i]) for i, name in self.id2label.items()})
        records = self.image_records()
        if len(records) > 1:
            everything = torch.ones(1, len(records["counted"]), dtype=torch.float64)
            out.update({k: float(v[0]) for k, v in resampled_scores(records, everything).items() if k != "mean_iou"})
        if self.per_image and self.reward is not None:
            tp, gt, pd = records["counts"][records["counted"]].unbind(1)
            out["image_reward"] = float(self.reward(tp, gt, pd).mean()) if len(tp) else float("nan")
        return out

    def image_records(self) -> dict[str, torch.Tensor]:
        """What the per-image metrics are computed from, a row per image in the order added, on the CPU:

        - ``counted`` ``(N,)`` bool: the image has a counted (non-void) pixel;
        - ``counts`` ``(N, 3, C)`` float64: each image's tp, gt and pd per class (``per_image`` only);
        - ``boundary_f_<tolerance>`` ``(N,)`` float64: NaN for an image with no counted pixel;
        - ``objects`` ``(N, 3)`` long: target objects, predicted objects, matches (``thing_classes`` only).

        :func:`resampled_scores` scores any multiset of the images from them (the split itself, or a bootstrap).
        """
        records = {"counted": torch.cat(self.counted) if self.counted else torch.zeros(0, dtype=torch.bool)}
        if self.per_image:
            cm = torch.cat(self.image_confusions or [torch.zeros(0, self.num_classes, self.num_classes)])
            records["counts"] = torch.stack(class_counts(cm), 1)
        for tolerance, values in self.boundary_scores.items():
            records[f"boundary_f_{tolerance}"] = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
        if self.thing_ids:
            records["objects"] = torch.cat(self.object_counts) if self.object_counts else torch.zeros(0, 3).long()
        return records

    def __call__(self, eval_pred, compute_result: bool = False) -> dict[str, float]:
        """Trainer's ``compute_metrics`` with ``batch_eval_metrics=True``: accumulate, and on the
        last batch (``compute_result=True``) return the scores and reset for the next evaluation."""
        logits = eval_pred.predictions
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        self.update(logits, eval_pred.label_ids)
        if not compute_result:
            return {}
        result = self.compute()
        self.reset()
        return result


def resampled_scores(records: Mapping[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metrics of :meth:`StreamingMeanIoU.image_records` over weighted multisets of the images: ``(R,)`` each.

    ``weights`` ``(R, N)``: how many times each of the N images is in each of R multisets (a row of
    ones: the split itself; a bootstrap's counts: a resample). One definition of every metric that
    the records decide, used by :meth:`StreamingMeanIoU.compute` and the studies' bootstrap:

    - ``mean_iou``: :func:`rewards.miou` of the summed counts (the dataset-level matrix);
    - ``image_miou``, ``class_miou``, ``image_miou_worst10``: over images with a counted pixel
      (the worst 10%: the lowest ``max(1, int(0.1 n))`` of the multiset's n such images);
    - ``boundary_f_<tolerance>``: the mean over images with a counted pixel;
    - ``object_recall``, ``object_precision``: of the summed object counts, NaN with no object to
      divide by; ``object_f1``: :func:`hf_reward.mask_scores.object_f1` of the summed counts (1 with no
      object in either: the reward's definition, applied to the pooled counts; NaN with no counted pixel).

    >>> counts = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    >>> s = resampled_scores({"counts": counts}, torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    >>> s["image_miou"].tolist(), s["mean_iou"].tolist()
    ([0.75, 0.5], [0.75, 0.5])
    """
    weights = weights.double()
    out = {}
    if "counts" in records:
        tp, gt, pd = records["counts"].double().unbind(1)  # (N, C) each
        w = weights * counted_images(records)  # images with no counted pixel do not count
        total = w.sum(1)
        out["mean_iou"] = torch.where(total > 0, miou(w @ tp, w @ gt, w @ pd), torch.nan)
        per_image = miou_gt(tp, gt, pd)  # (N,)
        out["image_miou"] = (w @ per_image) / total  # NaN over no image
        iou, _ = iou_per_class(tp, gt, pd)
        has = (gt > 0).double()  # (N, C): the class is in the image's ground truth
        images_with = w @ has  # (R, C)
        per_class = (w @ (iou * has)) / images_with.clamp(min=1e-300)
        out["class_miou"] = torch.where(images_with > 0, per_class, 0.0).sum(1) / (images_with > 0).sum(1)
        out["image_miou_worst10"] = _lowest_mean(per_image, w, 0.1)
    for key, values in records.items():
        if key.startswith("boundary_f_"):
            w = weights * ~values.isnan()
            out[key] = (w @ values.nan_to_num(0.0)) / w.sum(1)
    if "objects" in records:
        pooled = weights @ records["objects"].double()  # (R, 3)
        targets, predicted, matched = pooled.unbind(1)
        out["object_recall"] = matched / targets
        out["object_precision"] = matched / predicted
        scored = weights @ counted_images(records).double() > 0  # no counted pixel: NaN, as every metric
        out["object_f1"] = torch.where(scored, mask_scores.object_f1(pooled), torch.nan)
    return out


def _lowest_mean(values: torch.Tensor, weights: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mean of the lowest ``max(1, int(fraction * n))`` values of each weighted multiset ``weights (R, N)``."""
    order = values.argsort()
    v, w = values[order], weights[:, order]
    k = (fraction * w.sum(1)).floor().clamp(min=1)  # (R,)
    before = w.cumsum(1) - w  # how many lower values each multiset holds before this one
    taken = torch.minimum(w, (k[:, None] - before).clamp(min=0))
    return torch.where(w.sum(1) > 0, (taken * v.nan_to_num(0.0)).sum(1) / k, torch.nan)


def counted_images(records: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Which images have a counted pixel ``(N,)``: recorded, or (records saved before it was) read off the counts."""
    if "counted" in records:
        return records["counted"]
    return records["counts"][:, 1].sum(1) > 0
