"""RewardSegTrainer: a transformers Trainer whose training loss is the mIoU reward.

Per training step (see :mod:`hf_reward.loss` for the estimator):

    logits = model(pixel_values)                         # (B, C, H/4, W/4)
    loss   = reinforce_loss(logits, labels, ...)         # sampled masks, reward, baseline
           + mle_weight * pixel cross-entropy            # optional, on the ground truth
           + kl_coef * KL(p_theta || p_ref)              # optional trust region to the start

Evaluation runs plain cross-entropy, so ``eval_loss`` is the usual segmentation loss and
``compute_metrics`` (e.g. :class:`hf_reward.metrics.StreamingMeanIoU`) sees the logits.

Per-step metrics stay on the device as tensors in ``self._metrics[mode]``; ``log()`` averages
them and the mean over processes is taken then, once per logging step.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import safetensors.torch
import torch
from transformers import Trainer

from . import baselines, policy
from .config import RewardSegConfig
from .loss import RewardFn, pixel_cross_entropy, reinforce_loss
from .modeling import load_checkpoint_weights


class RewardSegTrainer(Trainer):
    """Tune a semantic segmentation model (SegFormer) on a sampled-mask reward.

    Args:
        model: a ``SegformerForSemanticSegmentation`` (any model whose output has ``logits``
            of shape ``(B, C, h, w)`` and that takes ``pixel_values``).
        args: :class:`RewardSegConfig`.
        reward_fn: optional callable ``(pred (N, H, W) long, target (N, H, W) long) -> (N,)``
            replacing the named ``args.reward`` (score estimator only).
        **kwargs: passed to ``transformers.Trainer`` (datasets, data_collator, compute_metrics, ...).

    Example::

        >>> config = RewardSegConfig(output_dir="out", max_steps=200, num_samples=4, per_device_train_batch_size=8)
        >>> trainer = RewardSegTrainer(model=model, args=config, train_dataset=train, data_collator=collate)
        >>> trainer.train()
    """

    # compute_loss returns a per-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: RewardSegConfig, reward_fn: RewardFn | None = None, **kwargs):
        if not isinstance(args, RewardSegConfig):
            raise TypeError(f"args must be a RewardSegConfig, got {type(args).__name__}")
        if reward_fn is not None and args.estimator == "local":
            raise ValueError(
                "estimator='local' needs the closed-form switched rewards of a named reward (args.reward); "
                "a custom reward_fn has none. Use estimator='score' with reward_fn."
            )
        super().__init__(model=model, args=args, **kwargs)
        self.reward_fn = reward_fn if reward_fn is not None else args.reward
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._ema_reward: torch.Tensor | None = None
        self._running_confusion: torch.Tensor | None = None
        self._nonfinite_steps = 0
        self.ref_model = None
        if args.kl_coef > 0:
            # One frozen copy of the starting weights: the parameters' memory again, no grads or
            # optimizer state, plus one no-grad forward per step.
            self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).requires_grad_(False)
            self.ref_model.to(self.args.device)

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        metrics = super().evaluate(*args, **kwargs)
        if not self.is_in_train:
            # Evaluation outside training prepares the bare model with accelerate and marks it
            # prepared; a later train() would then skip the DistributedDataParallel wrap and the
            # processes would train without averaging gradients (transformers 5.24, accelerate
            # 1.15). Clearing the mark lets train() wrap it.
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "_is_accelerate_prepared"):
                del model._is_accelerate_prepared
        return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"])
        args = self.args
        if not model.training:
            loss = pixel_cross_entropy(outputs.logits, labels, args.ignore_index)
            return (loss, outputs) if return_outputs else loss

        out = reinforce_loss(
            outputs.logits,
            labels,
            reward_fn=self.reward_fn,
            num_samples=args.num_samples,
            baseline=args.baseline,
            temperature=args.temperature,
            ignore_index=args.ignore_index,
            sample_resolution=args.sample_resolution,
            estimator=args.estimator,
            reward_scope=args.reward_scope,
            running_confusion=self._running_confusion_for(outputs.logits),
            ema_value=self._ema_reward,
            normalize_advantages=args.normalize_advantages,
        )
        loss = out.loss
        metrics = self._metrics["train"]
        if args.mle_weight > 0:
            mle = pixel_cross_entropy(outputs.logits, labels, args.ignore_index)
            loss = loss + args.mle_weight * mle
            metrics["mle_loss"].append(mle.detach())
        if self.ref_model is not None:
            # Same mode as the policy (decode-head batch norm uses batch statistics), so KL is 0 at the start.
            self.ref_model.train(model.training)
            with torch.no_grad():
                ref_logits = self.ref_model(pixel_values=inputs["pixel_values"]).logits
            kl = policy.kl_divergence(outputs.logits, ref_logits, labels, args.ignore_index).mean()
            loss = loss + args.kl_coef * kl
            metrics["kl"].append(kl.detach())

        loss = self._check_finite(model, loss)
        self._update_state(out)
        self._record(metrics, out, baselines.gradient_samples(args.baseline if args.estimator == "score" else "none", args.num_samples))
        return (loss, outputs) if return_outputs else loss

    def _running_confusion_for(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.args.reward_scope != "dataset":
            return None
        if self._running_confusion is None:
            num_classes = logits.shape[1]
            self._running_confusion = torch.zeros(num_classes, num_classes, device=logits.device)
        return self._running_confusion

    def _update_state(self, out) -> None:
        if self.args.baseline == "ema":
            self._ema_reward = baselines.update_ema(self._ema_reward, out.rewards, self.args.ema_decay)
        if self._running_confusion is not None:
            decay = self.args.dataset_confusion_decay
            self._running_confusion = decay * self._running_confusion + out.sample_confusion

    def _check_finite(self, model, loss: torch.Tensor) -> torch.Tensor:
        # One host sync per step, the same one Trainer's own logging_nan_inf_filter makes; raising
        # here, before backward and the optimizer step, means no corrupted weights are ever saved.
        if bool(loss.isfinite()):
            return loss
        step = self.state.global_step + 1
        if not self.args.skip_nonfinite_steps:
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at training step {step}: the logits or the reward produced "
                "NaN/inf. Lower the learning rate, or set skip_nonfinite_steps=True to skip such steps."
            )
        self._nonfinite_steps += 1
        # A zero loss with a graph, so backward and the optimizer step run as no-ops on the gradient.
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)

    @staticmethod
    def _record(metrics, out, carries: torch.Tensor) -> None:
        valid = out.rewards.isfinite()
        count = valid.sum().clamp(min=1)
        rewards = torch.where(valid, out.rewards, 0.0)
        mean = rewards.sum() / count
        metrics["reward"].append(mean)
        metrics["reward_std"].append((torch.where(valid, (rewards - mean) ** 2, 0.0).sum() / count).sqrt())
        metrics["greedy_reward"].append(out.greedy_rewards.nanmean())
        adv = out.advantages[carries]  # a CPU mask: indexing needs no device sync
        metrics["advantage_std"].append(adv.std(correction=0))
        metrics["frac_zero_advantage"].append((adv == 0).float().mean())
        metrics["entropy"].append(out.entropy.mean())
        if out.scope_rewards is not None:
            metrics["scope_reward"].append(out.scope_rewards.mean())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Trainer's raw load misses SegFormer's legacy key names (see load_checkpoint_weights).
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        # The ema baseline and the dataset-scope matrix live outside the model; each process has
        # its own, so one file per process, like the RNG state.
        state = {"ema_reward": self._ema_reward, "running_confusion": self._running_confusion}
        state = {name: value.detach().cpu().contiguous() for name, value in state.items() if value is not None}
        if state:
            safetensors.torch.save_file(state, Path(output_dir, f"reward_state_{self.args.process_index}.safetensors"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint or "", f"reward_state_{self.args.process_index}.safetensors")
        if checkpoint is not None and path.is_file():
            state = safetensors.torch.load_file(path, device=str(self.args.device))
            self._ema_reward, self._running_confusion = state.get("ema_reward"), state.get("running_confusion")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {}
        for name, values in self._metrics[mode].items():
            value = self.accelerator.reduce(torch.stack(values).float().mean(), reduction="mean")
            averaged[name if mode == "train" else f"eval_{name}"] = value.item()
        self._metrics[mode].clear()
        if mode == "train" and self.args.skip_nonfinite_steps:
            averaged["nonfinite_steps"] = self._nonfinite_steps
        super().log({**logs, **averaged}, start_time)
