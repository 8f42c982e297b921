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

Images with no valid pixel (``valid`` False) get advantage 0 and are left out of every mean.
"""

from __future__ import annotations

import torch

BASELINES = ("loo", "sample", "greedy", "batch_mean", "ema", "none")


def check_baseline(baseline: str, num_samples: int) -> None:
    """Raise ``ValueError`` unless ``baseline`` exists and works with K = ``num_samples``."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "loo" and num_samples < 2:
        raise ValueError("baseline='loo' needs num_samples >= 2 (the other samples form the baseline)")
    if baseline == "sample" and num_samples % 2:
        raise ValueError(
            f"baseline='sample' pairs each gradient sample with one baseline sample: num_samples must be even, "
            f"got {num_samples}"
        )


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
    valid: torch.Tensor | None = None,
    greedy_rewards: torch.Tensor | None = None,
    ema_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Baseline-subtracted rewards ``(K, B)``; 0 for samples that only serve as baseline.

    Args:
        rewards: ``(K, B)`` rewards of the sampled masks.
        baseline: one of :data:`BASELINES`.
        valid: ``(B,)`` images that have a valid pixel (default: all).
        greedy_rewards: ``(B,)``, required for ``greedy``.
        ema_value: scalar running mean of past rewards for ``ema``; where it is ``None`` or NaN (no
            batch with a valid image yet), the batch mean (own reward left out) stands in.

    Example::

        >>> advantages(torch.tensor([[0.2], [0.6]]), "loo")
        tensor([[-0.4000],
                [ 0.4000]])
    """
    valid = torch.ones(rewards.shape[1], dtype=torch.bool, device=rewards.device) if valid is None else valid
    valid = valid.unsqueeze(0).expand_as(rewards)
    r = torch.where(valid, rewards, 0.0)
    if baseline == "loo":
        base = _leave_one_out_mean(r, valid, dim=0)
    elif baseline == "sample":
        half = r.shape[0] // 2
        base = torch.cat([r[half : 2 * half], torch.zeros_like(r[half:])])
    elif baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("baseline='greedy' needs greedy_rewards")
        base = greedy_rewards.unsqueeze(0)
    elif baseline in ("batch_mean", "ema"):
        base = _leave_one_out_mean(r, valid, dim=(0, 1))
        if baseline == "ema" and ema_value is not None:  # NaN: no batch with a valid image yet
            base = torch.where(ema_value.isnan(), base, ema_value)
    elif baseline == "none":
        base = 0.0
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    carries = gradient_samples(baseline, r.shape[0]).to(r.device).unsqueeze(1) & valid
    return torch.where(carries, r - base, 0.0)


def update_ema(
    ema_value: torch.Tensor | None, rewards: torch.Tensor, valid: torch.Tensor, decay: float
) -> torch.Tensor:
    """Next running mean: ``decay * ema + (1 - decay) * mean(rewards of valid images)``; starts at the first mean.

    ``rewards (K, B)``, ``valid (B,)``. A batch with no valid image leaves the mean as it was.
    """
    count = valid.sum() * rewards.shape[0]
    mean = (rewards * valid).sum() / count.clamp(min=1)
    if ema_value is None:
        return torch.where(count > 0, mean, torch.nan)
    fresh = ema_value.isnan()  # no batch with a valid image yet
    return torch.where(count > 0, torch.where(fresh, mean, decay * ema_value + (1 - decay) * mean), ema_value)
