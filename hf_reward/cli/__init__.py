"""The application layer: what the ``hf-reward`` commands (and ``scripts/``) run, on top of the library.

- :mod:`~hf_reward.cli.tune` (its job in :mod:`~hf_reward.cli.tune_job`), :mod:`~hf_reward.cli.pretrain`,
  :mod:`~hf_reward.cli.calibrate`, :mod:`~hf_reward.cli.evaluate`: one command each, with its ``main``;
- :mod:`~hf_reward.cli.arguments`: the shared argument dataclasses, parsing, one-line errors, threads;
- :mod:`~hf_reward.cli.data`: the datasets a command names;
- :mod:`~hf_reward.cli.models`: the model a command starts from;
- :mod:`~hf_reward.cli.runs`: training runs, their cache keys and output directories;
- :mod:`~hf_reward.cli.evaluation`: scoring and calibrating a model.

The library (``hf_reward``) never imports this package; the experiments (``hf_reward.experiments``) do.
"""

from .arguments import (
    DataArguments,
    ModelArguments,
    UsageError,
    default_threads,
    field_default,
    parse_config,
    run_script,
    set_resume_hint,
)

__all__ = [
    "DataArguments",
    "ModelArguments",
    "UsageError",
    "default_threads",
    "field_default",
    "parse_config",
    "run_script",
    "set_resume_hint",
]
