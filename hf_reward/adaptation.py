"""Building blocks of domain adaptation: a model trained on a source domain, predicting on a target.

Three pure functions, on logits ``(B, C, h, w)`` at the model's resolution:

- **Prior re-estimation** (:func:`em_priors`, Saerens, Latinne and Decaestecker 2002). A model's
  posteriors p_s(y | x) carry the class priors pi_s of its training data. On a target domain whose
  priors pi_t differ but whose class-conditional densities do not, p_t(y | x) is proportional to
  p_s(y | x) pi_t(y) / pi_s(y), and pi_t is the mean of p_t(y | x) over the target pixels. EM
  alternates the two from pi_t = pi_s; the result needs no target label. Adding
  ``log(pi_t / pi_s)`` to the logits (to the classifier bias, as calibration's offsets are) is the
  corrected model.
- **Class-balanced pseudo-labels** (:func:`class_balanced_thresholds`, :func:`pseudo_labels`;
  CBST, Zou et al. 2018). Self-training keeps, for each class, the most confident ``portion`` of
  the target pixels the model assigns to it, so that frequent classes do not fill the pseudo-labels:
  one confidence threshold per class, the others are void.
- **Acquisition scores** for asking a human to label a few target images: :func:`mean_entropy`
  (pixel entropy), and :func:`expected_miou_shortfall`, how much mIoU the model expects its argmax
  to lose on the image by its own probabilities, ``1 - E_{y ~ p}[mIoU(argmax p, y)]``, estimated
  from masks sampled from its softmax (the reward the tuning optimises, turned into a question: on
  which images is the model least sure of its score?).

Example::

    target_prior, offsets = em_priors(target_cache, source_prior)   # LogitCache of unlabelled target images
    model.decode_head.classifier.bias += offsets
    scores = expected_miou_shortfall(model(pixel_values=pixels).logits, num_samples=8)
    ask = scores.topk(k).indices                                      # the images to label
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .policy import sample_masks
from .rewards import Reward, miou, reward_of_masks


@torch.no_grad()
def mean_posteriors(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The mean softmax ``(C,)`` float64 over every pixel of ``batches`` of ``(logits (B, C, h, w), ...)``:
    the priors a model's posteriors carry, e.g. on its source training split."""
    total, pixels = 0.0, 0
    for logits, *_ in batches:
        probs = logits.double().softmax(1)
        total = total + probs.sum((0, 2, 3))
        pixels += probs.shape[0] * probs.shape[2] * probs.shape[3]
    if not pixels:
        raise ValueError("no logits to average")
    return total / pixels


@torch.no_grad()
def em_priors(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    source_prior: torch.Tensor,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's class priors ``(C,)`` by EM, and the logit offsets ``log(pi_t / pi_s)`` ``(C,)`` float32.

    ``batches``: a re-iterable (a :class:`~hf_reward.calibrate.LogitCache`, a list) of
    ``(logits (B, C, h, w), ...)`` on unlabelled target images, read once per iteration; labels, if
    any, are not used. ``source_prior (C,)``: the priors of the model's training data (e.g.
    :func:`mean_posteriors` on it), all positive. Stops when no prior moves more than ``tolerance``.
    """
    if iter(batches) is batches:
        raise TypeError("batches are read once per EM iteration: pass a LogitCache or a list, not an iterator")
    source = torch.as_tensor(source_prior, dtype=torch.float64)
    if not (source > 0).all():
        raise ValueError(f"the source priors must be positive, got {source.tolist()}")
    source = source / source.sum()
    prior = source.clone()
    for _ in range(max_iterations):
        ratio = (prior / source).log()
        updated = mean_posteriors((logits.double() + ratio.view(1, -1, 1, 1), None) for logits, *_ in batches)
        done = (updated - prior).abs().max() <= tolerance
        prior = updated
        if done:
            break
    return prior, (prior / source).log().float()


def class_balanced_thresholds(logits: torch.Tensor, portion: float) -> torch.Tensor:
    """Per-class confidence thresholds ``(C,)``: class c keeps the top ``portion`` of the pixels predicted c.

    ``logits (B, C, h, w)``. Threshold of class c: the k-th highest confidence (softmax maximum)
    among the n pixels whose argmax is c, k = ceil(portion * n); ``inf`` for a class no pixel predicts.
    """
    if not 0 < portion <= 1:
        raise ValueError(f"portion must be in (0, 1], got {portion}")
    confidence, pred = logits.float().softmax(1).max(1)
    thresholds = torch.full((logits.shape[1],), torch.inf)
    for c in pred.unique().tolist():
        ranked = confidence[pred == c].sort(descending=True).values
        thresholds[c] = ranked[max(1, math.ceil(portion * len(ranked) - 1e-9)) - 1]  # (float products like 0.3 * 10)
    return thresholds


def pseudo_labels(logits: torch.Tensor, thresholds: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Argmax labels ``(B, h, w)`` long where the confidence reaches its class's threshold, else ``ignore_index``."""
    confidence, pred = logits.float().softmax(1).max(1)
    return torch.where(confidence >= thresholds.to(confidence)[pred], pred, ignore_index)


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Each image's mean pixel entropy (nats) ``(B,)`` of ``logits (B, C, h, w)``."""
    log_probs = logits.float().log_softmax(1)
    return -(log_probs.exp() * log_probs).sum(1).mean((1, 2))


def expected_miou_shortfall(
    logits: torch.Tensor,
    *,
    num_samples: int = 8,
    reward: Reward = miou,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``1 - E_{y ~ softmax}[reward(argmax, y)]`` per image ``(B,)`` float64, from ``num_samples`` sampled masks.

    ``logits (B, C, h, w)``: masks are drawn pixel by pixel from the softmax, as the tuning samples
    them, and each scores the argmax as its target would. The mean over samples is unbiased for the
    expectation. 0: the model is sure of its mask; large: it expects to miss much of it.
    """
    probs = logits.float().softmax(1)
    pred = probs.argmax(1)
    samples = sample_masks(probs, num_samples, generator)  # (K, B, h, w)
    scores = torch.stack([reward_of_masks(reward, pred, y, logits.shape[1]) for y in samples])
    return 1 - scores.mean(0)
