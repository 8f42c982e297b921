"""One prepared check of the GPU path: run it whenever a GPU is lent, and put its table in docs/gpu_check.md.

    python scripts/gpu_check.py                 # one GPU; writes runs/gpu_check/gpu_check.md

It runs these commands one after the other, each in its own process:

1. ``scripts/bench_step.py`` on CUDA in fp32, bf16 and fp16 (autocast; fp16 with the gradient
   scaler): a MiT-b0-sized SegFormer, C = 19, batch 8 at 512 x 512;
2. a 50-step bf16 tune of the embedded default through ``accelerate launch --mixed_precision bf16``
   (pretraining, tuning, the cross-entropy control and calibration, on the GPU);
3. ``scripts/bench_calibrate.py --device cuda``: the calibration fits on the GPU, exact and on a pixel
   sample, on 20 synthetic Cityscapes images (19 x 256 x 512 logits, 1024 x 2048 labels), each scored at
   full resolution, then the sampled fit of 200 such images;
4. the short arms of ``configs/study_camvid.yaml`` at CamVid's full 360 x 480, seed 0.

It writes one markdown table (check, command, seconds, result) to ``<output_dir>/gpu_check.md`` and
prints it; the runs' own outputs stay under ``output_dir``. A check that fails or runs past its time
limit gets a row with its last error line, and the others still run.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from hf_reward.cli import UsageError, parse_config, run_script

ROOT = Path(__file__).resolve().parent.parent


def bench_step_result(stdout: str, out: Path) -> str:
    """The C = 19 rows of bench_step's table: seconds per step (ratio to MLE) and peak extra memory."""
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| 19 |")
    ]
    return "; ".join(f"{r[1]} {r[2]} s (x{r[3]}), {r[4]} MiB" for r in rows)


def tune_result(stdout: str, out: Path) -> str:
    """Validation mIoU of each model the run scored, raw / calibrated."""
    results = json.loads((out / "results.json").read_text())
    return "; ".join(
        f"{name} {100 * scores['raw']['mean_iou']:.1f} / {100 * scores['calibrated']['mean_iou']:.1f}"
        if "calibrated" in scores
        else f"{name} {100 * scores['raw']['mean_iou']:.1f}"
        for name, scores in results.items()
    )


def calibrate_result(stdout: str, out: Path) -> str:
    """bench_calibrate's pixel-sample table: each fit's seconds and loss against the exact fit, and the sweeps."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| ")]
    rows = [r for r in rows if r[0] not in ("fitted on", "---")]
    fits = [f"{r[1]}, {r[2]} pixels: fit {r[4]} s, loss {r[7]}" for r in rows]
    sweeps = [line.strip("- ") for line in stdout.splitlines() if line.startswith("- ")]
    return "; ".join(fits + sweeps)


def study_result(stdout: str, out: Path) -> str:
    runs = list((out / "runs").glob("*.json"))
    return f"{len(runs)} runs; tables in {out / 'results.md'}"


def short_study_config(output_dir: Path) -> Path:
    """configs/study_camvid.yaml with only its short horizon and seed 0, caching under ``output_dir``."""
    cfg = yaml.safe_load((ROOT / "configs/study_camvid.yaml").read_text())
    cfg["output_dir"] = str(output_dir)
    cfg["seeds"] = [0]
    cfg["horizons"] = {"short": cfg["horizons"]["short"]}
    for arm in cfg["arms"].values():
        if "short" in arm["horizons"]:
            rates = arm["learning_rates"]
            arm["learning_rates"] = rates["short"] if isinstance(rates, dict) else rates
            arm["horizons"] = ["short"]
    cfg["arms"] = {name: arm for name, arm in cfg["arms"].items() if arm["horizons"] == ["short"]}
    path = output_dir.parent / "study_short.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class GpuCheckArguments:
    """where the checks write"""

    output_dir: str = field(default="runs/gpu_check", metadata={"help": "Where the table and the runs go."})


def main(argv: list[str] | None = None):
    (args,) = parse_config([GpuCheckArguments], argv, description=__doc__.split("\n\n")[0])
    if not torch.cuda.is_available():
        raise UsageError("no CUDA device: scripts/gpu_check.py checks the GPU path, run it where a GPU is present")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    python = [sys.executable]
    bench_step = [*python, "scripts/bench_step.py", "--device", "cuda", "--classes", "19", "--rounds", "10"]
    checks = [
        *(
            (f"train step, {p}", [*bench_step, "--precision", p], 150, out / f"step_{p}", bench_step_result)
            for p in ("fp32", "bf16", "fp16")
        ),
        (
            "tune, 50 steps, bf16, accelerate",
            ["accelerate", "launch", "--mixed_precision", "bf16", "--num_processes", "1", "scripts/tune.py"]
            + ["--max_steps", "50", "--bf16", "true", "--output_dir", str(out / "tune")],
            240,
            out / "tune",
            tune_result,
        ),
        (
            "calibration fits on CUDA, exact and sampled",
            [*python, "scripts/bench_calibrate.py", "--device", "cuda", "--cases", "synthetic", "scale"]
            + ["--images", "20", "--sample_sizes", "65536", "--scale_images", "200"],
            300,
            out,
            calibrate_result,
        ),
        (
            "study short arms, 360 x 480, seed 0",
            [*python, "scripts/study.py", "--config", str(short_study_config(out / "study")), "--full_resolution"],
            300,
            out / "study_full",
            study_result,
        ),
    ]
    rows = []
    for name, command, limit, run_dir, result in checks:
        print(f"{name}: {shlex.join(command)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
            outcome = result(done.stdout, run_dir) if done.returncode == 0 else _last_line(done.stderr)
        except subprocess.TimeoutExpired:
            outcome = f"stopped after its {limit} s limit"
        except (OSError, ValueError, KeyError, IndexError) as err:  # a run that wrote less than expected
            outcome = f"{type(err).__name__}: {err}"
        rows.append(
            f"| {name} | `{shlex.join(command[1:] if command[0] == sys.executable else command)}` "
            f"| {time.perf_counter() - start:.0f} | {outcome} |"
        )
    table = "\n".join(
        [
            f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{time.strftime('%Y-%m-%d')}",
            "",
            "| check | command | seconds | result |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    (out / "gpu_check.md").write_text(table + "\n")
    print(table)


def _last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "failed: " + (lines[-1] if lines else "no output")


if __name__ == "__main__":
    run_script(main)
