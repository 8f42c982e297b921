"""Run a study: does tuning add to the best post-hoc decoder? Cached, resumable, one command.

    python scripts/study.py                                   # configs/study_camvid.yaml, CPU
    python scripts/study.py --config configs/study_camvid_more.yaml
    python scripts/study.py --only_arms ce,local --only_seeds 0          # a subset
    python scripts/study.py --full_resolution                 # 360 x 480 on a GPU, in <output_dir>_full
    python scripts/study.py --config configs/study_camvid_folds.yaml     # cross-sequence: one fold per sequence
    python scripts/study.py --config configs/study_camvid_folds.yaml --held_out 0001TP   # one fold

Writes ``<output_dir>/results.md`` and ``curves.png`` and prints the tables (with folds: each fold's in
``<output_dir>/fold_<sequence>/``, and the pooled report with bootstrap intervals in ``<output_dir>/results.md``);
see :mod:`hf_reward.experiments.study` for the protocol and the caching.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_reward.cli import UsageError, parse_config, set_resume_hint
from hf_reward.cli.arguments import no_such_directory
from hf_reward.experiments.study import (
    StudyConfig,
    load_study_data,
    pretrained_checkpoint,
    run_all,
    score_model,
    scores_path,
)
from hf_reward.experiments.study_report import fold_report, report

DEFAULT_CONFIG = "configs/study_camvid.yaml"


@dataclass
class StudyArguments:
    """which part of the study to run, and how"""

    only_arms: str | None = field(
        default=None, metadata={"help": "Comma-separated subset of the config's arms (the control always runs)."}
    )
    only_seeds: str | None = field(default=None, metadata={"help": "Comma-separated subset of the config's seeds."})
    only_horizons: str | None = field(
        default=None, metadata={"help": "Comma-separated subset of the config's horizons."}
    )
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
    if not Path(cfg.data_root).is_dir():  # before anything loads or trains
        raise UsageError(f"data_root {cfg.data_root!r}: {no_such_directory(cfg.data_root)}")
    if cli.full_resolution:
        cfg = dataclasses.replace(cfg, size=cfg.full_resolution_size, output_dir=cfg.output_dir + "_full")
    try:
        runs = cfg.runs(
            cli.only_arms.split(",") if cli.only_arms else None,
            [int(s) for s in cli.only_seeds.split(",")] if cli.only_seeds else None,
            cli.only_horizons.split(",") if cli.only_horizons else None,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    set_resume_hint(f"the same command goes on from there: every finished stage is cached in {cfg.output_dir}")
    started = time.perf_counter()
    jobs = cli.jobs or (1 if torch.cuda.is_available() else 2)
    folds = [cfg.held_out] if cfg.held_out else cfg.folds
    if not folds:  # in-sequence
        _, start_result, results, id2label = run_stage(cfg, runs, jobs)
        print(report(cfg, start_result["scores"], results, id2label, Path(cfg.output_dir), _minutes(started)))
        return
    per_fold = {}
    for sequence in folds:
        fold = cfg.fold(sequence)
        print(f"fold {sequence}: held out")
        *_, id2label = per_fold[sequence] = run_stage(fold, runs, jobs)
        report(
            fold, per_fold[sequence][1]["scores"], per_fold[sequence][2], id2label, fold.stage_dir, _minutes(started)
        )
    print(fold_report(cfg, {s: (f[1], f[2]) for s, f in per_fold.items()}, Path(cfg.output_dir), _minutes(started)))


def run_stage(cfg: StudyConfig, runs, jobs: int):
    """Pretrain (or read) the start, score it, run every run: ``(start, start's result, results, id2label)``."""
    data, id2label = load_study_data(cfg)
    start = pretrained_checkpoint(cfg, data, id2label)
    start_result = {"scores": score_model(cfg, start, data, id2label), "path": str(scores_path(cfg, start))}
    (cfg.stage_dir / "start.json").write_text(json.dumps(start_result["scores"], indent=1))
    results = run_all(cfg, runs, start, jobs)
    return start, start_result, results, id2label


def _minutes(started: float) -> float:
    return (time.perf_counter() - started) / 60
