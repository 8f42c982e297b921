"""The reward-tuning loss: the gradient of the expected reward of masks sampled from the model.

Algorithm, one call on one batch (K samples, B images, C classes, h x w sampling resolution);
each step is a function below, and :func:`reward_loss` is their composition:

1. :func:`sample`: bring logits and labels to the sampling resolution, form the tempered policy
   p = softmax(logits / tau) per pixel (float32), draw K masks per image, and count each sampled
   mask's confusion matrix ``(K, B, C, C)``.
2. :func:`scope_confusion` (batch and dataset scopes): pool each sample's counts over the batch,
   sum them over processes, and add the counts the caller's :class:`RewardState` keeps (earlier
   micro-batches of the optimizer step and, for the dataset scope, the running matrix of past
   steps).
3. Weights, one per pixel and class, under ``no_grad``:

   :func:`score_function_weights` (``estimator="score"``, REINFORCE): advantages
   A_kb = R(y_kb) - b_kb with a baseline from :mod:`hf_reward.baselines`; each sampled class
   collects its samples' advantages, so that sum(weight * log p) = mean_b mean_k A_kb log P(y_kb).

   :func:`local_weights` (``estimator="local"``, local expectation gradients): for every pixel i
   and class c the reward R_ic of the sample with pixel i switched to c (:mod:`hf_reward.local`),
   and the weight A_ic = R_ic - sum_c' p_i(c') R_ic' on p_i(c). Each pixel's exact expectation
   over its own class removes most of the variance that one scalar reward per image spreads
   over thousands of pixel choices.
4. The loss: ``-(sum(weight * log p or p) - itself detached) - objective``.

Scale. The gradient of the loss is an unbiased estimate of -grad J, in the reward's own units:

- image scope: J = mean_b E[R(y_b)], the mean over the batch of each image's expected reward;
- batch scope: J = E[R(pooled counts of the batch)];
- dataset scope: J = (n_scope / n_batch) E[R(running + batch counts)]: a pixel's effect on a
  matrix of n_scope pixels is about n_batch / n_scope times its effect on the batch's, and
  the factor gives it the batch scope's scale.

Each pixel's share is then of the order of cross-entropy's (1/n per pixel for a mean over n
pixels), whatever the resolution or batch size, so ``ce_weight`` and ``lovasz_weight`` of order
1 balance the reward, and AdamW sees gradients well above its eps. With several processes or
micro-batches per step, ``n_batch`` is this call's own valid pixels: the trainer's mean over
micro-batches and processes then keeps that scale.

The loss *value* is -J (the objective being maximised, detached); its gradient is the estimate.
Rewards and weights are computed under ``no_grad``; only log p (or p) carries gradient.

State between calls (:class:`RewardState`, float64 counts): the optimizer step's earlier
micro-batches, the dataset scope's running matrix (``running = decay * running + step counts``
once per optimizer step) and the ``ema`` baseline's running mean. The trainer keeps one and
saves its ``state_dict`` with each checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import baselines, local, policy
from .mask_scores import MaskReward
from .rewards import Reward, class_counts, confusion_matrix, reward_of_masks

ESTIMATORS = ("score", "local")
REWARD_SCOPES = ("image", "batch", "dataset")


@dataclass(frozen=True)
class LossSettings:
    """The knobs of :func:`reinforce_loss`; :class:`hf_reward.RewardSegConfig` builds one from its fields.

    reward: a function of the per-class counts (tp, gt, pd) -> reward (:mod:`hf_reward.rewards`), or
    ``None`` with ``mask_reward``.
    estimator: ``"score"`` (REINFORCE) or ``"local"`` (local expectation gradient).
    reward_scope: ``"image"``, ``"batch"`` or ``"dataset"`` (the last two need ``"local"``).
    num_samples: K masks per image. temperature: tau of softmax(logits / tau).
    baseline: of the score estimator, one of :data:`hf_reward.baselines.BASELINES`.
    sample_resolution: ``"logits"`` or ``"labels"`` (:func:`hf_reward.policy.align_to_resolution`).
    ignore_index: label of void pixels.
    dataset_confusion_decay: of the dataset scope's running matrix, per optimizer step.
    ema_decay: of the ``ema`` baseline's running mean reward.
    tail_fraction: q < 1 (image scope): maximise the mean expected reward of the images whose decoded
    (argmax) reward lies in the lowest q, a CVaR over images: each image's gradient is weighted by
    1{greedy reward <= v} / q, v the q-quantile of the decoded rewards of the last ``tail_window``
    images (this process's, kept in :class:`RewardState`). 1: every image (the plain mean).
    switch_around: ``"sample"``, or ``"decoded"`` (local estimator, image scope): credit each pixel with
    R(decoded mask with it switched to c) - sum_c' p(c') R(...), the rewards around the argmax mask
    that evaluation scores instead of around a sample (see :func:`local_weights`).
    mask_reward: a reward of whole masks ``(pred (N, h, w), target (N, h, w)) -> (N,)`` at the
    sampling resolution (:mod:`hf_reward.mask_scores`: boundary F, object F1, or your own) in place of
    ``reward``; the score estimator, per image, is the one that takes it. Void pixels get no
    gradient, so the reward must not depend on the prediction there (the named ones do not).
    """

    reward: Reward | None
    estimator: str
    reward_scope: str
    num_samples: int
    temperature: float
    baseline: str
    sample_resolution: str
    ignore_index: int
    dataset_confusion_decay: float = 0.9
    ema_decay: float = 0.9
    mask_reward: MaskReward | None = None
    tail_fraction: float = 1.0
    tail_window: int = 512
    switch_around: str = "sample"

    def __post_init__(self):
        if self.mask_reward is not None:
            if self.reward is not None or not callable(self.mask_reward):
                raise ValueError("give either reward (of the counts) or mask_reward (of whole masks), not both")
            local_ok = hasattr(self.mask_reward, "switched")
            if (self.estimator != "score" and not local_ok) or self.reward_scope != "image":
                raise ValueError(
                    "a reward of whole masks needs estimator='score' and reward_scope='image' (the local estimator "
                    "takes a reward of the counts, or boundary F, whose switched rewards it computes), got "
                    f"estimator={self.estimator!r}, reward_scope={self.reward_scope!r}"
                )
        elif not callable(self.reward):
            raise ValueError(f"reward must be a function of (tp, gt, pd), got {self.reward!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.reward_scope not in REWARD_SCOPES:
            raise ValueError(f"reward_scope must be one of {REWARD_SCOPES}, got {self.reward_scope!r}")
        if self.sample_resolution not in policy.SAMPLE_RESOLUTIONS:
            raise ValueError(
                f"sample_resolution must be one of {policy.SAMPLE_RESOLUTIONS}, got {self.sample_resolution!r}"
            )
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        if not (self.temperature > 0 and self.temperature < float("inf")):  # also rejects NaN
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0 < self.tail_fraction <= 1 or self.tail_window < 1:
            raise ValueError(
                f"need 0 < tail_fraction <= 1 and tail_window >= 1, got {self.tail_fraction}, {self.tail_window}"
            )
        if self.tail_fraction < 1 and self.reward_scope != "image":
            raise ValueError(
                f"tail_fraction < 1 weighs images: it needs reward_scope='image', got {self.reward_scope!r}"
            )
        if self.switch_around not in ("sample", "decoded"):
            raise ValueError(f"switch_around must be 'sample' or 'decoded', got {self.switch_around!r}")
        if self.switch_around == "decoded" and (self.estimator != "local" or self.reward_scope != "image"):
            raise ValueError("switch_around='decoded' needs estimator='local' and reward_scope='image'")
        if self.estimator == "score":
            if self.reward_scope != "image":
                raise ValueError(
                    f"reward_scope={self.reward_scope!r} needs estimator='local'; the score estimator is per image"
                )
            baselines.check_baseline(self.baseline, self.num_samples)


@dataclass
class RewardState:
    """What the reward loss carries from one call to the next, on every process alike except ``ema``.

    step: ``(C, C)`` float64, the sampled counts of the optimizer step's earlier micro-batches
    (batch and dataset scopes). running: ``(C, C)`` float64, the dataset scope's decayed counts of
    past optimizer steps. ema: scalar, the ``ema`` baseline's running mean reward (NaN until an
    image with a valid pixel was seen). tail: ``(n,)`` the decoded rewards of the last images seen
    (``tail_fraction < 1``), whose quantile is the tail's threshold.
    """

    step: torch.Tensor | None = None
    running: torch.Tensor | None = None
    ema: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def context(self, reward_scope: str) -> torch.Tensor | None:
        """The counts that join a micro-batch's own in its scope's matrix (``None``: none)."""
        if reward_scope == "image":
            return None
        parts = [self.step] + ([self.running] if reward_scope == "dataset" else [])
        parts = [p for p in parts if p is not None]
        return sum(parts) if parts else None

    def update(self, out: RewardLossOutput, settings: LossSettings, step_ends: bool) -> None:
        """Take in one call's output; ``step_ends``: it was the optimizer step's last micro-batch."""
        if settings.estimator == "score" and settings.baseline == "ema":
            self.ema = baselines.update_ema(self.ema, out.rewards, out.valid_images, settings.ema_decay)
        if settings.tail_fraction < 1:
            self.tail = recent_rewards(self.tail, out.greedy_rewards[out.valid_images], settings.tail_window)
        if settings.reward_scope == "image":
            return
        counts = out.sample_confusion
        self.step = counts if self.step is None else self.step + counts
        if step_ends:
            if settings.reward_scope == "dataset":
                decayed = 0.0 if self.running is None else settings.dataset_confusion_decay * self.running
                self.running = decayed + self.step
            self.step = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value for name in STATE_NAMES if (value := getattr(self, name)) is not None}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step, self.running, self.ema, self.tail = (state.get(name) for name in STATE_NAMES)


STATE_NAMES = ("step", "running", "ema", "tail")


def recent_rewards(window: torch.Tensor | None, rewards: torch.Tensor, size: int) -> torch.Tensor:
    """The last ``size`` of ``window`` followed by ``rewards`` (float32, detached)."""
    rewards = rewards.detach().float()
    return (rewards if window is None else torch.cat([window.to(rewards), rewards]))[-size:]


def tail_weights(greedy: torch.Tensor, valid_images: torch.Tensor, window: torch.Tensor | None, q: float):
    """``(weights (B,), threshold)``: 1/q for the valid images whose decoded reward is at most the q-quantile of
    ``window`` and this batch's, else 0."""
    recent = recent_rewards(window, greedy[valid_images], 1 << 30)
    threshold = torch.quantile(recent, q) if len(recent) else greedy.new_tensor(torch.nan)
    return ((greedy <= threshold) & valid_images).float() / q, threshold


