"""Wall time of the main job and of a test subset at 1 and 2 torch threads, idle and beside a busy process.

    python scripts/bench_threads.py                  # ~17 min on 2 cores; run it on an otherwise idle machine

Each case runs in a fresh subprocess, as a user runs it:

- ``demo``: ``python scripts/tune.py --threads N`` (the embedded default: pretraining, tuning, the
  control, calibration and plots) into a fresh output directory;
- ``tests``: ``python -m pytest -m "not slow" tests/test_trainer.py tests/test_estimators.py`` with
  ``OMP_NUM_THREADS=N``, which the tests' conftest follows.

"busy" runs one other process spinning on one core (``python -c "while True: pass"``) for the
whole case, as on a shared machine or a laptop doing something else. The scripts' default
(:func:`hf_reward.cli.default_threads`, one thread fewer than the cores) is what the table
supports; docs/benchmarks.md, "Threads".
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.cli import parse_config, run_script

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ThreadsArguments:
    """which cases and thread counts"""

    cases: list[str] = field(default_factory=lambda: ["demo", "tests"], metadata={"help": "'demo' and/or 'tests'."})
    thread_counts: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "torch threads to time."})


def command(case: str, threads: int, out: str) -> tuple[list[str], dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if case == "demo":
        return [sys.executable, "scripts/tune.py", "--output_dir", out, "--threads", str(threads)], env
    tests = ["tests/test_trainer.py", "tests/test_estimators.py"]
    return [sys.executable, "-m", "pytest", "-q", "-m", "not slow", *tests], {**env, "OMP_NUM_THREADS": str(threads)}


def timed(case: str, threads: int, busy: bool) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            argv, env = command(case, threads, out)
            start = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
            return time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()


def main(argv: list[str] | None = None):
    (args,) = parse_config([ThreadsArguments], argv, description=__doc__.split("\n\n")[0])
    print(
        f"{os.cpu_count()} cores\n\n| case | torch threads | idle (s) | beside a busy process (s) |\n|---|---|---|---|"
    )
    for case in args.cases:
        for threads in args.thread_counts:
            idle, busy = timed(case, threads, busy=False), timed(case, threads, busy=True)
            print(f"| {case} | {threads} | {idle:.0f} | {busy:.0f} |", flush=True)


if __name__ == "__main__":
    run_script(main)
