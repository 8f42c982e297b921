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
  each image's probabilities for its own expected IoU, no fitting (the ``rankseg`` package), with
  no class pruning and at a quarter of the labels' size, 90 pixels at least (:func:`rankseg_masks`).

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
import torch.nn.functional as F
from tqdm.auto import tqdm

from .calibrate import LogitCache, PixelSample, collect_logits, default_pixel_sample, fit_offsets
from .data.transforms import collate_segmentation
from .decisions import decide, upsample_logits
from .metrics import StreamingMeanIoU
from .rewards import Reward

DECODERS = ("argmax", "offsets", "image_offsets", "rankseg")
# The shortest side RankSEG decodes at (rankseg_masks): the smallest measured to lose under 0.1 point (CamVid's 90).
RANKSEG_MIN_SIDE = 90
# The config.json key of the decoder a model was shipped with (record_decoder): offsets are folded into its bias.
DECODER_KEY = "hf_reward_decoder"


def decode(name: str, logits: torch.Tensor, size: tuple[int, int], fitted: dict) -> torch.Tensor:
    """Masks ``(B, H, W)`` of decoder ``name`` from logits ``(B, C, h, w)``, with its ``fitted`` parameters."""
    if name == "argmax":
        return decide(logits, size)
    if name in ("offsets", "image_offsets"):
        return decide(logits, size, fitted[name])
    if name == "rankseg":
        return rankseg_masks(logits, size)
    raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")


def rankseg_masks(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RankSEG's masks ``(B, H, W)``: each image's probabilities decoded for its expected IoU (solver RMA).

    Two settings, measured (``scripts/bench_rankseg.py``, docs/benchmarks.md): ``pruning_prob=0``
    (the package's default, 0.5, never predicts a class whose largest probability in the image is at
    most 0.5: +4.2 points of mIoU^I on CamVid validation, +2.0 on the toy streets, without it), and
    decoding at a quarter of the labels' size, but no fewer than :data:`RANKSEG_MIN_SIDE` pixels on the
    short side (nor more than the labels'), the mask then resized by nearest neighbour: on CamVid's
    360 x 480 labels (decoded at 90 x 120) 16 times faster than at full size for -0.03 mIoU^I; the toy
    streets' 64 x 64 labels lose 4.1 points at 16 x 16 and 1.3 at 32 x 32, and keep their size.
    """
    from rankseg.functional import rankseg  # imported when used: most runs never decode with it

    scale = min(1.0, max(0.25, RANKSEG_MIN_SIDE / min(size)))
    small = (round(size[0] * scale), round(size[1] * scale))
    probs = upsample_logits(logits.float(), small).softmax(1)
    masks = rankseg(probs, metric="IoU", output_mode="multiclass", solver="RMA", pruning_prob=0.0)
    if small != tuple(size):
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return masks


def record_decoder(model, name: str) -> None:
    """Record in ``model.config`` (so in ``config.json``) the decoder its masks need: ``"argmax"``, ``"offsets"`` or
    ``"image_offsets"`` (already folded into the classifier bias: :func:`hf_reward.calibrate.fold_offsets`), or
    ``"rankseg"``. :func:`segment` reads it."""
    if name not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")
    setattr(model.config, DECODER_KEY, name)


def recorded_decoder(config) -> str:
    """How a model's logits become masks, as :func:`record_decoder` left it: ``"argmax"`` (offsets, when there are
    any, are in the bias) or ``"rankseg"``. A model without a record decodes by the argmax."""
    return "rankseg" if getattr(config, DECODER_KEY, "argmax") == "rankseg" else "argmax"


@torch.no_grad()
def segment(model, pixel_values: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Masks ``(B, H, W)`` of ``model`` for ``pixel_values (B, 3, H, W)``, decoded as its config records.

    ``size``: the masks' size (default the images'; SegFormer predicts at a quarter of it and the
    logits are resized bilinearly). A model hf-reward shipped decodes as it was chosen to on its
    dev split (:func:`record_decoder`); any other by the argmax.

    Example::

        >>> from transformers import SegformerConfig, SegformerForSemanticSegmentation
        >>> model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=3, hidden_sizes=[8, 8, 8, 8],
        ...     decoder_hidden_size=8, depths=[1, 1, 1, 1])).eval()
        >>> segment(model, torch.rand(2, 3, 32, 48)).shape
        torch.Size([2, 32, 48])
    """
    was_training = model.training
    model.eval()
    try:
        logits = model(pixel_values=pixel_values.to(next(model.parameters()).device)).logits
    finally:
        model.train(was_training)
    return decode(recorded_decoder(model.config), logits, tuple(size or pixel_values.shape[-2:]), {})


def fit_decoders(
    cache: LogitCache,
    decoders: Sequence[str],
    reward: Reward,
    device: str | torch.device = "cpu",
    progress: bool = False,
    pixels_per_image: int | None = None,
) -> dict:
    """The parameters of each decoder in ``decoders`` that has some, fitted on ``cache`` (computed on ``device``).

    ``pixels_per_image``: the offsets are fitted on one sample of that many label pixels per image (0: every
    pixel; ``None``: every pixel unless the split is large, :func:`hf_reward.calibrate.default_pixel_sample`).
    """
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"decoders must come from {DECODERS}, got {unknown}")
    if pixels_per_image is None:
        pixels_per_image = default_pixel_sample(cache)
    if pixels_per_image and {"offsets", "image_offsets"} & set(decoders):
        cache = PixelSample(cache, pixels_per_image, progress=progress)
    fitted = {}
    for name in ("offsets", "image_offsets"):
        if name in decoders:
            objective, per_image = offsets_objective(name, reward)
            fitted[name] = fit_offsets(cache, objective, per_image=per_image, device=device, progress=progress).offsets
    return fitted