@dataclass
class Samples:
    """What :func:`sample` returns.

    log_probs: ``(B, C, h, w)`` tempered log-policy, with gradient. labels: ``(B, h, w)`` at the
    sampling resolution. valid: ``(B, h, w)`` non-void pixels. masks: ``(K, B, h, w)``.
    confusion: ``(K, B, C, C)`` counts of each sampled mask.
    """

    log_probs: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor
    confusion: torch.Tensor


@dataclass
class RewardLossOutput:
    """What :func:`reward_loss` returns.

    loss: scalar, value -objective. objective: the expected reward J being maximised (detached).
    rewards: ``(K, B)`` per-image rewards of the samples. valid_pixels: ``(B,)`` each image's
    valid pixels at the sampling resolution; images with none get no gradient and are left out of
    every mean (:attr:`valid_images`). greedy_rewards: ``(B,)`` per-image reward of the argmax
    mask. entropy: ``(B,)`` mean per-pixel entropy of the tempered policy over valid pixels.
    advantages, carried: ``(K, B)`` for the score estimator, else ``None``: the advantages, and which
    of them enter the gradient (see :func:`score_function_weights`).
    sample_confusion: ``(C, C)`` float64, the sampled counts summed over the batch (and processes),
    averaged over K, which :meth:`RewardState.update` adds to its counts. scope_rewards: ``(K,)`` reward
    of each sample's scope matrix for the batch and dataset scopes, else ``None``. weight_abs,
    frac_zero_weight: ``(B,)`` for the local estimator, else ``None``: per image, the mean over valid
    pixels of sum_c |weight_ic| (the size of the credit each pixel gets), and the share of valid
    pixels whose weights are all 0 (no switch of theirs changes the reward). tail_threshold: with
    ``tail_fraction < 1``, the decoded reward at or below which an image is in the tail.
    """

    loss: torch.Tensor
    objective: torch.Tensor
    rewards: torch.Tensor
    valid_pixels: torch.Tensor
    greedy_rewards: torch.Tensor
    entropy: torch.Tensor
    sample_confusion: torch.Tensor
    advantages: torch.Tensor | None = None
    carried: torch.Tensor | None = None
    scope_rewards: torch.Tensor | None = None
    weight_abs: torch.Tensor | None = None
    frac_zero_weight: torch.Tensor | None = None
    tail_threshold: torch.Tensor | None = None

    @property
    def valid_images(self) -> torch.Tensor:
        return self.valid_pixels > 0


