"""RewardSegTrainer: a transformers Trainer whose training loss is a segmentation metric, as a reward.

Per training step (see :mod:`hf_reward.loss` for the estimator):

    logits = model(pixel_values)                              # (B, C, H/4, W/4); UperNet: (B, C, H, W)
    loss   = reward_weight * reward_loss(logits, labels)      # sampled masks, reward, baseline
           + ce_weight     * pixel cross-entropy              # surrogates on the ground truth
           + lovasz_weight * Lovász-softmax
           + kl_coef       * KL(p_theta || p_ref)             # trust region to the starting model
           + auxiliary_loss_weight * auxiliary head's loss    # UperNet: cross-entropy on its (B, C, H/16, W/16)
                                                              # logits, or with auxiliary_reward the terms above
                                                              # but KL, with its own reward state

With ``reward_scope`` batch or dataset, every process and every micro-batch of an optimizer step
credits its pixels against one matrix: the sampled counts are summed over processes (one
C x C all-reduce per micro-batch) and over the step's earlier micro-batches, and the dataset
scope's running matrix decays once per optimizer step. Evaluation runs plain cross-entropy, so
``eval_loss`` is the usual segmentation loss and ``compute_metrics`` (e.g.
:class:`hf_reward.metrics.StreamingMeanIoU`) sees the logits.

Safety: labels that are neither a class of the model nor ``ignore_index``, and a non-finite loss,
raise before backward (one host sync per step, which checks both); a non-finite gradient raises
before the optimizer step (outside fp16, whose grad scaler skips such steps itself). So a
checkpoint never holds a corrupted model.

Per-step metrics stay on the device as (sum, count) tensors in ``self._metrics``; ``log()`` sums
them over the logging window and over processes and divides once, so each metric is a mean over
the images (or pixels) that have it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
from collections import defaultdict
from pathlib import Path

import safetensors.torch
import torch
from transformers import Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput, has_length

from . import policy
from .config import RewardSegConfig
from .loss import RewardLossOutput, RewardState, pixel_cross_entropy, reward_loss
from .lovasz import lovasz_softmax
from .mask_scores import MaskReward
from .modeling import captured_outputs, load_checkpoint_weights, share_file, share_files
from .rewards import Reward, check_reward, unknown_labels, unknown_labels_error


class RewardSegTrainer(Trainer):
    """Tune a semantic segmentation model (SegFormer) on a segmentation metric, as a reward.

    Args:
        model: a ``SegformerForSemanticSegmentation`` or ``UperNetForSemanticSegmentation`` (any model whose
            output has ``logits`` of shape ``(B, C, h, w)``, that takes ``pixel_values`` and has
            ``config.num_labels``). A model's ``auxiliary_head`` (UperNet's) is trained too, at
            ``config.auxiliary_loss_weight``; see ``RewardSegConfig.auxiliary_reward``.
        args: :class:`RewardSegConfig`.
        reward_fn: optional reward ``(tp, gt, pd) -> (...)`` of the per-class counts (see
            :mod:`hf_reward.rewards`) replacing the named ``args.reward``; works with both estimators.
        mask_reward_fn: optional reward of whole masks ``(pred (N, h, w), target (N, h, w)) -> (N,)``
            (see :mod:`hf_reward.mask_scores`) replacing ``args.reward``; for ``estimator="score"``.
        **kwargs: passed to ``transformers.Trainer`` (datasets, data_collator, compute_metrics, ...).

    Example::

        config = RewardSegConfig(output_dir="out", max_steps=200, per_device_train_batch_size=8)
        trainer = RewardSegTrainer(model=model, args=config, train_dataset=train, data_collator=collate)
        trainer.train()
    """

    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        args: RewardSegConfig,
        reward_fn: Reward | None = None,
        mask_reward_fn: MaskReward | None = None,
        **kwargs,
    ):
        if not isinstance(args, RewardSegConfig):
            raise TypeError(f"args must be a RewardSegConfig, got {type(args).__name__}")
        num_classes = model.config.num_labels
        if reward_fn is not None:
            check_reward(reward_fn, num_classes)
        weights = args.reward_class_weights
        if weights is not None and len(weights) != num_classes:
            raise ValueError(
                f"reward_class_weights has {len(weights)} weights but the model has {num_classes} classes"
            )
        if 0 <= args.ignore_index < num_classes:
            raise ValueError(f"ignore_index={args.ignore_index} is one of the model's {num_classes} class indices")
        metric_classes = getattr(kwargs.get("compute_metrics"), "num_classes", num_classes)
        if metric_classes != num_classes:
            raise ValueError(
                f"the model has {num_classes} classes but compute_metrics scores {metric_classes}: "
                "the model's head does not match the dataset"
            )
        super().__init__(model=model, args=args, **kwargs)
        self.num_classes = num_classes
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.loss_settings = args.loss_settings(reward_fn, mask_reward_fn, id2label)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)  # name -> per-step (sum, count)
        self.reward_state = RewardState()  # the scopes' counts and the ema baseline, saved with each checkpoint
        # UperNet's auxiliary head (None for SegFormer): its loss is added at config.auxiliary_loss_weight.
        head = getattr(model, "auxiliary_head", None)
        self.auxiliary_weight = float(getattr(model.config, "auxiliary_loss_weight", 0.0)) if head is not None else 0.0
        self.auxiliary_head = head if self.auxiliary_weight > 0 else None
        if args.auxiliary_reward and self.auxiliary_head is None:
            raise ValueError(
                f"auxiliary_reward=True, but the model ({type(model).__name__}) has no auxiliary head with a loss "
                "weight (UperNet has one: config.use_auxiliary_head and auxiliary_loss_weight > 0)"
            )
        self.auxiliary_reward_state = RewardState()  # the auxiliary head's own counts, with auxiliary_reward
        self.ref_model = None
        if args.kl_coef > 0:
            # One frozen copy of the starting weights: the parameters' memory again, no grads or
            # optimizer state, plus one no-grad forward per step.
            self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).requires_grad_(False)
            self.ref_model.to(self.args.device)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        _require_examples(self.train_dataset, "training")
        state_file = Path(str(resume_from_checkpoint), TRAINER_STATE_NAME)
        if isinstance(resume_from_checkpoint, str) and state_file.is_file() and self.args.max_steps > 0:
            saved = TrainerState.load_from_json(str(state_file))
            if saved.global_step >= self.args.max_steps:
                # A finished run: on a stream Trainer would still take a step past max_steps (transformers 5.24).
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = saved
                return TrainOutput(saved.global_step, 0.0, {})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, eval_dataset=None, *args, **kwargs) -> dict[str, float]:
        _require_examples(eval_dataset if eval_dataset is not None else self.eval_dataset, "evaluation")
        metrics = super().evaluate(eval_dataset, *args, **kwargs)
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
        labels, args = inputs["labels"], self.args
        head = self.auxiliary_head if model.training else None
        with captured_outputs(head) if head is not None else contextlib.nullcontext([]) as auxiliary:
            outputs = model(pixel_values=inputs["pixel_values"])
        logits = outputs.logits
        bad_labels = unknown_labels(labels, self.num_classes, args.ignore_index)
        given, labels = labels, torch.where(bad_labels, args.ignore_index, labels)  # no index error before the check
        if not model.training:
            loss = pixel_cross_entropy(logits, labels, args.ignore_index)
            self._check_step(loss, bad_labels, given, "evaluation")
            return (loss, outputs) if return_outputs else loss

        terms, out = self._head_terms(logits, labels, self.reward_state)
        auxiliary_out = None
        if auxiliary:
            if args.auxiliary_reward:
                auxiliary_terms, auxiliary_out = self._head_terms(auxiliary[0], labels, self.auxiliary_reward_state)
            else:  # UperNet's own auxiliary loss
                auxiliary_terms = {"ce": (1.0, pixel_cross_entropy(auxiliary[0], labels, args.ignore_index))}
            auxiliary_loss = sum(weight * value for weight, value in auxiliary_terms.values())
            terms["auxiliary_loss"] = (self.auxiliary_weight, auxiliary_loss)
        if self.ref_model is not None:
            # Same mode as the policy (decode-head batch norm uses batch statistics), so KL is 0 at the start.
            self.ref_model.train(model.training)
            with torch.no_grad():
                ref_logits = self.ref_model(pixel_values=inputs["pixel_values"]).logits
            terms["kl"] = (args.kl_coef, policy.kl_divergence(logits, ref_logits, labels, args.ignore_index).mean())
        loss = sum(weight * value for weight, value in terms.values())

        self._check_step(loss, bad_labels, given, f"training step {self.state.global_step + 1}")
        labelled = (labels != args.ignore_index).any()  # an all-void micro-batch has no surrogate value to log
        for name, (_, value) in terms.items():
            if name != "reward_loss":
                self._add_metric(name, value.detach() * labelled, labelled)
        if out is not None:
            self.reward_state.update(out, self.loss_settings, step_ends=self.accelerator.sync_gradients)
            self._record(out)
        if auxiliary_out is not None:
            self.auxiliary_reward_state.update(
                auxiliary_out, self.loss_settings, step_ends=self.accelerator.sync_gradients
            )
        return (loss, outputs) if return_outputs else loss

    def _head_terms(
        self, logits: torch.Tensor, labels: torch.Tensor, state: RewardState
    ) -> tuple[dict[str, tuple[float, torch.Tensor]], RewardLossOutput | None]:
        """One head's weighted loss terms (name -> (weight, value)), and its reward loss's output (or ``None``)."""
        args, terms, out = self.args, {}, None
        if args.reward_weight > 0:
            out = reward_loss(logits, labels, self.loss_settings, state=state, reduce_counts=self._sum_over_processes)
            terms["reward_loss"] = (args.reward_weight, out.loss)
        if args.ce_weight > 0:
            terms["ce_loss"] = (args.ce_weight, pixel_cross_entropy(logits, labels, args.ignore_index))
        if args.lovasz_weight > 0:
            terms["lovasz_loss"] = (args.lovasz_weight, lovasz_softmax(logits, labels, args.ignore_index))
        return terms, out

    def _sum_over_processes(self, counts: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(counts, reduction="sum") if self.accelerator.num_processes > 1 else counts

    def _check_step(self, loss: torch.Tensor, bad_labels: torch.Tensor, labels: torch.Tensor, where: str) -> None:
        # One host sync per step checks both, before backward and the optimizer step: no wrong
        # reward is used and no corrupted weights are ever saved.
        if bool(loss.isfinite() & ~bad_labels.any()):
            return
        if bad_labels.any():
            images = bad_labels.flatten(1).any(1).nonzero().flatten().tolist()
            raise unknown_labels_error(
                labels[bad_labels].unique().tolist(),
                self.num_classes,
                self.args.ignore_index,
                f"{where}, images {images} of the batch",
            )
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at {where}: the logits or the reward produced NaN/inf. No update was "
            "applied; lower the learning rate, or check the data."
        )

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        # fp16's grad scaler skips non-finite steps itself (and lowers its scale); otherwise a
        # non-finite gradient with a finite loss must not reach the optimizer or a checkpoint.
        if self.accelerator.scaler is None and not math.isfinite(float(grad_norm)):
            raise FloatingPointError(
                f"non-finite gradient (norm {float(grad_norm)}) at training step {self.state.global_step + 1}, with a "
                "finite loss. No update was applied and no checkpoint written; lower the learning rate."
            )
        return grad_norm

    def _add_metric(self, name: str, total: torch.Tensor, count) -> None:
        self._metrics[name].append(torch.stack([total.float(), torch.as_tensor(count, device=total.device).float()]))

    def _record(self, out: RewardLossOutput) -> None:
        valid = out.valid_images
        k = out.rewards.shape[0]
        self._add_metric("reward", (out.rewards * valid).sum(), valid.sum() * k)
        self._add_metric("greedy_reward", (out.greedy_rewards * valid).sum(), valid.sum())
        self._add_metric("entropy", (out.entropy * out.valid_pixels).sum(), out.valid_pixels.sum())
        if out.scope_rewards is not None:
            self._add_metric("scope_reward", out.scope_rewards.sum(), k)
        if out.advantages is not None:
            adv = out.advantages[out.carried]
            self._add_metric("frac_zero_advantage", (adv == 0).sum(), out.carried.sum())
            self._add_metric("advantage_std", adv.std(correction=0).nan_to_num(), (out.carried.sum() > 0))
        if out.weight_abs is not None:
            self._add_metric("weight_abs", (out.weight_abs * valid).sum(), valid.sum())
            self._add_metric("frac_zero_weight", (out.frac_zero_weight * valid).sum(), valid.sum())
        if out.tail_threshold is not None and out.tail_threshold.isfinite():
            self._add_metric("tail_threshold", out.tail_threshold, 1)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        epochs, batches = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None or self.args.ignore_data_skip or has_length(self.train_dataset):
            return epochs, batches
        state_file = os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(state_file):  # Trainer starts afresh then
            return epochs, batches
        # Without a length, Trainer takes an epoch to be max_steps steps and skips global_step batches of the
        # first pass; a stream shorter than that started its next pass (epoch) before (transformers 5.24). The
        # checkpoint's state.epoch is pass + batches of it / (its max_steps * accumulation), counted after each
        # step: a whole number k ends pass k - 1 (it never starts pass k), whatever max_steps this run has.
        saved = TrainerState.load_from_json(state_file)
        epoch = max(math.ceil(saved.epoch) - 1, 0)
        return epoch, round((saved.epoch - epoch) * saved.max_steps * self.args.gradient_accumulation_steps)

    def _run_epoch(self, *, epoch, train_dataloader, **kwargs):
        # Random augmentation is keyed by the epoch (hf_reward.data). accelerate 1.15 passes the DataLoader's
        # set_epoch on to a map-style dataset only when no sampler in between has one: not in an epoch resumed
        # mid-way, not across processes. So tell the dataset here, before this epoch's workers copy it.
        set_epoch = getattr(train_dataloader.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return super()._run_epoch(epoch=epoch, train_dataloader=train_dataloader, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        with _interrupts_deferred():  # Ctrl-C while a checkpoint is written stops the run once it is whole
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # the process that wrote the files (the model file is written 0600)
            share_files(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Trainer's raw load misses SegFormer's legacy key names (see load_checkpoint_weights).
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        # The reward's state lives outside the model and the optimizer: one file per process (the ema is each
        # process's own; the counts are the same everywhere).
        for name, reward_state in self._reward_states().items():
            state = {key: value.detach().cpu().contiguous() for key, value in reward_state.state_dict().items()}
            if state:
                Path(output_dir).mkdir(parents=True, exist_ok=True)  # other processes may get here before the main
                path = Path(output_dir, f"{name}_{self.args.process_index}.safetensors")
                safetensors.torch.save_file(state, path)
                share_file(path)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        for name, reward_state in self._reward_states().items():
            path = Path(checkpoint or "", f"{name}_{self.args.process_index}.safetensors")
            if checkpoint is not None and path.is_file():
                reward_state.load_state_dict(safetensors.torch.load_file(path, device=str(self.args.device)))

    def _reward_states(self) -> dict[str, RewardState]:
        return {"reward_state": self.reward_state, "auxiliary_reward_state": self.auxiliary_reward_state}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._metrics:
            names = sorted(self._metrics)
            totals = torch.stack([torch.stack(self._metrics[name]).sum(0) for name in names])  # (M, 2)
            totals = self._sum_over_processes(totals)
            for name, (total, count) in zip(names, totals.tolist()):
                if count > 0:
                    logs[name] = total / count
            self._metrics.clear()
        super().log(logs, start_time)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT (Ctrl-C) inside the block and raise ``KeyboardInterrupt`` after it, so that what the block
    writes is whole; elsewhere than the main thread (where no handler can be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _require_examples(dataset, split: str) -> None:
    """Raise ``ValueError`` for an empty split: accelerate would fail later with "Batch does not contain any data"."""
    if dataset is None or isinstance(dataset, dict):
        return
    empty = len(dataset) == 0 if hasattr(dataset, "__len__") else next(iter(dataset), None) is None
    if empty:
        raise ValueError(f"the {split} dataset is empty: it yields no example. Check its source, split name and size.")
