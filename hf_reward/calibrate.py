"""Exact per-class logit offsets that maximise a dataset-level metric, folded into the classifier bias.

A model trained by cross-entropy under-predicts rare classes; adding one offset per class to its
logits before the argmax fixes much of that, with no gradient and no training (on CamVid, 11
offsets fitted on train beat every reward-tuned model of the project's study). The metric is any
reward of the confusion counts (:mod:`hf_reward.rewards`), scored over the whole split at label
resolution, as evaluation does:

    pred = argmax_c(upsample(z)[c] + b[c])     z (B, C, h, w) logits, upsample: bilinear to (H, W)

Shapes: B images, C classes, h x w logits, H x W labels, N = H * W pixels, K grid values.
Bilinear upsampling preserves constants, so once ``b`` is added to the classifier bias
(:func:`fold_offsets`) the model predicts the same masks, up to float rounding (the offset is then
added before the upsampling), and the calibrated model is a plain ``SegformerForSemanticSegmentation``
(or ``UperNetForSemanticSegmentation``: the main head's classifier; the auxiliary head is for training only).

Algorithm: coordinate ascent over classes on the grid ``x_k = k * step``, ``|x_k| <= max_offset``
(0 included), starting from b = 0. For class c, with the other offsets fixed, let
``y = upsample(z) + b``, ``m = max_{c' != c} y[c']`` and ``a`` its argmax (the lowest index on
ties, as ``torch.argmax``). A pixel predicts c at candidate x iff ``u + x > m``, or ``u + x == m``
and ``c < a``, where ``u = upsample(z)[c]``; otherwise it predicts ``a``. That is monotone in x, so
each pixel has a first grid index at which it switches to c (its threshold ``m - u`` divided by the
step; the pixels whose threshold lies within float32 rounding of a grid value are placed again with
the same float32 sums the argmax computes, so that ties and rounding agree with the brute force).
One histogram of that index per (target, runner-up a), (C, C, K + 1), then gives the confusion
matrix, hence the metric, of every candidate at once: at candidate k the pixels whose index is
<= k sit in ``cm[t, c]``, the others in ``cm[t, a]``. b_c moves to the best candidate only if that
beats its current value (to the nearest one among equal bests), so the metric never decreases.
Classes are visited in order, a sweep visits each once, and the fit stops after a sweep that
changes nothing or after ``max_sweeps``; as class c's histogram does not depend on b_c, a class
is skipped when no other offset has moved since its last visit, which spares most of the
confirming sweep. Thresholds beyond the grid fall in its end bins; an offset that ends on the
grid's edge is warned about (the optimum may lie beyond it).

Cost and memory: one pass over the split per class visited, each upsampling every image again
(each channel on its own, :func:`~hf_reward.decisions.upsample_logits`, 3 times faster on a CPU than
all channels at once), on ``device``: the model's GPU makes a pass take seconds.
The logits are computed once and cached at the model's resolution in fp16 (:class:`LogitCache`,
in RAM or in two files on disk), with the labels in uint8: upsampled logits would be 16 times
larger (38 GB for Cityscapes val, 500 x 19 x 1024 x 2048 in fp16), and running the model again
every pass costs far more than upsampling. Each pixel's logits are stored minus their maximum, so
the classes that compete for it sit near 0, where fp16 is finest: the rounding is relative to the
margins between classes, not to the logits. The metrics reported are those of the cached logits;
they differ from the model's float32 scores only at pixels whose margin fp16 cannot resolve.
Working memory is a few copies of one item's upsampled logits (B, C, H, W) float32; nothing grows
with the number of images. ``scripts/bench_calibrate.py`` measures time and memory (docs/benchmarks.md,
"Calibration: time and memory").

Which split: fit on train (or a held-out dev split) and report on validation. Offsets fitted on
the split you report are tuned on its own labels, and the score is then optimistic.

Example::

    loader = DataLoader(train_ds, batch_size=8, collate_fn=collate_segmentation)
    cache = collect_logits(model, loader)                    # or cache_dir="/scratch" for big splits
    result = fit_offsets(cache, "miou")
    result.metric_before, result.metric_after, result.history
    fold_offsets(model, result, split="train")              # bias += offsets, record in model.config
    model.save_pretrained("runs/calibrated")                 # config.json holds "calibration"
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .decisions import upsample_logits
from .metrics import scores_from_confusion
from .modeling import predict_batches
from .rewards import Reward, check_labels, check_reward, class_counts, counted_labels, get_reward

Batch = tuple[torch.Tensor, torch.Tensor]  # logits (B, C, h, w), labels (B, H, W)

# The pixel sample's size where a split is too large for the exact fit to be quick: it lost at most 0.05 points of
# the exact fit's full-resolution score in scripts/bench_calibrate.py (docs/benchmarks.md); EXACT_MAX_PIXELS: the
# label pixels of a split up to which the exact fit stays the default (CamVid train at 360 x 480: 63M).
DEFAULT_PIXELS_PER_IMAGE = 65536
EXACT_MAX_PIXELS = 100_000_000


class LogitCache:
    """Per-image logits (C, h, w) in fp16 and labels (H, W), in RAM or, with ``directory``, on disk.

    Iterating yields ``(logits (1, C, h, w) float16, labels (1, H, W))`` per image, in the order
    added, as :func:`fit_offsets` reads them; images may differ in size. Labels are stored as
    class indices with ``ignore_index`` set to C; a value that is neither a class nor
    ``ignore_index`` is refused, naming the image, as training and evaluation refuse it. On disk
    the files live in a temporary directory under ``directory``, removed with the cache, and each
    pass reads them back one image at a time (plain reads, not a memory map, so that pages of the
    whole split never count in the process's memory).
    """

    def __init__(self, num_classes: int, directory: str | Path | None = None):
        self.num_classes = num_classes
        self.label_dtype = np.uint8 if num_classes < 255 else np.int16
        self._shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._items: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._dir = None if directory is None else tempfile.TemporaryDirectory(dir=directory, prefix="logits-")

    def _path(self, name: str) -> Path:
        return Path(self._dir.name) / name

    def append(self, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> None:
        """Add one image: logits ``(C, h, w)`` (any float dtype), labels ``(H, W)`` integer."""
        c = self.num_classes
        if logits.dim() != 3 or logits.shape[0] != c or labels.dim() != 2:
            raise ValueError(
                f"expected logits (C={c}, h, w) and labels (H, W), got {tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        logits = logits.detach().float().cpu()
        logits = (logits - logits.amax(0, keepdim=True)).half()
        if not logits.isfinite().all():
            raise ValueError("logits are not finite (NaN, or a margin beyond fp16's 65504)")
        labels = labels.cpu().long()
        check_labels(labels, c, ignore_index, f"image {len(self)} of the calibration split")
        labels = torch.where(labels == ignore_index, c, labels)
        logits, labels = logits.numpy(), labels.numpy().astype(self.label_dtype)
        self._shapes.append((logits.shape, labels.shape))
        if self._dir is None:
            self._items.append((torch.from_numpy(logits), torch.from_numpy(labels)))
        else:
            with open(self._path("logits.bin"), "ab") as f:
                f.write(logits.tobytes())
            with open(self._path("labels.bin"), "ab") as f:
                f.write(labels.tobytes())

    def __len__(self) -> int:
        return len(self._shapes)

    @property
    def label_pixels(self) -> int:
        """The label pixels of every image, void included."""
        return sum(int(np.prod(label_shape)) for _, label_shape in self._shapes)

    def __iter__(self):
        if self._dir is None:
            for logits, labels in self._items:
                yield logits[None], labels[None]
            return
        with open(self._path("logits.bin"), "rb") as fz, open(self._path("labels.bin"), "rb") as fy:
            for logit_shape, label_shape in self._shapes:
                logits = np.fromfile(fz, np.float16, int(np.prod(logit_shape))).reshape(logit_shape)
                labels = np.fromfile(fy, self.label_dtype, int(np.prod(label_shape))).reshape(label_shape)
                yield torch.from_numpy(logits)[None], torch.from_numpy(labels)[None]


@torch.inference_mode()
def collect_logits(
    model: torch.nn.Module,
    batches: Iterable[dict],
    *,
    cache_dir: str | Path | None = None,
    ignore_index: int = 255,
    progress: bool = True,
    total: int | None = None,
) -> LogitCache:
    """Run ``model`` (in eval mode) over ``batches`` and cache its logits and the labels.

    ``batches`` yields ``{"pixel_values": (B, 3, H', W'), "labels": (B, H, W)}`` (a DataLoader
    with :func:`hf_reward.data.collate_segmentation`) or single examples without the B axis.
    Inputs go to the model's device; ``total``: the batches, for the progress bar of a stream that does not
    know its length. ``cache_dir=None`` keeps the cache in RAM (2 bytes per
    logit at model resolution plus 1 per label pixel: 20 MB for CamVid train at 128 x 176, 3.5 GB
    for Cityscapes val at full size); otherwise it goes to files under ``cache_dir``.
    """
    cache = LogitCache(model.config.num_labels, cache_dir)
    for logits, labels in predict_batches(model, batches, progress=progress, total=total):
        for z, y in zip(logits, labels):
            cache.append(z, y, ignore_index)
    return cache


def bilinear_at(logits: torch.Tensor, size: tuple[int, int], points: torch.Tensor) -> torch.Tensor:
    """``logits (C, h, w)`` resized bilinearly to ``size = (H, W)``, at ``points (N,)`` only: ``(C, N)`` float32.

    ``points`` are flat indices into ``H x W``. The same values as ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` (:func:`~hf_reward.decisions.upsample_logits`) at those pixels, up to float
    rounding, from a gather of each point's 4 neighbours instead of the full ``(C, H, W)`` resize.
    """
    (height, width), (_, h, w) = size, logits.shape
    rows, cols = points // width, points % width
    weights, corners = [], []
    for dst, out_size, in_size in ((rows, height, h), (cols, width, w)):
        # align_corners=False: source coordinate (dst + 0.5) * in / out - 0.5, clamped at 0
        src = ((dst.double() + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0).float()
        low = src.long().clamp_(max=in_size - 1)
        high = (low + 1).clamp_(max=in_size - 1)
        frac = src - low
        weights.append((1 - frac, frac))
        corners.append((low, high))
    flat = logits.float().reshape(len(logits), -1)
    (r0, r1), (c0, c1) = corners
    (wr0, wr1), (wc0, wc1) = weights
    top = wc0 * flat[:, r0 * w + c0] + wc1 * flat[:, r0 * w + c1]
    bottom = wc0 * flat[:, r1 * w + c0] + wc1 * flat[:, r1 * w + c1]
    return wr0 * top + wr1 * bottom


def sampled_points(size: tuple[int, int], pixels_per_image: int, seed: int, image: int) -> torch.Tensor:
    """The flat indices ``(n,)`` (sorted) of image ``image``'s pixel sample: ``n = min(pixels_per_image, H * W)``
    distinct pixels drawn uniformly, the same for the same ``(seed, image)``; every pixel once if n = H * W."""
    total = size[0] * size[1]
    if pixels_per_image >= total:
        return torch.arange(total)
    rng = np.random.default_rng([seed, image])
    return torch.from_numpy(np.sort(rng.choice(total, pixels_per_image, replace=False)))


class PixelSample:
    """A seeded random subset of every image's label pixels, with the logits bilinearly interpolated there.

    Built once from a :class:`LogitCache` (or any re-iterable of ``(logits (B, C, h, w), labels (B, H, W))``),
    then read by :func:`fit_offsets` on every pass instead of the full-size data: each sampled pixel costs
    ``2 C + 1`` bytes (its logits in fp16, minus their maximum as :class:`LogitCache` stores them, and its
    label), and a pass handles ``pixels_per_image`` pixels per image instead of ``H x W``. Iterating yields
    ``(logits (B, C, 1, n) float16, labels (B, 1, n))`` for groups of images with the same ``n``;
    :attr:`weights` gives each group's images ``H W / n``, the pixels each sampled one stands for, so that the
    sampled confusion counts estimate the full split's (exactly them when ``n = H W``).

    Example::

        sample = PixelSample(cache, pixels_per_image=16384, seed=0)
        fit_offsets(sample, "miou").offsets, fit_offsets(sample, "miou_gt", per_image=True).offsets
    """

    def __init__(self, data: Iterable[Batch], pixels_per_image: int, *, seed: int = 0, progress: bool = False):
        if pixels_per_image < 1:
            raise ValueError(f"pixels_per_image must be at least 1, got {pixels_per_image}")
        self.pixels_per_image, self.seed = pixels_per_image, seed
        self._groups: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weights: list[torch.Tensor] = []
        pending: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        images = 0
        total = len(data) if hasattr(data, "__len__") else None
        for logits, labels in tqdm(data, total=total, desc="sample pixels", disable=not progress):
            size = tuple(labels.shape[-2:])
            for z, y in zip(logits, labels):
                points = sampled_points(size, pixels_per_image, seed, images)
                images += 1
                values = bilinear_at(z, size, points)
                values = (values - values.amax(0, keepdim=True)).half()
                if pending and (len(pending) * len(points) >= 2**20 or pending[-1][0].shape[1] != len(points)):
                    self._flush(pending)
                pending.append((values, y.reshape(-1)[points], size[0] * size[1] / len(points)))
        self._flush(pending)
        if not images:
            raise ValueError("data is empty")
        self.images = images

    def _flush(self, pending: list) -> None:
        if pending:
            self._groups.append(
                (
                    torch.stack([v for v, _, _ in pending]).unsqueeze(2),
                    torch.stack([y for _, y, _ in pending]).unsqueeze(1),
                )
            )
            self.weights.append(torch.tensor([w for _, _, w in pending], dtype=torch.float64))
            pending.clear()

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self):
        return iter(self._groups)


def default_pixel_sample(cache: LogitCache) -> int | None:
    """:data:`DEFAULT_PIXELS_PER_IMAGE` where ``cache`` holds more than :data:`EXACT_MAX_PIXELS` label pixels,
    else ``None`` (the exact fit)."""
    return DEFAULT_PIXELS_PER_IMAGE if cache.label_pixels > EXACT_MAX_PIXELS else None


@dataclass
class Calibration:
    """What :func:`fit_offsets` found.

    ``offsets`` (C,) float32, grid values; ``history``: the metric after each sweep; confusion
    matrices (C, C) long ``cm[target, pred]`` over the split, without and with the offsets (float64
    estimates of them when fitted on a pixel sample).
    ``per_image``: the metric is the mean over images of each image's reward. ``pixels_per_image``:
    the size of the pixel sample it was fitted on (``None``: every pixel).
    """

    offsets: torch.Tensor
    reward: str
    metric_before: float
    metric_after: float
    history: list[float]
    converged: bool
    confusion_before: torch.Tensor
    confusion_after: torch.Tensor
    step: float
    max_offset: float
    per_image: bool = False
    pixels_per_image: int | None = None

    @property
    def iou_before(self) -> np.ndarray:
        """Per-class IoU (C,) without offsets; NaN where a class is in neither target nor prediction."""
        return scores_from_confusion(self.confusion_before)["iou"]

    @property
    def iou_after(self) -> np.ndarray:
        """Per-class IoU (C,) with the offsets."""
        return scores_from_confusion(self.confusion_after)["iou"]


def _reward_name(reward: Reward) -> str:
    """``miou``, or ``miou(class_weights=[...])`` for a reward from :func:`get_reward` with bound arguments."""
    if isinstance(reward, functools.partial):
        args = ", ".join(f"{k}={v.tolist() if isinstance(v, torch.Tensor) else v}" for k, v in reward.keywords.items())
        return f"{_reward_name(reward.func)}({args})"
    return getattr(reward, "__name__", type(reward).__name__)


def _grid(step: float, max_offset: float) -> torch.Tensor:
    n = int(round(max_offset / step))
    return (torch.arange(-n, n + 1, dtype=torch.float64) * step).float()


def _first_winning_index(u: torch.Tensor, m: torch.Tensor, c_first: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The first grid index k at which ``u + grid[k]`` beats ``m`` (ties won where ``c_first``), K if none (long).

    ``u``, ``m`` float32 and ``c_first`` bool, of one shape. The index comes from the threshold
    ``(m - u - grid[0]) / step``; only the pairs whose threshold lies within float32 rounding of a
    grid value are placed again by the exact predicate, with the sums the argmax computes.
    """
    k_max, start, step = len(grid), float(grid[0]), float(grid[1] - grid[0])
    q = (m - u).sub_(start).div_(step)
    k = q.floor().add_(1).clamp_(0, k_max).long()
    # The rounding of q, and of u + grid[k] against m, is a few ulps of the largest magnitude involved.
    scale = float(u.abs().amax() + m.abs().amax() + grid.abs().max() + 1)
    near = (q - q.round()).abs_() <= 2.0**-18 * (scale / step + k_max)
    if not near.any():
        return k
    near = near.nonzero(as_tuple=True)
    u, m, c_first, k_near = u[near], m[near], c_first[near], k[near]
    candidates = torch.cat([grid, grid.new_tensor([torch.inf])])  # k = K always "wins"

    def wins(index):
        s = u + candidates[index]
        return (s > m) | ((s == m) & c_first)

    while True:
        down = (k_near > 0) & wins((k_near - 1).clamp(min=0))
        up = (k_near < k_max) & ~wins(k_near)
        if not (down.any() or up.any()):
            break
        k_near = k_near - down.long() + up.long()
    k[near] = k_near
    return k


def _switch_histogram(
    logits: torch.Tensor,
    labels: torch.Tensor,
    offsets: torch.Tensor,
    c: int,
    grid: torch.Tensor,
    ignore_index: int,
    per_image: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel counts ``(C, C, K + 1)`` [target, runner-up a, first grid index at which the pixel predicts c].

    ``logits (B, C, h, w)``, ``labels (B, H, W)``, ``offsets (C,)`` float32, ``grid (K,)`` float32, on
    one device. Index K: the pixel never predicts c on the grid. Pixels that do not count are dropped.
    ``per_image``: one histogram per image, ``(B, C, C, K + 1)``. ``weights (B,)`` float64: each of an
    image's pixels counts that much (a :class:`PixelSample`'s), and the counts are float64.
    """
    num_classes, k_max = logits.shape[1], len(grid)
    y = upsample_logits(logits.float(), tuple(labels.shape[-2:]))
    if y.data_ptr() == logits.data_ptr():  # nothing to resize or convert: y is the caller's tensor
        y = y.clone()
    y = y.flatten(2)  # (B, C, N)
    u_c = y[:, c].clone()
    # In place: a fresh (B, C, N) buffer per pass costs more than the addition (page faults).
    y.add_(offsets.view(1, -1, 1))
    y[:, c] = -torch.inf
    m, a = y.max(1)  # (B, N): the first index on ties, as argmax
    del y
    k = _first_winning_index(u_c, m, c < a, grid)
    t = labels.reshape(k.shape).long()
    counted = counted_labels(t, num_classes, ignore_index)
    bins = num_classes * num_classes * (k_max + 1)  # per image, plus one that collects what does not count
    index = torch.where(counted, (t * num_classes + a) * (k_max + 1) + k, bins)
    images = len(index) if per_image else 1
    index = index + torch.arange(images, device=index.device).view(-1, 1) * (bins + 1)
    if weights is not None:
        weights = weights.to(index.device).view(-1, 1).expand(index.shape).reshape(-1)
    hist = torch.bincount(index.reshape(-1), weights, minlength=images * (bins + 1)).view(images, bins + 1)[:, :bins]
    hist = hist.view(images, num_classes, num_classes, k_max + 1)
    return hist if per_image else hist[0]


def _candidate_confusions(hist: torch.Tensor, c: int) -> torch.Tensor:
    """Confusion matrices ``(..., K, C, C)`` [candidate, target, pred] of every grid value of class c's offset,
    from histograms ``(..., C, C, K + 1)``."""
    upto = hist.cumsum(-1)[..., :-1]  # (..., C, C, K): pixels that predict c at candidate k, by (target, a)
    cm = hist.sum(-1, keepdim=True) - upto  # the others keep predicting a
    cm[..., c, :] = upto.sum(-2)  # (hist[..., c, :] is 0: a is never c)
    return cm.movedim(-1, -3)


@torch.no_grad()
def fit_offsets(
    data: Iterable[Batch],
    reward: str | Reward = "miou",
    *,
    ignore_index: int = 255,
    step: float = 0.05,
    max_offset: float = 5.0,
    max_sweeps: int = 5,
    per_image: bool = False,
    pixels_per_image: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Calibration:
    """Per-class offsets ``b (C,)`` that maximise ``reward`` of argmax(upsample(logits) + b) over ``data``.

    ``data``: a re-iterable (a :class:`LogitCache`, a list) of ``(logits (B, C, h, w), labels (B, H, W))``;
    it is read once per class and sweep. ``reward``: a name in :data:`hf_reward.rewards.REWARDS` or a
    function ``(tp, gt, pd) -> (...)``. Labels ``ignore_index`` or outside [0, C) do not count.
    See the module docstring for the algorithm; the offsets are a coordinate-wise optimum on the
    grid ``k * step``, ``|k * step| <= max_offset``. ``per_image``: maximise the mean over images
    (those with a counted pixel) of each image's reward, e.g. ``"miou_gt"`` for mIoU^I, from one
    histogram per image. ``device``: where the passes compute; each item is moved there as it is
    read (``"cuda"``: the model's GPU, for a large split).

    ``pixels_per_image``: fit on a seeded random subset of that many label pixels per image
    (:class:`PixelSample`, drawn with ``seed``; ``data`` may also be a ``PixelSample`` already) instead
    of every pixel: the passes then read a few bytes per sampled pixel and never resize a full-size
    tensor. The offsets are exact for the sample; the confusion matrices reported estimate the full
    split's counts (each sampled pixel weighs ``H W / n``), and ``metric_before`` / ``metric_after`` are
    the sample's. ``scripts/bench_calibrate.py`` measures what that loses on the full split.
    """
    if max_sweeps < 1 or step <= 0 or max_offset < step:
        raise ValueError(f"need max_sweeps >= 1 and 0 < step <= max_offset, got {max_sweeps}, {step}, {max_offset}")
    if iter(data) is data:
        raise TypeError("data is read once per class and sweep: pass a LogitCache or a list, not an iterator")
    if pixels_per_image is not None and not isinstance(data, PixelSample):
        data = PixelSample(data, pixels_per_image, seed=seed, progress=progress)
    item_weights = data.weights if isinstance(data, PixelSample) else None
    name = reward if isinstance(reward, str) else _reward_name(reward)
    reward = get_reward(reward) if isinstance(reward, str) else reward
    first = next(iter(data), None)
    if first is None:
        raise ValueError("data is empty")
    num_classes = first[0].shape[1]
    if num_classes < 2:
        raise ValueError(f"calibration needs at least 2 classes, got {num_classes}")
    check_reward(reward, num_classes)
    device = torch.device(device)
    grid = _grid(step, max_offset)
    grid_on_device = grid.to(device)
    current = torch.full((num_classes,), len(grid) // 2)  # each b_c as an index into the grid: 0 to start
    items = len(data) if hasattr(data, "__len__") else None
    # One bar per sweep, over its class passes; a class that needs no visit fills its share at once.
    bar = tqdm(
        total=None if items is None else items * num_classes,
        desc="calibrate, sweep 1",
        unit="img" if isinstance(data, LogitCache) else "batch",
        disable=not progress,
    )
    # Class c's histogram depends on the other offsets only: a class is visited again only once one of
    # them has moved since, which spares most of the sweep that confirms convergence.
    stale = torch.ones(num_classes, dtype=torch.bool)
    history, confusion_before, converged = [], None, False
    for sweep in range(max_sweeps):
        if sweep:
            bar.reset()
            bar.set_description(f"calibrate, sweep {sweep + 1}")
        for c in range(num_classes):
            if not stale[c]:
                bar.update(items or 0)
                continue
            offsets = grid[current].to(device)
            hist, total, images = 0, 0, 0
            for i, (logits, labels) in enumerate(data):
                logits, labels = logits.to(device), labels.to(device)
                if not logits.isfinite().all():
                    raise ValueError("logits are not finite")
                weights = None if item_weights is None or (item_weights[i] == 1).all() else item_weights[i]
                hist_item = _switch_histogram(
                    logits, labels, offsets, c, grid_on_device, ignore_index, per_image, weights
                )
                if per_image:  # (B, C, C, K + 1): each image's reward at every candidate, summed over images
                    counts = class_counts(_candidate_confusions(hist_item, c))  # (B, K, C) each
                    counted = counts[1][:, 0].sum(-1) > 0
                    total = total + reward(*counts)[counted].sum(0)
                    images += int(counted.sum())
                    hist_item = hist_item.sum(0)
                hist = hist + hist_item
                bar.update()
            cms = _candidate_confusions(hist, c).cpu()
            if cms[0].sum() == 0:  # a mean over no image or pixel is no score of 0
                raise ValueError(
                    f"data holds no counted pixel: every label is ignore_index ({ignore_index}) or outside "
                    f"[0, {num_classes}), so there is nothing to fit offsets on"
                )
            scores = (total / max(images, 1) if per_image else reward(*class_counts(cms))).cpu()  # (K,)
            if not scores.isfinite().all():
                bad = grid[~scores.isfinite()][:3].tolist()
                raise ValueError(
                    f"the reward {name!r} is not finite for class {c}'s offset at {bad}...: its counts there are "
                    "a valid confusion matrix, so the reward must score it (select with torch.where where a "
                    "denominator can be 0)"
                )
            if confusion_before is None:
                confusion_before, metric_before = cms[current[c]], float(scores[current[c]])
            best = scores.max()
            stale[c] = False
            if best > scores[current[c]]:
                ties = (scores == best).nonzero()[:, 0]
                current[c] = ties[(ties - current[c]).abs().argmin()]
                stale[:c] = stale[c + 1 :] = True
            metric, confusion = float(scores[current[c]]), cms[current[c]]
            bar.set_postfix(sweep=sweep + 1, cls=c, metric=f"{metric:.4f}")
        history.append(metric)
        if not stale.any():
            converged = True
            break
    bar.close()
    offsets = grid[current]
    edge = (current == 0) | (current == len(grid) - 1)
    if edge.any():
        warnings.warn(
            f"offsets of classes {edge.nonzero()[:, 0].tolist()} are at the grid's edge "
            f"+-{max_offset}: the optimum may lie beyond it (raise max_offset)",
            stacklevel=2,
        )
    return Calibration(
        offsets,
        name,
        metric_before,
        metric,
        history,
        converged,
        confusion_before,
        confusion,
        step,
        max_offset,
        per_image,
        data.pixels_per_image if isinstance(data, PixelSample) else None,
    )


@torch.no_grad()
def fold_offsets(
    model: PreTrainedModel, calibration: Calibration | torch.Tensor, split: str, method: str = ""
) -> None:
    """Add the offsets to ``model.decode_head.classifier.bias`` and record them in the config.

    ``calibration``: a :class:`Calibration` (its offsets, reward, metric before and after, sweeps
    and grid are recorded), or offsets ``(C,)`` found some other way, which ``method`` names (e.g.
    the class priors re-estimated by EM). The record, ``model.config.calibration``, lands in
    ``config.json`` and comes back with ``from_pretrained``: offsets by class name and the ``split``
    they were fitted on, with the rest. Offsets are relative to the bias the model had; folding
    again adds to it and replaces the record.
    """
    offsets = calibration.offsets if isinstance(calibration, Calibration) else calibration
    bias = model.decode_head.classifier.bias
    if bias.shape != offsets.shape:
        raise ValueError(f"the model has {bias.numel()} classes, the offsets {offsets.numel()}")
    bias.add_(offsets.to(bias))
    id2label = model.config.id2label
    record = {"offsets": {str(id2label[i]): float(b) for i, b in enumerate(offsets.tolist())}, "split": split}
    if isinstance(calibration, Calibration):
        record |= {
            "reward": calibration.reward,
            "scope": "image" if calibration.per_image else "dataset",
            "metric_before": calibration.metric_before,
            "metric_after": calibration.metric_after,
            "sweeps": len(calibration.history),
            "converged": calibration.converged,
            "grid": {"step": calibration.step, "max_offset": calibration.max_offset},
            "pixels_per_image": calibration.pixels_per_image or "all",
        }
    else:
        record["method"] = method
    model.config.calibration = record