def sample(
    logits: torch.Tensor, labels: torch.Tensor, settings: LossSettings, generator: torch.Generator | None = None
) -> Samples:
    """Step 1: the tempered policy at the sampling resolution, K masks from it and their confusion counts."""
    num_classes, k = logits.shape[1], settings.num_samples
    logits, labels = policy.align_to_resolution(logits.float(), labels, settings.sample_resolution)
    log_probs = torch.log_softmax(logits / settings.temperature, dim=1)
    with torch.no_grad():
        masks = policy.sample_masks(log_probs.exp(), k, generator)
        targets = labels.expand(k, *labels.shape).flatten(0, 1)
        confusion = confusion_matrix(masks.flatten(0, 1), targets, num_classes, settings.ignore_index)
    return Samples(
        log_probs,
        labels,
        labels != settings.ignore_index,
        masks,
        confusion.view(k, labels.shape[0], num_classes, num_classes),
    )


def scope_confusion(
    confusion: torch.Tensor,
    context: torch.Tensor | None = None,
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: ``(scope (K, C, C) float64, own (K, C, C) float64)`` from per-image counts ``(K, B, C, C)``.

    ``own`` is each sample's counts pooled over the batch and, with ``reduce_counts`` (a sum
    over processes), over every process's batch; ``scope = own + context``.
    """
    own = confusion.sum(1).double()
    if reduce_counts is not None:
        own = reduce_counts(own)
    return (own if context is None else own + context.double()), own


def score_function_weights(
    samples: Samples,
    rewards: torch.Tensor,
    valid_images: torch.Tensor,
    baseline: str,
    greedy_rewards: torch.Tensor,
    ema_value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3, REINFORCE: ``(weight (B, C, h, w) on log p, advantages (K, B), carried (K, B) bool)``.

    sum(weight * log p) = mean_b mean_{k carrying gradient} A_kb log P(y_kb), b over the images with
    a valid pixel, log P(y) summed over the valid pixels. ``carried`` marks the advantages that
    enter it: valid images, and not the baseline draws of ``baseline="sample"``.
    """
    masks = samples.masks
    k, batch = rewards.shape
    adv = baselines.advantages(
        rewards, baseline, valid=valid_images, greedy_rewards=greedy_rewards, ema_value=ema_value
    )  # 0 wherever not carried
    carries = baselines.gradient_samples(baseline, k).to(adv.device)
    coef = adv / (int(carries.sum()) * valid_images.sum().clamp(min=1))  # (K, B)
    weight = torch.zeros_like(samples.log_probs)
    # Each sampled class collects its samples' coefficients: sum_k coef_kb * onehot(y_kb).
    weight.scatter_add_(1, masks.transpose(0, 1), coef.T.reshape(batch, k, 1, 1).expand(-1, -1, *masks.shape[-2:]))
    return weight * samples.valid.unsqueeze(1), adv, carries.unsqueeze(1) & valid_images


