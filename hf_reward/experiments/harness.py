"""What the experiments share: help text of config fields, every run's quiet TrainingArguments, config checks,
file hashes for cache keys, mean ± sd.

The experiments (:mod:`.study`, :mod:`.adaptation_benchmark`) cache every stage under a key:
:func:`hf_reward.cli.runs.settings_hash` of what decides it, with :func:`file_hash` of the weights it
starts from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
from pathlib import Path

import torch
from transformers import PrinterCallback

from ..cli.runs import PretrainConfig
from ..config import RewardSegConfig

# The SegFormer the CamVid studies build (2.06M parameters), and the adaptation benchmark's source model.
STUDY_MODEL = {"hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 2, 1], "decoder_hidden_size": 128}


def doc(text: str) -> dict:
    return {"help": text}


# Every study run's TrainingArguments: quiet, no checkpoints, dev and validation scored during training.
STUDY_DEFAULTS = dict(
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
    per_device_eval_batch_size=16,
    batch_eval_metrics=True,
    eval_strategy="steps",
    logging_steps=10,
    dataloader_num_workers=0,
    disable_tqdm=True,
)


def checked_args(where: str, fields: dict, make):
    """``make()``, a RewardSegConfig (or a subclass) built from a config's ``fields``, or a ``ValueError`` that names
    ``where`` and the unknown or refused field, instead of an error deep in a run."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(RewardSegConfig)})
    if unknown:
        raise ValueError(f"{where}: {unknown} are not RewardSegConfig fields")
    try:
        return make()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def study_args(output_dir: str | Path, fields: dict, **run) -> RewardSegConfig:
    """A study run's RewardSegConfig: :data:`STUDY_DEFAULTS`, then ``fields``, then ``run``."""
    return RewardSegConfig(**{**STUDY_DEFAULTS, "output_dir": str(output_dir), **fields, **run})


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def pretrain_config(output_dir: str | Path, fields: dict) -> PretrainConfig:
    """The cross-entropy pretraining of a study-like benchmark: :data:`STUDY_DEFAULTS` with its progress bar,
    then ``fields``, scored once at the end."""
    return PretrainConfig(
        **{
            **STUDY_DEFAULTS,
            "output_dir": str(output_dir),
            "disable_tqdm": False,
            **fields,
            "eval_steps": fields.get("max_steps", 600),
        }
    )


def quiet(trainer):
    trainer.remove_callback(PrinterCallback)  # parallel runs: one line per finished run instead of every log
    return trainer


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    """``"mean ± sd"`` of ``values`` times ``scale``; one value alone, with no spread to report."""
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"
