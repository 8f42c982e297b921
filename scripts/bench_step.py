"""Cost of every recommended recipe's training step, as a ratio to the cross-entropy step.

    python scripts/bench_step.py                           # CPU: C = 19, batch 8, 512 x 512 (~20 min, 1 thread)
    python scripts/bench_step.py --device cuda --rounds 20 # where a GPU is present
    python scripts/bench_step.py --device cuda --precision bf16   # autocast; fp16 adds a gradient scaler

One train step (forward, loss, backward) of a MiT-b0-sized SegFormer (the default
``SegformerConfig``) with C classes, batch 8 at 512 x 512, for each variant of :data:`VARIANTS`:
the model's own cross-entropy, and each loss as :class:`hf_reward.RewardSegTrainer` composes it
(``reward + ce_weight * cross-entropy + lovasz_weight * Lovász``, the cross-entropy and Lovász at
label resolution). Dataset-scope rewards see a running matrix of 10 batches' worth of counts.

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
from hf_reward.lovasz import lovasz_softmax
from hf_reward.mask_scores import BoundaryFReward
from hf_reward.rewards import miou, miou_gt

LOCAL = dict(estimator="local", num_samples=1, temperature=0.5, baseline="none", sample_resolution="logits")
# name -> (LossSettings fields of the reward term or None, ce_weight, lovasz_weight); "mle": the model's own loss
VARIANTS = {
    "mle": (None, 0.0, 0.0),
    "local, dataset-scope mIoU + ce (the default recipe)": (dict(LOCAL, reward=miou, reward_scope="dataset"), 1, 0),
    "local, per-image mIoU^I + ce": (dict(LOCAL, reward=miou_gt, reward_scope="image"), 1, 0),
    "local, worst 10% of images (tail) + ce": (
        dict(LOCAL, reward=miou_gt, reward_scope="image", tail_fraction=0.1),
        1,
        0,
    ),
    "local, boundary F 2px at the logits' size + ce": (
        dict(LOCAL, mask_reward="boundary_f", reward_scope="image"),
        1,
        0,
    ),
    "local, boundary F 2px at label size + ce": (
        dict(LOCAL, mask_reward="boundary_f", reward_scope="image", sample_resolution="labels"),
        1,
        0,
    ),
    "REINFORCE K=4 at label size, loo, mIoU^I + ce": (
        dict(
            estimator="score",
            reward=miou_gt,
            reward_scope="image",
            num_samples=4,
            temperature=1.0,
            baseline="loo",
            sample_resolution="labels",
        ),
        1,
        0,
    ),
    "ce 0.25 + Lovász 0.75": (None, 0.25, 0.75),
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


def step(model, pixels, labels, variant, context, precision: str = "fp32", scaler=None):
    reward_fields, ce_weight, lovasz_weight = variant
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(pixels.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        if reward_fields is None and ce_weight == 0:
            loss = model(pixel_values=pixels, labels=labels).loss
        else:
            logits = model(pixel_values=pixels).logits
            loss = logits.new_zeros(())
            if reward_fields is not None:
                fields = dict(reward_fields)
                if fields.get("mask_reward") == "boundary_f":
                    fields["mask_reward"] = BoundaryFReward(logits.shape[1], "2px", 255)
                settings = LossSettings(**{"reward": None, "ignore_index": 255, **fields})
                scope = context if settings.reward_scope == "dataset" else None
                loss = loss + reward_loss(logits, labels, settings, state=RewardState(running=scope)).loss
            if ce_weight:
                loss = loss + ce_weight * pixel_cross_entropy(logits, labels)
            if lovasz_weight:
                loss = loss + lovasz_weight * lovasz_softmax(logits, labels, 255)
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
        for name, variant in VARIANTS.items():
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                Path("/proc/self/clear_refs").write_text("5")
                before = resident_now_mib()
            start = time.perf_counter()
            loss = step(model, pixels, labels, variant, context, precision, scaler)
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
    classes: list[int] = field(default_factory=lambda: [19], metadata={"help": "Class counts C to time."})
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
        "| C | variant | step (s) | ratio to cross-entropy | peak extra memory (MiB) | logits (MiB) |\n"
        "|---|---|---|---|---|---|"
    )
    for c in args.classes:
        results = measure(device, c, args.batch, args.size, args.rounds, args.precision)
        logits_mib = args.batch * c * (args.size // 4) ** 2 * 4 / 2**20
        for name, (seconds, extra) in results.items():
            name = "cross-entropy (the model's own loss)" if name == "mle" else name
            print(
                f"| {c} | {name} | {seconds:.2f} | {seconds / results['mle'][0]:.2f} | {extra:.0f} | "
                f"{logits_mib:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    run_script(main)