def local_weights(
    samples: Samples,
    reward: Reward | MaskReward,
    scope: torch.Tensor | None,
    ignore_index: int,
    around_decoded: bool = False,
) -> torch.Tensor:
    """Step 3, local expectation: ``weight (B, C, h, w)`` on p, the mean over samples of the
    per-pixel advantages A_ic = R_ic - sum_c' p_i(c') R_ic'.

    ``scope`` ``(K, C, C)``: each sample's pooled matrix (batch and dataset scopes), whose reward
    all of the batch's pixels are credited against, scaled by n_scope / n_batch (see the module
    docstring); ``None`` for the image scope, where each image is its own group, averaged over
    the images with a valid pixel. ``reward``: of the counts, or of whole masks with a ``switched``
    method (:class:`hf_reward.mask_scores.BoundaryFReward`; image scope) that gives R_ic - R directly.

    ``around_decoded`` (image scope): R_ic around the argmax mask instead of a sample. The weights are
    then the gradient of sum_i sum_c p_i(c) R(decoded with pixel i set to c): each pixel's expected reward
    with the others held at the decoded mask, a surrogate of the decoded mask's reward, not an unbiased
    estimate of the gradient of E[R] (it is exact for a reward that is a sum over pixels).
    """
    masks, labels = samples.masks, samples.labels
    confusion = samples.confusion
    if around_decoded:  # the argmax mask in place of the samples
        masks = samples.log_probs.detach().argmax(1).unsqueeze(0)
        confusion = confusion_matrix(masks[0], labels, confusion.shape[-1], ignore_index).unsqueeze(0)
    k, batch, h, w = masks.shape
    probs = samples.log_probs.detach().exp()
    weight = torch.zeros_like(probs)
    n_batch = samples.valid.sum().clamp(min=1)
    n_images = samples.valid.flatten(1).any(1).sum().clamp(min=1)
    for i in range(k):  # K is small (1 by default); each iteration is batched over pixels and classes
        if hasattr(reward, "switched"):
            deltas = reward.switched(masks[i], labels) / n_images
        elif scope is None:
            table = local.switch_table(reward, confusion[i])  # (B, 3, C, C)
            deltas = local.switched_reward_deltas(masks[i].flatten(1), labels.flatten(1), table, ignore_index)
            deltas = deltas.view(batch, -1, h, w) / n_images
        else:
            table = local.switch_table(reward, scope[i : i + 1])  # (1, 3, C, C)
            deltas = local.switched_reward_deltas(masks[i].reshape(1, -1), labels.reshape(1, -1), table, ignore_index)
            deltas = deltas.view(-1, batch, h, w).transpose(0, 1) * (scope[i].sum() / n_batch).float()
        weight += deltas - (probs * deltas).sum(1, keepdim=True)
    return weight * samples.valid.unsqueeze(1) / k


