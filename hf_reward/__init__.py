"""hf-reward: tune Hugging Face SegFormer models on mean IoU by reward optimisation."""

from .loss import ReinforceOutput, reinforce_loss
from .rewards import confusion_matrix, dice, miou, pixel_accuracy

__all__ = ["ReinforceOutput", "reinforce_loss", "confusion_matrix", "dice", "miou", "pixel_accuracy"]
