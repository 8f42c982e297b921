"""hf-reward: make Hugging Face segmentation models better at the metric you report.

The names below load on first use (PEP 562), so that ``import hf_reward.<module>`` and the command line's
``--help`` and one-line errors pay only for what they use, not for ``transformers.Trainer``.
"""

import importlib

# name -> the module that defines it
_EXPORTS = {
    "RewardSegConfig": ".config",
    "RewardSegTrainer": ".trainer",
    "segment": ".decoders",
    "LossSettings": ".loss",
    "RewardLossOutput": ".loss",
    "RewardState": ".loss",
    "reward_loss": ".loss",
    "ReinforceOutput": ".loss",
    "reinforce_loss": ".loss",
    "REWARDS": ".rewards",
    "class_counts": ".rewards",
    "confusion_matrix": ".rewards",
    "get_reward": ".rewards",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_reward' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