def reward_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    settings: LossSettings,
    *,
    state: RewardState | None = None,
    reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> RewardLossOutput:
    """Sample masks from ``logits (B, C, h, w)``, reward them against ``labels (B, H, W)``, return the loss.

    Args:
        settings: :class:`LossSettings`.
        state: what earlier calls left (:class:`RewardState`): the batch and dataset scopes' counts
            and the ``ema`` baseline. Read here, not changed: call its ``update`` with the output.
        reduce_counts: sums a tensor over processes, so that every process credits its pixels
            against the same pooled matrix (e.g. ``lambda t: accelerator.reduce(t, "sum")``).
        generator: optional ``torch.Generator`` for the sampling.

    Example::

        >>> from hf_reward.rewards import miou
        >>> settings = LossSettings(reward=miou, estimator="local", reward_scope="batch", num_samples=1,
        ...                         temperature=0.5, baseline="none", sample_resolution="logits", ignore_index=255)
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> out = reward_loss(logits, torch.randint(0, 3, (2, 32, 32)), settings)
        >>> out.loss.backward(); out.rewards.shape, out.scope_rewards.shape
        (torch.Size([1, 2]), torch.Size([1]))
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (B, C, h, w) and labels (B, H, W); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    s = settings
    state = state or RewardState()
    num_classes = logits.shape[1]
    samples = sample(logits, labels, s, generator)
    with torch.no_grad():
        valid_pixels = samples.valid.flatten(1).sum(1)
        valid_images = valid_pixels > 0
        greedy_masks = samples.log_probs.argmax(1)
        if s.mask_reward is not None:
            k = samples.masks.shape[0]
            targets = samples.labels.expand(k, *samples.labels.shape).flatten(0, 1)
            rewards = s.mask_reward(samples.masks.flatten(0, 1), targets).view(k, -1).float()  # (K, B)
            greedy = s.mask_reward(greedy_masks, samples.labels)
        else:
            rewards = s.reward(*class_counts(samples.confusion)).float()  # (K, B)
            greedy = reward_of_masks(s.reward, greedy_masks, samples.labels, num_classes, s.ignore_index)
        entropy = policy.entropy(samples.log_probs.exp(), samples.log_probs, samples.valid)
        advantages = carried = scope_rewards = None
        diagnostics = {}
        image_weights = valid_images.float()
        if s.tail_fraction < 1:
            image_weights, tail_threshold = tail_weights(greedy.float(), valid_images, state.tail, s.tail_fraction)
            diagnostics["tail_threshold"] = tail_threshold
        if s.reward_scope == "image":
            objective = (rewards * image_weights).sum(1).mean() / valid_images.sum().clamp(min=1)
            scope, own = None, samples.confusion.sum(1).double()
        else:
            scope, own = scope_confusion(samples.confusion, state.context(s.reward_scope), reduce_counts)
            scope_rewards = s.reward(*class_counts(scope)).float()
            objective = scope_rewards.mean()
        if s.estimator == "score":
            weight, advantages, carried = score_function_weights(
                samples, rewards, valid_images, s.baseline, greedy.float(), state.ema
            )
        else:
            weight = local_weights(
                samples, s.mask_reward or s.reward, scope, s.ignore_index, s.switch_around == "decoded"
            )
            diagnostics |= local_diagnostics(weight, samples.valid)
        if s.tail_fraction < 1:  # the tail's images count 1/q each, the others 0
            weight = weight * image_weights.view(-1, 1, 1, 1)
    # REINFORCE weights log p; the local estimator weights p itself.
    surrogate = (weight * (samples.log_probs if s.estimator == "score" else samples.log_probs.exp())).sum()
    return RewardLossOutput(
        loss=-(surrogate - surrogate.detach()) - objective,
        objective=objective,
        rewards=rewards,
        valid_pixels=valid_pixels,
        greedy_rewards=greedy.float(),
        entropy=entropy,
        sample_confusion=own.mean(0),
        advantages=advantages,
        carried=carried,
        scope_rewards=scope_rewards,
        **diagnostics,
    )


def local_diagnostics(weight: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """``weight_abs`` and ``frac_zero_weight`` ``(B,)`` of local weights ``(B, C, h, w)`` over ``valid (B, h, w)``."""
    per_pixel = weight.detach().abs().sum(1)  # (B, h, w)
    pixels = valid.sum((-2, -1)).clamp(min=1)
    return {
        "weight_abs": (per_pixel * valid).sum((-2, -1)) / pixels,
        "frac_zero_weight": ((per_pixel == 0) & valid).sum((-2, -1)) / pixels,
    }


def reinforce_loss(*args, **kwargs) -> RewardLossOutput:
    """Deprecated name of :func:`reward_loss` (whose default estimator is not REINFORCE); ``context=`` and
    ``ema_value=`` become a :class:`RewardState`."""
    warnings.warn("reinforce_loss is renamed reward_loss; it will be removed", FutureWarning, stacklevel=2)
    context, ema = kwargs.pop("context", None), kwargs.pop("ema_value", None)
    if context is not None or ema is not None:
        kwargs["state"] = RewardState(step=context, ema=ema)  # step: the counts both pooled scopes add
    return reward_loss(*args, **kwargs)


ReinforceOutput = RewardLossOutput  # the deprecated name


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over valid pixels, logits ``(B, C, h, w)`` upsampled to labels ``(B, H, W)``.

    The same loss as ``SegformerForSemanticSegmentation``'s own, except that a batch with no valid
    pixel gives 0 rather than NaN.
    """
    logits, labels = policy.align_to_resolution(logits.float(), labels, "labels")
    total = torch.nn.functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
