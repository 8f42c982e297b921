"""hf-reward: tune Hugging Face SegFormer models on mean IoU by reward optimisation."""

from .config import RewardSegConfig
from .loss import ReinforceOutput, reinforce_loss
from .rewards import confusion_matrix, dice, miou, pixel_accuracy
from .trainer import RewardSegTrainer

__all__ = [
    "RewardSegConfig",
    "RewardSegTrainer",
    "ReinforceOutput",
    "reinforce_loss",
    "confusion_matrix",
    "dice",
    "miou",
    "pixel_accuracy",
]
