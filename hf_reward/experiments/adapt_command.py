"""Adapt a model from day to dusk on CamVid: every workflow over seeds, cached, one command.

    python scripts/adapt.py --config configs/adapt_camvid_dusk.yaml
    python scripts/adapt.py --config configs/adapt_camvid_dusk.yaml --only_workflows source,calibration --only_seeds 0

Writes ``<output_dir>/results.md`` and prints the table; see :mod:`hf_reward.experiments.adaptation_benchmark`
for the protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.cli import UsageError, parse_config
from hf_reward.cli.arguments import no_such_directory
from hf_reward.experiments.adaptation_benchmark import AdaptConfig, report, run_all


@dataclass
class AdaptArguments:
    """which part of the benchmark to run"""

    only_workflows: str | None = field(default=None, metadata={"help": "Comma-separated subset of the workflows."})
    only_seeds: str | None = field(default=None, metadata={"help": "Comma-separated subset of the seeds."})


def main(argv: list[str] | None = None):
    try:
        cfg, cli = parse_config([AdaptConfig, AdaptArguments], argv, description=__doc__.split("\n\n")[0])
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not Path(cfg.data_root).is_dir():  # before anything loads or trains
        raise UsageError(f"data_root {cfg.data_root!r}: {no_such_directory(cfg.data_root)}")
    workflows = cli.only_workflows.split(",") if cli.only_workflows else None
    unknown = [w for w in workflows or [] if w not in cfg.workflows()]
    if unknown:
        raise UsageError(f"unknown workflows {unknown}; the config has {cfg.workflows()}")
    started = time.perf_counter()
    records = run_all(cfg, workflows, [int(s) for s in cli.only_seeds.split(",")] if cli.only_seeds else None)
    table = report(records)
    if workflows is None and cli.only_seeds is None:
        (Path(cfg.output_dir) / "results.md").write_text(table + "\n")
    print(f"{table}\n\n{(time.perf_counter() - started) / 60:.1f} min")
