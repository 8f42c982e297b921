"""Run a study (hf_reward.study): does tuning add to the best post-hoc decoder? Cached, resumable, one command.

    python scripts/study.py                                   # configs/study_camvid.yaml, CPU
    python scripts/study.py --config configs/study_camvid_more.yaml
    python scripts/study.py --only_arms ce,local --only_seeds 0          # a subset
    python scripts/study.py --full_resolution                 # 360 x 480 on a GPU, in <output_dir>_full

Writes ``<output_dir>/results.md`` and ``curves.png`` and prints the tables; see :mod:`hf_reward.study`
for the protocol and the caching.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_reward.cli import UsageError, parse_config, run_script
from hf_reward.study import StudyConfig, load_data, pretrained_checkpoint, run_all, score_model
from hf_reward.study_report import report

DEFAULT_CONFIG = "configs/study_camvid.yaml"


@dataclass
class StudyArguments:
    """which part of the study to run, and how"""

    only_arms: str | None = field(
        default=None, metadata={"help": "Comma-separated subset of the config's arms (the control always runs)."}
    )
    only_seeds: str | None = field(default=None, metadata={"help": "Comma-separated subset of the config's seeds."})
    jobs: int | None = field(default=None, metadata={"help": "Parallel runs (default: 2 on CPU, 1 on a GPU)."})
    full_resolution: bool = field(
        default=False,
        metadata={"help": "The config's full_resolution_size (meant for a GPU), in output_dir + '_full'."},
    )


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--config" not in argv:
        argv = ["--config", DEFAULT_CONFIG, *argv]
    try:
        cfg, cli = parse_config([StudyConfig, StudyArguments], argv, description=__doc__.split("\n\n")[0])
    except ValueError as err:
        raise UsageError(str(err)) from err
    if cli.full_resolution:
        cfg = dataclasses.replace(cfg, size=cfg.full_resolution_size, output_dir=cfg.output_dir + "_full")
    out = Path(cfg.output_dir)
    started = time.perf_counter()
    data, id2label = load_data(cfg)
    start = pretrained_checkpoint(cfg, data, id2label)
    start_scores = score_model(cfg, start, data, id2label)
    try:
        runs = cfg.runs(
            cli.only_arms.split(",") if cli.only_arms else None,
            [int(s) for s in cli.only_seeds.split(",")] if cli.only_seeds else None,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    results = run_all(cfg, runs, start, cli.jobs or (1 if torch.cuda.is_available() else 2))
    (out / "start.json").write_text(json.dumps(start_scores, indent=1))
    print(report(cfg, start_scores, results, id2label, out, minutes=(time.perf_counter() - started) / 60))


if __name__ == "__main__":
    run_script(main)
