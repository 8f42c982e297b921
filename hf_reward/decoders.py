"""Decoders: how a model's logits become a mask, and every decoder's metrics on a split.

A decoder maps logits ``(B, C, h, w)`` to masks ``(B, H, W)`` at the labels' size; those that
have parameters fit them on a training split's logits first:

- ``argmax``: the model as it is, ``argmax_c upsample(z)[c]``;
- ``offsets``: ``argmax_c upsample(z)[c] + b_c`` with the exact per-class offsets that maximise
  the dataset-level reward on the fit split (:func:`hf_reward.calibrate.fit_offsets`); the
  best rule for any metric of the dataset confusion matrix (a weighted argmax of the class
  probabilities is Bayes-optimal there: Narasimhan et al. 2015);
- ``image_offsets``: the same form, with the offsets that maximise the mean over images of
  each image's mIoU^I (``miou_gt``, ``fit_offsets(..., per_image=True)``);
- ``rankseg``: RankSEG (Dai & Li 2023, JMLR; Wang & Dai 2025, the RMA solver), which decodes
  each image's probabilities for its own expected IoU, no fitting (the ``rankseg`` extra:
  ``pip install 'hf-reward[rankseg]'``).

:func:`score_decoders` runs the model once per split (logits cached in fp16,
:class:`~hf_reward.calibrate.LogitCache`) and scores every decoder's masks with
:class:`~hf_reward.metrics.StreamingMeanIoU`.

Example::

    scores = score_decoders(model, train, {"validation": val}, ["argmax", "offsets"], miou, id2label)
    scores["validation"]["offsets"]["mean_iou"], scores["fitted"]["offsets"]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .calibrate import LogitCache, collect_logits, fit_offsets
from .data.transforms import collate_segmentation
from .decisions import decide, upsample_logits
from .metrics import StreamingMeanIoU
from .rewards import Reward

DECODERS = ("argmax", "offsets", "image_offsets", "rankseg")


def decode(name: str, logits: torch.Tensor, size: tuple[int, int], fitted: dict) -> torch.Tensor:
    """Masks ``(B, H, W)`` of decoder ``name`` from logits ``(B, C, h, w)``, with its ``fitted`` parameters."""
    if name == "argmax":
        return decide(logits, size)
    if name in ("offsets", "image_offsets"):
        return decide(logits, size, fitted[name])
    if name == "rankseg":
        scores = upsample_logits(logits.float(), size)
        return _rankseg()(scores.softmax(1), metric="IoU", output_mode="multiclass", solver="RMA")
    raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")


def _rankseg():
    try:
        from rankseg.functional import rankseg
    except ImportError as err:
        raise ImportError("decoder 'rankseg' needs the rankseg package: pip install 'hf-reward[rankseg]'") from err
    return rankseg


def fit_decoders(
    cache: LogitCache, decoders: Sequence[str], reward: Reward, device: str | torch.device = "cpu"
) -> dict:
    """The parameters of each decoder in ``decoders`` that has some, fitted on ``cache`` (computed on ``device``)."""
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"decoders must come from {DECODERS}, got {unknown}")
    fitted = {}
    if "offsets" in decoders:
        fitted["offsets"] = fit_offsets(cache, reward, device=device, progress=False).offsets
    if "image_offsets" in decoders:
        fitted["image_offsets"] = fit_offsets(cache, "miou_gt", per_image=True, device=device, progress=False).offsets
    if "rankseg" in decoders:
        _rankseg()  # missing: fail before any scoring
    return fitted


def _cache(model, dataset, batch_size: int) -> LogitCache:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    return collect_logits(model, loader, progress=False)


@torch.no_grad()
def score_decoders(
    model,
    fit_split,
    splits: dict,
    decoders: Sequence[str],
    reward: Reward,
    id2label: dict[int, str],
    *,
    batch_size: int = 16,
    ignore_index: int = 255,
    image_records: bool = False,
    **metric_options,
) -> dict:
    """``{split: {decoder: metrics}, "fitted": {decoder: parameters}}`` for ``model`` on each of ``splits``.

    ``offsets`` are fitted on ``fit_split`` for ``reward``. Every decoder is scored by a
    :class:`~hf_reward.metrics.StreamingMeanIoU` with ``metric_options`` (``per_image``,
    ``boundary_tolerances``, ``thing_classes``). ``image_records``: also ``"images": {split:
    {decoder: records}}``, each metric's per-image records (:meth:`StreamingMeanIoU.image_records`),
    for a bootstrap over images.
    """
    device = next(model.parameters()).device
    fitted = (
        fit_decoders(_cache(model, fit_split, batch_size), decoders, reward, device)
        if set(decoders) - {"argmax"}
        else {}
    )
    out = {}
    for split, dataset in splits.items():
        metrics = {
            d: StreamingMeanIoU(len(id2label), id2label, ignore_index, reward=reward, **metric_options)
            for d in decoders
        }
        for logits, labels in _cache(model, dataset, batch_size):
            labels = torch.where(labels == len(id2label), ignore_index, labels.long())  # the cache's void is C
            for name, metric in metrics.items():
                metric.update_masks(decode(name, logits, tuple(labels.shape[-2:]), fitted), labels)
        out[split] = {name: metric.compute() for name, metric in metrics.items()}
        if image_records:
            out.setdefault("images", {})[split] = {name: metric.image_records() for name, metric in metrics.items()}
    out["fitted"] = {name: value.tolist() for name, value in fitted.items()}
    return out