def offsets_objective(name: str, reward: str | Reward) -> tuple[str | Reward, bool]:
    """What decoder ``name``'s offsets maximise: ``(reward, per_image)`` for :func:`~hf_reward.calibrate.fit_offsets`.

    ``offsets``: ``reward`` of the split's confusion matrix; ``image_offsets``: the mean over images of mIoU^I.
    """
    return ("miou_gt", True) if name == "image_offsets" else (reward, False)


def _cache(model, dataset, batch_size: int, progress: bool) -> LogitCache:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_segmentation)
    return collect_logits(model, loader, progress=progress)


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
    progress: bool = False,
    pixels_per_image: int | None = None,
    **metric_options,
) -> dict:
    """``{split: {decoder: metrics}, "fitted": {decoder: parameters}}`` for ``model`` on each of ``splits``.

    ``offsets`` are fitted on ``fit_split`` for ``reward``. Every decoder is scored by a
    :class:`~hf_reward.metrics.StreamingMeanIoU` with ``metric_options`` (``per_image``,
    ``boundary_tolerances``, ``thing_classes``). ``image_records``: also ``"images": {split:
    {decoder: records}}``, each metric's per-image records (:meth:`StreamingMeanIoU.image_records`),
    for a bootstrap over images. ``progress``: bars over the model's passes, the fits and the decoding.
    ``pixels_per_image``: of the offsets' fits, as :func:`fit_decoders`.
    """
    device = next(model.parameters()).device
    fitted = (
        fit_decoders(
            _cache(model, fit_split, batch_size, progress), decoders, reward, device, progress, pixels_per_image
        )
        if set(decoders) - {"argmax"}
        else {}
    )
    out = {}
    for split, dataset in splits.items():
        metrics = {
            d: StreamingMeanIoU(len(id2label), id2label, ignore_index, reward=reward, **metric_options)
            for d in decoders
        }
        cache = _cache(model, dataset, batch_size, progress)
        for logits, labels in tqdm(cache, desc=f"decode {split}", unit="batch", disable=not progress):
            labels = torch.where(labels == len(id2label), ignore_index, labels.long())  # the cache's void is C
            for name, metric in metrics.items():
                metric.update_masks(decode(name, logits, tuple(labels.shape[-2:]), fitted), labels)
        out[split] = {name: metric.compute() for name, metric in metrics.items()}
        if image_records:
            out.setdefault("images", {})[split] = {name: metric.image_records() for name, metric in metrics.items()}
    out["fitted"] = {name: value.tolist() for name, value in fitted.items()}
    return out
