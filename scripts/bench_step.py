"""Cost of reward tuning per train step, next to plain cross-entropy; speed of the batched reward.

    python scripts/bench_step.py                 # CPU, ~5 min on 2 cores
    python scripts/bench_step.py --device cuda   # where a GPU is present

1. Median time of one train step (forward, loss, backward) of a MiT-b0-sized SegFormer (the
   default ``SegformerConfig``, 19 classes) at 512 x 512, batch 2, for: MLE with the model's own
   cross-entropy; reward tuning (score estimator, loo baseline) with K = 2, 4, 8 at both sampling
   resolutions; the local estimator (K = 1, dataset scope). The variants run interleaved, round
   after round, on the same model and batch, so drifts in machine load hit all of them alike.
2. ``hf_reward.rewards.miou`` against a numpy implementation of the same semantics in the way of
   ``evaluate``'s mean_iou (per image: drop ignored pixels, three ``np.histogram`` calls), on 8
   masks of 512 x 1024 with 19 classes; the values are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from hf_reward import miou, reinforce_loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_variants():
    yield "mle", None
    for resolution in ("logits", "labels"):
        for k in (2, 4, 8):
            yield f"score K={k} {resolution}", dict(num_samples=k, baseline="loo", sample_resolution=resolution)
        yield f"local K=1 {resolution}", dict(num_samples=1, estimator="local", reward_scope="dataset",
                                               sample_resolution=resolution)


def bench_steps(device, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=19)).to(device).train()
    pixels = torch.randn(2, 3, 512, 512, device=device)
    labels = torch.randint(0, 19, (2, 512, 512), device=device)
    labels[:, :40] = 255
    running = torch.zeros(19, 19, device=device)
    times = {name: [] for name, _ in step_variants()}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, knobs in step_variants():
            model.zero_grad(set_to_none=True)
            sync(device)
            start = time.perf_counter()
            if knobs is None:
                loss = model(pixel_values=pixels, labels=labels).loss
            else:
                logits = model(pixel_values=pixels).logits
                loss = reinforce_loss(logits, labels, reward_fn="miou", running_confusion=running, **knobs).loss
            loss.backward()
            sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def numpy_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """evaluate's mean_iou approach, per image: mask the ignored pixels, then three histograms."""
    out = []
    for p, t in zip(pred, target):
        keep = t != ignore_index
        p, t = p[keep], t[keep]
        bins = np.arange(num_classes + 1)
        inter = np.histogram(p[p == t], bins=bins)[0]
        area_p = np.histogram(p, bins=bins)[0]
        area_t = np.histogram(t, bins=bins)[0]
        union = area_p + area_t - inter
        present = union > 0
        out.append(np.mean(inter[present] / union[present]) if present.any() else np.nan)
    return np.array(out)


def bench_miou(device, rounds: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (8, 512, 1024), generator=g)
    target[:, :64] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target.clamp(max=18),
                       torch.randint(0, 19, target.shape, generator=g))
    pred_np, target_np = pred.numpy(), target.numpy()
    pred_d, target_d = pred.to(device), target.to(device)
    ours = miou(pred_d, target_d, 19).cpu().numpy()
    np.testing.assert_allclose(ours, numpy_miou(pred_np, target_np, 19), rtol=1e-6)
    t_torch, t_numpy = [], []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        miou(pred_d, target_d, 19)
        sync(device)
        t_torch.append(time.perf_counter() - start)
        start = time.perf_counter()
        numpy_miou(pred_np, target_np, 19)
        t_numpy.append(time.perf_counter() - start)
    return statistics.median(t_torch), statistics.median(t_numpy)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    steps = bench_steps(device, args.rounds)
    print("\n| variant | median step (s) | ratio to MLE |\n|---|---|---|")
    for name, seconds in steps.items():
        print(f"| {name} | {seconds:.3f} | {seconds / steps['mle']:.3f} |")
    t_torch, t_numpy = bench_miou(device, args.rounds)
    print(f"\nmiou on 8 x 512 x 1024, 19 classes: hf_reward {1000 * t_torch:.1f} ms, numpy (evaluate-style) "
          f"{1000 * t_numpy:.1f} ms, speed-up {t_numpy / t_torch:.1f}x (values equal)")


if __name__ == "__main__":
    main()
