"""Scoring and calibrating a model as the commands do: the streaming metrics over a split, with a progress bar;
exact per-class offsets fitted on a split and folded into the model.

Example::

    before = evaluate(model, splits.eval, splits.id2label).compute()["mean_iou"]
    calibrate_model(model, splits.train, "miou", split="train")
    after = evaluate(model, splits.eval, splits.id2label).compute()["mean_iou"]
"""

from __future__ import annotations

import math

import torch

from ..calibrate import Calibration, collect_logits, default_pixel_sample, fit_offsets, fold_offsets
from ..data.transforms import collate_segmentation
from ..decoders import decode
from ..metrics import StreamingMeanIoU
from ..modeling import predict_batches
from ..rewards import Reward, get_reward
from .arguments import UsageError


@torch.no_grad()
def evaluate(
    model,
    dataset,
    id2label: dict[int, str],
    *,
    batch_size: int = 8,
    ignore_index: int = 255,
    reward: Reward | None = None,
    metric_options: dict | None = None,
    decoder: str = "argmax",
    desc: str = "evaluate",
    progress: bool = True,
) -> StreamingMeanIoU:
    """The metrics of ``model`` (in eval mode, on its own device) over ``dataset``, with a progress bar.

    ``metric_options`` go to :class:`StreamingMeanIoU`; ``decoder``: ``"argmax"`` or ``"rankseg"``
    (:mod:`hf_reward.decoders`; offsets are folded into the model by :func:`calibrate_model`).
    """
    if decoder not in ("argmax", "rankseg"):
        raise UsageError(f"decoder {decoder!r}: evaluate with 'argmax' or 'rankseg' (offsets: scripts/calibrate.py)")
    metric = StreamingMeanIoU(len(id2label), id2label, ignore_index, reward=reward, **(metric_options or {}))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    for i, (logits, labels) in enumerate(predict_batches(model, loader, desc=desc, progress=progress)):
        if not logits.isfinite().all():
            raise UsageError(
                f"{desc}: the model's logits are not finite (NaN or inf) on batch {i}: its weights are broken; "
                "an argmax of them would score a meaningless number"
            )
        labels = labels.to(logits.device)
        metric.update_masks(decode(decoder, logits, tuple(labels.shape[-2:]), {}), labels)
    if metric.confusion is None:
        raise UsageError(f"{desc}: the evaluation split yields no image (check --eval_split and the data's source)")
    return metric


def calibrate_model(
    model,
    dataset,
    reward: str | Reward,
    *,
    split: str,
    batch_size: int = 8,
    ignore_index: int = 255,
    cache_dir: str | None = None,
    progress: bool = True,
    num_images: int | None = None,
    pixels_per_image: int | None = None,
    **fit_kwargs,
) -> Calibration:
    """Fit exact per-class offsets for ``reward`` on ``dataset`` (as evaluation sees it) and fold them into ``model``.

    ``split`` names the data in the model's calibration record; ``num_images``: how many a stream holds
    (for the progress bar; a map-style dataset knows). ``pixels_per_image``: fit on a sample of that many
    label pixels per image; 0: on every pixel; ``None``: every pixel unless the split is large
    (:func:`hf_reward.calibrate.default_pixel_sample`). ``fit_kwargs`` go to
    :func:`hf_reward.calibrate.fit_offsets` (``step``, ``max_offset``, ``max_sweeps``); the fit runs on the
    model's device unless ``device`` says otherwise.
    """
    reward = get_reward(reward) if isinstance(reward, str) else reward
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    num_images = len(dataset) if hasattr(dataset, "__len__") else num_images
    total = None if num_images is None else math.ceil(num_images / batch_size)
    cache = collect_logits(
        model, loader, cache_dir=cache_dir, ignore_index=ignore_index, progress=progress, total=total
    )
    if len(cache) == 0:
        raise UsageError(f"the calibration split {split!r} yields no image (check its name and the data's source)")
    fit_kwargs.setdefault("device", next(model.parameters()).device)
    if pixels_per_image is None:
        pixels_per_image = default_pixel_sample(cache)
    calibration = fit_offsets(
        cache,
        reward,
        ignore_index=ignore_index,
        progress=progress,
        pixels_per_image=pixels_per_image or None,
        **fit_kwargs,
    )
    fold_offsets(model, calibration, split=f"{split} ({len(cache)} images)")
    return calibration
