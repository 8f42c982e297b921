"""The ``hf-reward`` command: one subcommand per job, as ``trl sft`` and ``trl grpo`` are TRL's.

    hf-reward tune --metric boundary_f --dataset camvid          # decode, tune where dev shows it pays, ship
    hf-reward evaluate --model_name_or_path outputs/default      # as its run scored it, with its decoder
    accelerate launch -m hf_reward.console tune --config configs/cityscapes_b0.yaml   # several processes
    hf-reward tune --help                                        # the options to know first; --help_all: all

Each subcommand is the ``main`` of a module (:data:`COMMANDS`), imported only when it runs, so that
``hf-reward --help`` answers at once; ``scripts/<name>.py`` runs the same ``main``. This module sits
above the three layers: it names commands of the application (``hf_reward.cli``) and of the
experiments (``hf_reward.experiments``), and nothing imports it.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (its module, what it does)
COMMANDS = {
    "tune": ("hf_reward.cli.tune", "make a model better at your metric: decode, tune where dev shows it pays, ship"),
    "pretrain": ("hf_reward.cli.pretrain", "cross-entropy training: the start that tune decodes and tunes"),
    "calibrate": ("hf_reward.cli.calibrate", "fit exact per-class offsets for a reward and fold them into a model"),
    "evaluate": ("hf_reward.cli.evaluate", "score a model on a split, decoded as it records"),
    "study": ("hf_reward.experiments.study_command", "run a study: does tuning add to the best decoder?"),
    "adapt": ("hf_reward.experiments.adapt_command", "day -> dusk adaptation workflows on CamVid"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    listed = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return (
        "usage: hf-reward <command> [--config FILE.yaml] [--option value ...]\n\n"
        f"commands:\n{listed}\n\n"
        "hf-reward <command> --help lists a command's options; accelerate launch -m hf_reward.console <command> ... "
        "runs it on several processes."
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}: one of {', '.join(COMMANDS)} (see hf-reward --help)", file=sys.stderr)
        sys.exit(2)
    from .cli.arguments import run_script

    sys.argv = [f"hf-reward {name}", *rest]  # the usage line, and --threads, read sys.argv
    run_script(importlib.import_module(COMMANDS[name][0]).main)


if __name__ == "__main__":
    main()
