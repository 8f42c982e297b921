"""hf-reward: tune Hugging Face SegFormer models on the metric you report, by reward optimisation."""

from .config import RewardSegConfig
from .loss import LossSettings, ReinforceOutput, RewardLossOutput, RewardState, reinforce_loss, reward_loss
from .rewards import REWARDS, class_counts, confusion_matrix, get_reward
from .trainer import RewardSegTrainer

__all__ = [
    "RewardSegConfig",
    "RewardSegTrainer",
    "LossSettings",
    "RewardLossOutput",
    "RewardState",
    "reward_loss",
    "ReinforceOutput",
    "reinforce_loss",
    "REWARDS",
    "class_counts",
    "confusion_matrix",
    "get_reward",
]
