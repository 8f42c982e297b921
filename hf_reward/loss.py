"""The reward-tuning loss: REINFORCE over sampled segmentation masks.

Algorithm (one call, one batch; K samples, B images, C classes, h x w sampling resolution):

1. Bring logits and labels to the sampling resolution (:func:`policy.align_to_resolution`) and
   form the tempered policy p = softmax(logits / tau) per pixel, in float32.
2. Draw K masks per image by Gumbel-max; take the greedy (argmax) mask too.
3. Score every mask with the reward against the ground truth: rewards ``(K, B)``, greedy ``(B,)``.
4. Turn rewards into a loss whose gradient estimates -grad E_y[R(y)] / n_valid:

   ``estimator="score"`` (REINFORCE): advantages A = R - b with a baseline from
   :mod:`hf_reward.baselines`, and

       loss = -mean_{k carrying gradient, b} A_kb * log P(y_kb) / n_valid_b.

   ``estimator="local"`` (local expectation gradients): for every pixel i and class c, the
   reward with pixel i switched to c, the other pixels held at the sample
   (:mod:`hf_reward.local`), and

       loss = -mean_k mean_b (1/n_valid_b) sum_i sum_c p_i(c) * sg(R_ic - sum_c' p_i(c') R_ic').

   Each pixel's exact expectation over its own class removes most of the variance that one
   scalar reward per image spreads over thousands of pixel choices.

With ``reward_scope="batch"`` or ``"dataset"`` (local estimator only) the reward is the mIoU of one
confusion matrix over the whole batch, plus, for ``dataset``, a running matrix of past batches
that the caller keeps (:class:`ReinforceOutput.sample_confusion` feeds it). Each pixel then
gets its effect on the dataset-level metric users report. The loss is then divided by the
batch's valid pixel count, and the ``dataset`` scope's deltas are multiplied by
n_scope / n_batch so that its gradient has the scale of the ``batch`` scope.

Rewards and advantages are computed under ``no_grad``; only log P (or p) carries gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import baselines, local, policy, rewards

ESTIMATORS = ("score", "local")
REWARD_SCOPES = ("image", "batch", "dataset")
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ReinforceOutput:
    """What :func:`reinforce_loss` returns.

    loss: scalar. rewards: ``(K, B)`` per-image rewards of the samples (NaN for images with no
    valid pixel). advantages: ``(K, B)``; for the local estimator, the mean over valid pixels of
    the sampled class's advantage. greedy_rewards: ``(B,)``. entropy: ``(B,)`` mean per-pixel
    entropy of the tempered policy. sample_confusion: ``(C, C)`` float, the batch's confusion
    counts averaged over the K samples (feeds the running matrix of the ``dataset`` scope).
    scope_rewards: ``(K,)`` for ``reward_scope`` batch / dataset, the reward of each sample's
    scope matrix, the objective being optimised; ``None`` for the image scope.
    """

    loss: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    greedy_rewards: torch.Tensor
    entropy: torch.Tensor
    sample_confusion: torch.Tensor
    scope_rewards: torch.Tensor | None = None


def reinforce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    reward_fn: str | RewardFn,
    num_samples: int,
    baseline: str = "loo",
    temperature: float = 1.0,
    ignore_index: int = 255,
    sample_resolution: str = "logits",
    generator: torch.Generator | None = None,
    estimator: str = "score",
    reward_scope: str = "image",
    running_confusion: torch.Tensor | None = None,
    ema_value: torch.Tensor | None = None,
    normalize_advantages: bool = False,
) -> ReinforceOutput:
    """Sample masks from ``logits (B, C, h, w)``, reward them against ``labels (B, H, W)``, return the loss.

    Args:
        reward_fn: ``"miou"``, ``"dice"``, ``"pixel_accuracy"``, or a callable
            ``(pred (N, H, W), target (N, H, W)) -> (N,)`` (score estimator only).
        num_samples: K masks per image.
        baseline: see :mod:`hf_reward.baselines` (score estimator only).
        temperature: tau of the policy softmax(logits / tau) that is sampled and trained.
        sample_resolution: ``"logits"`` (h x w, labels downsampled by nearest) or ``"labels"``
            (logits upsampled bilinearly to H x W).
        generator: optional ``torch.Generator`` for the Gumbel noise.
        estimator: ``"score"`` (REINFORCE) or ``"local"`` (local expectation, named rewards only).
        reward_scope: ``"image"``, ``"batch"`` or ``"dataset"`` (the last two: local estimator).
        running_confusion: ``(C, C)`` running counts of past batches for ``reward_scope="dataset"``.
        ema_value: running mean reward for ``baseline="ema"``.
        normalize_advantages: divide score-function advantages by their std.

    Example::

        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 32, 32))
        >>> out = reinforce_loss(logits, labels, reward_fn="miou", num_samples=4, baseline="loo")
        >>> out.loss.backward(); out.rewards.shape
        torch.Size([4, 2])
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if reward_scope not in REWARD_SCOPES:
        raise ValueError(f"reward_scope must be one of {REWARD_SCOPES}, got {reward_scope!r}")
    if estimator == "local" and not (isinstance(reward_fn, str) and reward_fn in local.LOCAL_REWARDS):
        raise ValueError(
            f"estimator='local' needs a reward with closed-form switched rewards, one of {local.LOCAL_REWARDS}; "
            f"got {reward_fn!r}. Use estimator='score' for a custom reward_fn, or add its closed form "
            "in hf_reward/local.py (see that module's docstring)."
        )
    if reward_scope != "image" and estimator != "local":
        raise ValueError(f"reward_scope={reward_scope!r} needs estimator='local'; the score estimator is per image")
    if reward_scope == "dataset" and running_confusion is None:
        raise ValueError("reward_scope='dataset' needs running_confusion (a (C, C) tensor, zeros at the start)")

    num_classes = logits.shape[1]
    if isinstance(reward_fn, str):
        named = rewards.REWARDS[reward_fn]
        score_masks = lambda pred, target: named(pred, target, num_classes, ignore_index)  # noqa: E731
    else:
        score_masks = reward_fn

    logits, labels = policy.align_to_resolution(logits.float(), labels, sample_resolution)
    valid = labels != ignore_index  # (B, h, w)
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    probs = log_probs.exp()
    k = num_samples
    batch = labels.shape[0]

    with torch.no_grad():
        masks = policy.sample_masks(probs.detach(), k, generator)  # (K, B, h, w)
        targets = labels.expand(k, *labels.shape).flatten(0, 1)
        sample_rewards = score_masks(masks.flatten(0, 1), targets).view(k, batch)
        greedy_rewards = score_masks(logits.argmax(1), labels)
        entropy = policy.entropy(probs, log_probs, valid)
        per_image = rewards.confusion_matrix(masks.flatten(0, 1), targets, num_classes, ignore_index).view(
            k, batch, num_classes, num_classes)

    # Both estimators' losses are linear in the per-pixel policy: sum over b, c, pixels of
    # stopgrad(weight[b, c, pixel]) * (log p or p). Building the weight under no_grad keeps the
    # graph at one (B, C, h, w) product whatever K is.
    if reward_scope == "image":
        pixel_norm = valid / valid.sum(dim=(-2, -1), keepdim=True).clamp(min=1) / batch  # mean over pixels, images
    else:
        pixel_norm = valid / valid.sum().clamp(min=1)  # one mean over the batch's pixels
    scope_rewards = None
    if estimator == "score":
        with torch.no_grad():
            adv = baselines.advantages(
                sample_rewards,
                baseline,
                greedy_rewards=greedy_rewards,
                ema_value=ema_value,
                normalize=normalize_advantages,
            )
            carries = baselines.gradient_samples(baseline, k)
            coef = adv * carries.to(adv.device).unsqueeze(1) / int(carries.sum())  # (K, B)
            # Each sampled class collects its samples' advantages: sum_k coef_kb * onehot(y_kb).
            weight = torch.zeros_like(log_probs)
            weight.scatter_add_(1, masks.transpose(0, 1), coef.T.reshape(batch, k, 1, 1).expand(-1, -1, *masks.shape[-2:]))
            weight *= pixel_norm.unsqueeze(1)
        loss = -(weight * log_probs).sum()
    else:
        with torch.no_grad():
            deltas = _local_deltas(masks, labels, per_image, reward_fn, ignore_index, reward_scope,
                                   running_confusion)  # (K, B, C, h, w)
            if reward_scope != "image":
                scope = per_image.sum(1) + (running_confusion if reward_scope == "dataset" else 0)
                scope_rewards = rewards.FROM_CONFUSION[reward_fn](scope)
            pixel_adv = deltas - (probs.unsqueeze(0) * deltas).sum(2, keepdim=True)
            adv = policy.masked_pixel_mean(pixel_adv.gather(2, masks.unsqueeze(2)).squeeze(2), valid)
            weight = pixel_adv.mean(0) * pixel_norm.unsqueeze(1)
        loss = -(weight * probs).sum()

    return ReinforceOutput(
        loss=loss,
        rewards=sample_rewards,
        advantages=adv,
        greedy_rewards=greedy_rewards,
        entropy=entropy,
        sample_confusion=per_image.sum(1).float().mean(0),
        scope_rewards=scope_rewards,
    )


