"""Advantage estimators for the score-function (REINFORCE) loss.

Each function maps rewards ``(K, B)`` (K samples of B images) to advantages ``(K, B)``. A
baseline that does not depend on the sample it is subtracted from leaves the gradient unbiased:
E[(R(y) - b) grad log P(y)] = grad E[R] - b E[grad log P(y)] = grad E[R], as E[grad log P] = 0.
Every baseline here is built from *other* samples (or none), so each is unbiased:

- ``loo``: mean reward of the other K-1 samples of the same image (Kool et al. 2019).
- ``sample``: the seed recipe. The first K/2 samples carry gradient; sample k's baseline is the
  reward of sample k + K/2, an independent draw. K = 2 is the classic one-sample baseline.
- ``greedy``: the reward of the argmax mask (self-critical sequence training, Rennie et al. 2017).
- ``batch_mean``: mean reward of every other sample in the batch (own reward left out).
- ``ema``: a running mean of past steps' rewards (state carried by the caller).
- ``none``: zero.

Images with no valid pixel have NaN rewards; they get advantage 0 and are left out of every mean.
"""

from __future__ import annotations

import torch

BASELINES = ("loo", "sample", "greedy", "batch_mean", "ema", "none")


def gradient_samples(baseline: str, num_samples: int) -> torch.Tensor:
    """Which of the K samples carry gradient ``(K,)`` bool: all but the baseline draws of ``sample``."""
    carries = torch.ones(num_samples, dtype=torch.bool)
    if baseline == "sample":
        carries[num_samples // 2 :] = False
    return carries


def _leave_one_out_mean(rewards: torch.Tensor, valid: torch.Tensor, dim) -> torch.Tensor:
    total = torch.where(valid, rewards, 0.0).sum(dim=dim, keepdim=True)
    count = valid.sum(dim=dim, keepdim=True)
    others = (count - valid.long()).clamp(min=1)
    return (total - torch.where(valid, rewards, 0.0)) / others


def advantages(
    rewards: torch.Tensor,
    baseline: str,
    *,
    greedy_rewards: torch.Tensor | None = None,
    ema_value: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Baseline-subtracted rewards ``(K, B)``; 0 for samples that only serve as baseline.

    Args:
        rewards: ``(K, B)`` rewards of the sampled masks; NaN marks images with no valid pixel.
        baseline: one of :data:`BASELINES`.
        greedy_rewards: ``(B,)``, required for ``greedy``.
        ema_value: scalar running mean of past rewards for ``ema``; ``None`` on the first step, when
            the batch mean (own reward left out) stands in.
        normalize: divide by the std of the gradient-carrying advantages. This rescales the step
            size per batch; it is not part of the unbiased estimator.

    Example::

        >>> advantages(torch.tensor([[0.2], [0.6]]), "loo")
        tensor([[-0.4000],
                [ 0.4000]])
    """
    valid = rewards.isfinite()
    r = torch.where(valid, rewards, 0.0)
    if baseline == "loo":
        base = _leave_one_out_mean(r, valid, dim=0)
    elif baseline == "sample":
        half = r.shape[0] // 2
        base = torch.cat([r[half : 2 * half], torch.zeros_like(r[half:])])
    elif baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("baseline='greedy' needs greedy_rewards")
        base = torch.nan_to_num(greedy_rewards, nan=0.0).unsqueeze(0)
    elif baseline == "batch_mean" or (baseline == "ema" and ema_value is None):
        base = _leave_one_out_mean(r, valid, dim=(0, 1))
    elif baseline == "ema":
        base = ema_value
    elif baseline == "none":
        base = 0.0
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    carries = gradient_samples(baseline, r.shape[0]).to(r.device).unsqueeze(1) & valid
    adv = torch.where(carries, r - base, 0.0)
    if normalize:
        count = carries.sum()
        mean = torch.where(carries, adv, 0.0).sum() / count.clamp(min=1)
        var = torch.where(carries, (adv - mean) ** 2, 0.0).sum() / (count - 1).clamp(min=1)
        adv = adv / (var.sqrt() + 1e-6)
    return adv


def update_ema(ema_value: torch.Tensor | None, rewards: torch.Tensor, decay: float) -> torch.Tensor:
    """Next running mean: ``decay * ema + (1 - decay) * mean(valid rewards)``; starts at the first mean."""
    mean = rewards.nanmean()
    if ema_value is None:
        return mean
    return torch.where(mean.isfinite(), decay * ema_value + (1 - decay) * mean, ema_value)
