"""RewardSegConfig: TrainingArguments plus the reward-tuning knobs, defaulting to the recommended recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .baselines import BASELINES
from .loss import LossSettings
from .mask_scores import MASK_REWARDS, MaskReward, get_mask_reward
from .rewards import REWARDS, Reward, get_reward


@dataclass
class RewardSegConfig(TrainingArguments):
    """Configuration of :class:`hf_reward.RewardSegTrainer`.

    The defaults are the reward recipe that measured best on the CamVid study's development
    split (docs/results.md): the local estimator on the dataset-scope mIoU at temperature 0.5,
    one sample per image, plus pixel cross-entropy at weight 1, AdamW at a constant 3e-5. On that
    study no reward recipe beat calibrating the starting model (:mod:`hf_reward.calibrate`).
    Other defaults that differ from ``TrainingArguments``:

    - ``remove_unused_columns=False``: the trainer reads ``labels`` itself, and image datasets
      often carry other columns that Trainer must not drop.
    - ``logging_steps=10``, ``report_to="none"``.
    - ``dataloader_pin_memory`` off where there is no GPU (pinned memory only serves copies to one).

    The loss is ``reward_weight * reward loss + ce_weight * cross-entropy + lovasz_weight *
    Lovász-softmax + kl_coef * KL``. The reward loss has the scale of the reward itself (its
    gradient is that of the expected metric, see :mod:`hf_reward.loss`), so weights of order 1
    balance the terms; ``reward_weight=0`` with ``ce_weight=1`` is plain cross-entropy
    fine-tuning through the same trainer.

    Example::

        >>> config = RewardSegConfig(output_dir="out", max_steps=100)                  # the recipe
        >>> config = RewardSegConfig(output_dir="out", reward="mean_accuracy")         # another metric
        >>> config = RewardSegConfig(output_dir="out", reward_weight=0.0, ce_weight=0.0, lovasz_weight=1.0)  # Lovász
    """

    reward: str = field(
        default="miou",
        metadata={
            "help": f"Metric to maximise: a reward of the counts, one of {tuple(REWARDS)}, or of whole masks, one of "
            f"{MASK_REWARDS} (reward_scope='image'; estimator='score', or 'local' for boundary_f); custom ones: "
            "reward_fn= or mask_reward_fn= of RewardSegTrainer."
        },
    )
    boundary_tolerance: str = field(
        default="2px",
        metadata={
            "help": "reward='boundary_f': the matching tolerance, '<pixels>px' or '<percent of the diagonal>%%', at "
            "the sampling resolution (sample_resolution='labels' scores at the labels' size, as evaluation does)."
        },
    )
    reward_thing_classes: list[str] | None = field(
        default=None,
        metadata={"help": "reward='object_f1': the names of the classes whose connected components are objects."},
    )
    reward_beta: float = field(
        default=1.0, metadata={"help": "reward='f_beta': recall weighs beta^2 times precision."}
    )
    reward_class_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "reward 'miou' or 'f_beta': one weight per class for the mean over classes (0 drops a class)."
        },
    )
    estimator: str = field(
        default="local",
        metadata={
            "help": "Gradient estimator: 'local' (per-pixel local expectation over each pixel's class; low variance) "
            "or 'score' (REINFORCE with a baseline)."
        },
    )
    reward_scope: str = field(
        default="dataset",
        metadata={
            "help": "What the reward is computed over: 'dataset' (the optimizer step's batch plus a running matrix of "
            "past steps, as evaluation scores a split), 'batch' (the step's batch) or 'image' (each image). "
            "'batch' and 'dataset' need estimator='local'."
        },
    )
    num_samples: int = field(default=1, metadata={"help": "K, the number of masks sampled per image."})
    temperature: float = field(
        default=0.5, metadata={"help": "Policy temperature tau: samples from softmax(logits / tau)."}
    )
    baseline: str = field(
        default="loo",
        metadata={"help": f"Baseline of estimator='score', one of {BASELINES}. 'loo' needs num_samples >= 2."},
    )
    sample_resolution: str = field(
        default="logits",
        metadata={
            "help": "'logits': sample at the logits' size (SegFormer: H/4 x W/4; UperNet: the input size), labels "
            "downsampled (nearest-exact); "
            "'labels': upsample logits bilinearly to the label size first, as evaluation does."
        },
    )
    dataset_confusion_decay: float = field(
        default=0.9,
        metadata={
            "help": "reward_scope='dataset': per optimizer step, running = decay * running + the step's counts."
        },
    )
    ema_decay: float = field(default=0.9, metadata={"help": "Decay of the running-mean reward of baseline='ema'."})
    tail_fraction: float = field(
        default=1.0,
        metadata={
            "help": "q < 1 (reward_scope='image'): maximise the mean reward of the images in the lowest q by their "
            "decoded (argmax) reward, a CVaR over images (e.g. 0.1 with reward='miou_gt' for the worst 10%%); "
            "the threshold is the q-quantile of the last tail_window images' decoded rewards. 1: every image."
        },
    )
    tail_window: int = field(
        default=512, metadata={"help": "tail_fraction < 1: the recent images whose decoded rewards set the threshold."}
    )
    switch_around: str = field(
        default="sample",
        metadata={
            "help": "estimator='local', reward_scope='image': credit each pixel with its switched rewards around "
            "'sample' (unbiased for the expected reward) or 'decoded', the argmax mask evaluation scores (a "
            "surrogate: each pixel's expected reward with the others at the decoded mask)."
        },
    )
    reward_weight: float = field(default=1.0, metadata={"help": "Weight of the reward loss (0: no sampling at all)."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of pixel cross-entropy on the ground truth."})
    lovasz_weight: float = field(
        default=0.0, metadata={"help": "Weight of the Lovász-softmax loss (Berman et al. 2018)."}
    )
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the exact per-pixel KL(p_theta || p_ref) to the frozen starting model (a trust "
            "region). > 0 keeps one frozen copy of the model in memory."
        },
    )
    auxiliary_reward: bool = field(
        default=False,
        metadata={
            "help": "Models with an auxiliary head (UperNet): train it on the main head's loss (the reward, "
            "cross-entropy and Lovász at their weights; its own dataset-scope counts) instead of cross-entropy "
            "alone, UperNet's own auxiliary loss. Either way at the model's config.auxiliary_loss_weight (0.4)."
        },
    )
    ignore_index: int = field(default=255, metadata={"help": "Label value of void pixels, excluded everywhere."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Scripts: start afresh in an output_dir that holds another run (its checkpoints are removed "
            "first). Without it, a run of the same settings resumes from its latest checkpoint and a run of other "
            "settings is refused."
        },
    )

    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer reads 'labels' itself."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    # TrainingArguments's exact annotation: HfArgumentParser reads `str | list[str]` as a list and parses "none" wrong.
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    def __post_init__(self):
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be > 0 (or -1 to train num_train_epochs), got {self.max_steps}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be finite and >= 0, got {self.learning_rate}")
        super().__post_init__()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        for name in (
            "reward_beta",
            "tail_fraction",
            "dataset_confusion_decay",
            "ema_decay",
            "reward_weight",
            "ce_weight",
            "lovasz_weight",
            "kl_coef",
            "temperature",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("reward_weight", "ce_weight", "lovasz_weight", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.reward_weight == self.ce_weight == self.lovasz_weight == 0:
            raise ValueError("reward_weight, ce_weight and lovasz_weight are all 0: there is nothing to train on")
        for name in ("ema_decay", "dataset_confusion_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.reward_beta <= 0:
            raise ValueError(f"reward_beta must be > 0, got {self.reward_beta}")
        weights = self.reward_class_weights
        if weights is not None and not (all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0):
            raise ValueError(f"reward_class_weights must be finite, >= 0 and not all 0, got {weights}")
        self.loss_settings()  # validates the estimator's settings

    def count_reward(self) -> Reward | None:
        """The named reward of the counts (what evaluation reports as ``reward``); ``None`` for a mask reward."""
        if self.reward in MASK_REWARDS:
            return None
        return get_reward(self.reward, beta=self.reward_beta, class_weights=self.reward_class_weights)

    def loss_settings(
        self,
        reward_fn: Reward | None = None,
        mask_reward_fn: MaskReward | None = None,
        id2label: dict[int, str] | None = None,
    ) -> LossSettings:
        """The :class:`hf_reward.loss.LossSettings` of these arguments, rewarding ``reward_fn`` or ``mask_reward_fn``
        if given. A named mask reward needs the model's ``id2label`` (its classes and, for objects, their names)."""
        reward, mask_reward = reward_fn, mask_reward_fn
        if reward is None and mask_reward is None:
            if self.reward in MASK_REWARDS:
                mask_reward = self._mask_reward(id2label)
            else:
                reward = self.count_reward()
        return LossSettings(
            reward=reward,
            estimator=self.estimator,
            reward_scope=self.reward_scope,
            num_samples=self.num_samples,
            temperature=self.temperature,
            baseline=self.baseline,
            sample_resolution=self.sample_resolution,
            ignore_index=self.ignore_index,
            dataset_confusion_decay=self.dataset_confusion_decay,
            ema_decay=self.ema_decay,
            mask_reward=mask_reward,
            tail_fraction=self.tail_fraction,
            tail_window=self.tail_window,
            switch_around=self.switch_around,
        )

    def _mask_reward(self, id2label: dict[int, str] | None) -> MaskReward:
        if id2label is None:  # validation in __post_init__: the classes come with the trainer's model
            id2label = {i: name for i, name in enumerate(self.reward_thing_classes or ["thing"])}
        ids = {str(name): i for i, name in id2label.items()}
        unknown = [name for name in self.reward_thing_classes or [] if name not in ids]
        if unknown:
            raise ValueError(f"reward_thing_classes {unknown} are not classes of the model ({list(ids)})")
        return get_mask_reward(
            self.reward,
            len(id2label),
            tolerance=self.boundary_tolerance,
            thing_ids=[ids[name] for name in self.reward_thing_classes or []],
            ignore_index=self.ignore_index,
        )
