"""Decoders: how a model's logits become a mask, and every decoder's metrics on a split.

A decoder maps logits ``(B, C, h, w)`` to masks ``(B, H, W)`` at the labels' size; those that
have parameters fit them on a training split's logits first:

- ``argmax``: the model as it is, ``argmax_c upsample(z)[c]``;
- ``offsets``: ``argmax_c upsample(z)[c] + b_c`` with the exact per-class offsets that maximise
  the dataset-level reward on the fit split (:func:`hf_reward.calibrate.fit_offsets`); the
  best rule for any metric of the dataset confusion matrix (a weighted argmax of the class
  probabilities is Bayes-optimal there: Narasimhan et al. 2015).

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
from .metrics import StreamingMeanIoU, upsample_logits
from .rewards import Reward

DECODERS = ("argmax", "offsets")


def decode(name: str, logits: torch.Tensor, size: tuple[int, int], fitted: dict) -> torch.Tensor:
    """Masks ``(B, H, W)`` of decoder ``name`` from logits ``(B, C, h, w)``, with its ``fitted`` parameters."""
    scores = upsample_logits(logits.float(), size)
    if name == "argmax":
        return scores.argmax(1)
    if name == "offsets":
        return (scores + fitted["offsets"].view(1, -1, 1, 1)).argmax(1)
    raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")


def fit_decoders(cache: LogitCache, decoders: Sequence[str], reward: Reward) -> dict:
    """The parameters of each decoder in ``decoders`` that has some, fitted on ``cache``."""
    fitted = {}
    if "offsets" in decoders:
        fitted["offsets"] = fit_offsets(cache, reward, progress=False).offsets
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
    thing_classes: Sequence[str] | None = None,
    batch_size: int = 16,
    ignore_index: int = 255,
) -> dict:
    """``{split: {decoder: metrics}, "fitted": {decoder: parameters}}`` for ``model`` on each of ``splits``.

    Decoders with parameters are fitted on ``fit_split`` for ``reward``. ``thing_classes`` are
    scored as objects too.
    """
    fitted = fit_decoders(_cache(model, fit_split, batch_size), decoders, reward) if set(decoders) - {"argmax"} else {}
    out = {}
    for split, dataset in splits.items():
        metrics = {d: StreamingMeanIoU(len(id2label), id2label, ignore_index, reward=reward) for d in decoders}
        for logits, labels in _cache(model, dataset, batch_size):
            labels = torch.where(labels == len(id2label), ignore_index, labels.long())  # the cache's void is C
            for name, metric in metrics.items():
                metric.update_masks(decode(name, logits, tuple(labels.shape[-2:]), fitted), labels)
        out[split] = {name: metric.compute() for name, metric in metrics.items()}
    out["fitted"] = {name: value.tolist() for name, value in fitted.items()}
    return out