def _local_deltas(masks, labels, confusion, reward, ignore_index, scope, running_confusion) -> torch.Tensor:
    """Switched-reward deltas ``(K, B, C, h, w)`` at the given reward scope.

    ``masks (K, B, h, w)``, ``labels (B, h, w)``, ``confusion (K, B, C, C)`` per-image sample counts.
    """
    k, batch, h, w = masks.shape
    num_classes = confusion.shape[-1]
    if scope == "image":
        targets = labels.expand(k, *labels.shape).reshape(k * batch, h * w)
        deltas = local.switched_reward_deltas(
            masks.reshape(k * batch, h * w), targets, confusion.flatten(0, 1).double(), reward, ignore_index
        )
        return deltas.view(k, batch, num_classes, h, w)
    # One group per sample: all B images' pixels against the batch (+ running) matrix.
    scope_confusion = confusion.sum(1).double()  # (K, C, C)
    scale = 1.0
    if scope == "dataset":
        batch_pixels = scope_confusion.sum(dim=(-2, -1)).clamp(min=1)
        scope_confusion = scope_confusion + running_confusion.double()
        scale = (scope_confusion.sum(dim=(-2, -1)) / batch_pixels).float().view(k, 1, 1)
    pixels = masks.reshape(k, batch * h * w)
    targets = labels.reshape(1, batch * h * w).expand(k, -1)
    deltas = local.switched_reward_deltas(pixels, targets, scope_confusion, reward, ignore_index) * scale
    return deltas.view(k, num_classes, batch, h, w).transpose(1, 2)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over valid pixels, logits ``(B, C, h, w)`` upsampled to labels ``(B, H, W)``.

    The same loss as ``SegformerForSemanticSegmentation``'s own, except that a batch with no valid
    pixel gives 0 rather than NaN.
    """
    logits, labels = policy.align_to_resolution(logits.float(), labels, "labels")
    total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
