"""Cost of a reward-tuning step next to a cross-entropy step, at Cityscapes' and ADE20K's class counts.

    python scripts/bench_step.py                           # CPU: C = 19 and 150, batch 8, 512 x 512 (~4 min)
    python scripts/bench_step.py --device cuda --rounds 20 # where a GPU is present
    python scripts/bench_step.py --device cuda --precision bf16   # autocast; fp16 adds a gradient scaler

One train step (forward, loss, backward) of a MiT-b0-sized SegFormer (the default
``SegformerConfig``) with C classes, batch 8 at 512 x 512, for:

- ``mle``: the model's own cross-entropy;
- ``local``: the local estimator of the dataset-scope mIoU, K = 1, sampled at the logits'
  resolution (128 x 128), against a running matrix of 10 batches' worth of counts;
- ``local + ce (the recipe)``: the same plus pixel cross-entropy at label resolution, as
  RewardSegConfig's defaults train;
- ``score K=4``: REINFORCE with the leave-one-out baseline, per-image mIoU.

The variants of one C run interleaved, round after round, on the same model and batch, so drifts
in machine load hit all of them alike; the table gives medians. Memory: the peak of the step
above what was resident before it (CUDA: ``max_memory_allocated``; CPU: the process's peak
resident set, reset before each step through ``/proc/self/clear_refs``, Linux only), next to the
size of the logits (B, C, 128, 128) in float32, the tensor the loss works on.

Results: docs/benchmarks.md, "Cost of a step".
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from hf_reward import LossSettings, RewardState, reward_loss
from hf_reward.cli import UsageError, parse_config, run_script
from hf_reward.loss import pixel_cross_entropy
from hf_reward.rewards import miou

VARIANTS = {
    "mle": None,
    "local": dict(estimator="local", reward_scope="dataset", num_samples=1, temperature=0.5, baseline="none"),
    "local + ce (the recipe)": dict(
        estimator="local", reward_scope="dataset", num_samples=1, temperature=0.5, baseline="none", ce=True
    ),
    "score K=4": dict(estimator="score", reward_scope="image", num_samples=4, temperature=1.0, baseline="loo"),
}


def resident_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def resident_now_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def step(model, pixels, labels, knobs, context, precision: str = "fp32", scaler=None):
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(pixels.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        if knobs is None:
            loss = model(pixel_values=pixels, labels=labels).loss
        else:
            knobs = dict(knobs)
            ce = knobs.pop("ce", False)
            settings = LossSettings(reward=miou, sample_resolution="logits", ignore_index=255, **knobs)
            logits = model(pixel_values=pixels).logits
            state = RewardState(running=context if knobs["reward_scope"] == "dataset" else None)
            loss = reward_loss(logits, labels, settings, state=state).loss
            if ce:  # RewardSegConfig's default ce_weight=1: the trainer adds it at label resolution
                loss = loss + pixel_cross_entropy(logits, labels)
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss


def measure(
    device, num_classes: int, batch: int, size: int, rounds: int, precision: str = "fp32"
) -> dict[str, tuple[float, float]]:
    """Median seconds per step and peak extra memory (MiB) of every variant; each loss must be finite."""
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes)).to(device).train()
    pixels = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch, size, size), device=device)
    labels[:, : size // 12] = 255
    pixels_per_batch = batch * (size // 4) ** 2
    context = torch.rand(num_classes, num_classes, device=device, dtype=torch.float64)
    context *= 10 * pixels_per_batch / context.sum()
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    times = {name: [] for name in VARIANTS}
    memory = {name: 0.0 for name in VARIANTS}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, knobs in VARIANTS.items():
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                Path("/proc/self/clear_refs").write_text("5")
                before = resident_now_mib()
            start = time.perf_counter()
            loss = step(model, pixels, labels, knobs, context, precision, scaler)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            extra = (
                (torch.cuda.max_memory_allocated() - before) / 2**20
                if device.type == "cuda"
                else resident_peak_mib() - before
            )
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name} in {precision}: the loss is {float(loss)}")
            if round_:
                times[name].append(seconds)
                memory[name] = max(memory[name], extra)
    return {name: (statistics.median(times[name]), memory[name]) for name in VARIANTS}


@dataclass
class StepArguments:
    """where and what to time"""

    device: str = field(default="cpu", metadata={"help": "cpu, cuda, ..."})
    rounds: int = field(default=3, metadata={"help": "Timed rounds (after one warm-up round)."})
    batch: int = field(default=8, metadata={"help": "Images per step."})
    size: int = field(default=512, metadata={"help": "Image side."})
    classes: list[int] = field(default_factory=lambda: [19, 150], metadata={"help": "Class counts C to time."})
    precision: str = field(
        default="fp32", metadata={"help": f"One of {tuple(PRECISIONS)}: autocast, and for fp16 a gradient scaler."}
    )


def main(argv: list[str] | None = None):
    (args,) = parse_config([StepArguments], argv, description=__doc__.split("\n\n")[0])
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {tuple(PRECISIONS)}, got {args.precision!r}")
    device = torch.device(args.device)
    print(
        f"device {device}, {args.precision}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, "
        f"{args.size} x {args.size}, medians of {args.rounds} rounds\n"
    )
    print(
        "| C | variant | step (s) | ratio to MLE | peak extra memory (MiB) | logits (MiB) |\n|---|---|---|---|---|---|"
    )
    for c in args.classes:
        results = measure(device, c, args.batch, args.size, args.rounds, args.precision)
        logits_mib = args.batch * c * (args.size // 4) ** 2 * 4 / 2**20
        for name, (seconds, extra) in results.items():
            print(
                f"| {c} | {name} | {seconds:.2f} | {seconds / results['mle'][0]:.2f} | {extra:.0f} | "
                f"{logits_mib:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    run_script(main)
