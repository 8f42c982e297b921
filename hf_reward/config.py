"""RewardSegConfig: TrainingArguments plus the reward-tuning knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .baselines import BASELINES
from .local import LOCAL_REWARDS
from .loss import ESTIMATORS, REWARD_SCOPES
from .policy import SAMPLE_RESOLUTIONS
from .rewards import REWARDS


@dataclass
class RewardSegConfig(TrainingArguments):
    """Configuration of :class:`hf_reward.RewardSegTrainer`.

    Defaults that differ from ``TrainingArguments``, all in one place:

    - ``learning_rate=1e-4``: the AdamW rate that raised CamVid mIoU most over cross-entropy at the
      same rate in the study (README); the reward gradient's scale does not matter to AdamW.
    - ``remove_unused_columns=False``: the trainer needs ``labels``, which SegFormer's forward
      would also accept but which Trainer must not drop for image datasets with extra columns.
    - ``logging_steps=10``, ``report_to="none"``.
    - ``lr_scheduler_type="constant"``: tuning and its cross-entropy control share one schedule.

    Example::

        >>> config = RewardSegConfig(output_dir="out", num_samples=4, baseline="loo", max_steps=100)
    """

    num_samples: int = field(default=4, metadata={"help": "K, the number of masks sampled per image."})
    estimator: str = field(
        default="score",
        metadata={
            "help": "Gradient estimator: 'score' (REINFORCE with a baseline) or 'local' (per-pixel local "
            "expectation over each pixel's class, named rewards only; far lower variance)."
        },
    )
    baseline: str = field(
        default="loo",
        metadata={"help": f"Baseline of the score estimator, one of {BASELINES}. 'loo' needs num_samples >= 2."},
    )
    reward: str = field(default="miou", metadata={"help": f"Reward per sampled mask, one of {tuple(REWARDS)}."})
    reward_scope: str = field(
        default="image",
        metadata={
            "help": "What the reward is computed over: 'image' (per-image), 'batch' (one confusion matrix over the "
            "batch) or 'dataset' (the batch plus a running matrix of past batches). 'batch' and 'dataset' need "
            "estimator='local'."
        },
    )
    dataset_confusion_decay: float = field(
        default=0.9,
        metadata={"help": "reward_scope='dataset': running = decay * running + this batch's sampled counts."},
    )
    sample_resolution: str = field(
        default="logits",
        metadata={
            "help": "'logits': sample at SegFormer's native H/4 x W/4 with labels downsampled by nearest; "
            "'labels': upsample logits bilinearly to the label size first, as evaluation does."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Policy temperature tau: samples from softmax(logits / tau)."})
    ema_decay: float = field(default=0.9, metadata={"help": "Decay of the running-mean reward of baseline='ema'."})
    normalize_advantages: bool = field(
        default=False, metadata={"help": "Divide the score estimator's advantages by their std in each batch."}
    )
    mle_weight: float = field(
        default=0.0, metadata={"help": "Weight of a pixel cross-entropy term on the ground truth, added to the loss."}
    )
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the exact per-pixel KL(p_theta || p_ref) to the frozen starting model (a trust "
            "region). > 0 keeps one frozen copy of the model in memory."
        },
    )
    ignore_index: int = field(default=255, metadata={"help": "Label value of void pixels, excluded everywhere."})
    skip_nonfinite_steps: bool = field(
        default=False,
        metadata={
            "help": "On a NaN/inf loss, skip the step (zero loss, counted in the 'nonfinite_steps' metric) instead "
            "of stopping with an error."
        },
    )

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the trainer reads 'labels' itself."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    # TrainingArguments's exact annotation: HfArgumentParser reads `str | list[str]` as a list and parses "none" wrong.
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    def __post_init__(self):
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.reward not in REWARDS:
            raise ValueError(
                f"reward must be one of {tuple(REWARDS)}, got {self.reward!r}; "
                "for a custom reward pass reward_fn= to RewardSegTrainer"
            )
        if self.reward_scope not in REWARD_SCOPES:
            raise ValueError(f"reward_scope must be one of {REWARD_SCOPES}, got {self.reward_scope!r}")
        if self.sample_resolution not in SAMPLE_RESOLUTIONS:
            raise ValueError(f"sample_resolution must be one of {SAMPLE_RESOLUTIONS}, got {self.sample_resolution!r}")
        if self.estimator == "score":
            if self.baseline == "loo" and self.num_samples < 2:
                raise ValueError("baseline='loo' needs num_samples >= 2 (the other samples form the baseline)")
            if self.baseline == "sample" and self.num_samples % 2:
                raise ValueError(
                    f"baseline='sample' pairs each gradient sample with one baseline sample: num_samples must be even, "
                    f"got {self.num_samples}"
                )
            if self.reward_scope != "image":
                raise ValueError(f"reward_scope={self.reward_scope!r} needs estimator='local'")
        elif self.reward not in LOCAL_REWARDS:
            raise ValueError(f"estimator='local' has closed forms for {LOCAL_REWARDS}, not reward={self.reward!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("ema_decay", "dataset_confusion_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.mle_weight < 0 or self.kl_coef < 0:
            raise ValueError(f"mle_weight and kl_coef must be >= 0, got {self.mle_weight} and {self.kl_coef}")
