"""Gradient noise of each estimator on real data: one batch, fixed parameters, fresh samples.

    python scripts/bench_variance.py --checkpoint runs/study_camvid/pretrain --draws 16   # ~5 min, 2 cores

Loads the CamVid study's cross-entropy checkpoint and its cached data (``scripts/study.py``),
takes one training batch of 8 images, and draws ``--draws`` independent gradient estimates per
estimator with the parameters frozen. For each it reports

- SNR = ||mean g|| / sqrt(trace Cov g): signal against noise of a single estimate;
- the mean cosine between two independent single estimates;
- the cosine of its mean gradient to a reference: the mean of the lowest-noise estimator of the
  same objective, ``local image K=4`` (all image-scope rows are unbiased for
  -grad E[per-image mIoU] / n; pooling them all would let the noisiest dominate the reference).

All image-scope estimators estimate the same gradient, so their SNRs compare directly. The
dataset-scope rows estimate a different objective (dataset-level mIoU), listed for their noise.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import SegformerForSemanticSegmentation

from hf_reward import reinforce_loss

ESTIMATORS = {
    "score loo K=2": dict(estimator="score", baseline="loo", num_samples=2),
    "score loo K=4": dict(estimator="score", baseline="loo", num_samples=4),
    "score loo K=8": dict(estimator="score", baseline="loo", num_samples=8),
    "score sample K=2": dict(estimator="score", baseline="sample", num_samples=2),
    "score greedy K=1": dict(estimator="score", baseline="greedy", num_samples=1),
    "local image K=1": dict(estimator="local", num_samples=1),
    "local image K=4": dict(estimator="local", num_samples=4),
    "local dataset K=1 (T=0.5)": dict(estimator="local", num_samples=1, reward_scope="dataset", temperature=0.5),
}
SAME_OBJECTIVE = [name for name, knobs in ESTIMATORS.items() if "reward_scope" not in knobs]


def gradients(model, batch, draws: int, **knobs) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    num_classes = model.config.num_labels
    out = []
    for seed in range(draws):
        model.zero_grad(set_to_none=True)
        logits = model(pixel_values=batch["pixel_values"]).logits
        loss = reinforce_loss(logits, batch["labels"], reward_fn="miou", generator=torch.Generator().manual_seed(seed),
                              running_confusion=torch.zeros(num_classes, num_classes), **knobs).loss
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in params]))
    return torch.stack(out)  # (draws, n_params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/study_camvid/pretrain")
    parser.add_argument("--data", default="runs/study_camvid/data.safetensors")
    parser.add_argument("--draws", type=int, default=16)
    args = parser.parse_args()
    model = SegformerForSemanticSegmentation.from_pretrained(args.checkpoint, use_safetensors=True)
    model.eval()  # batch-norm statistics fixed: the only randomness left is the sampling
    data = load_file(Path(args.data))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    batch = {"pixel_values": (data["train_images"][:8].float() / 255 - mean) / std,
             "labels": data["train_labels"][:8].long()}
    grads = {name: gradients(model, batch, args.draws, **knobs) for name, knobs in ESTIMATORS.items()}
    reference = grads["local image K=4"].mean(0)
    cos = torch.nn.functional.cosine_similarity
    print(f"{args.draws} draws per estimator, one batch of 8 CamVid images, "
          f"{reference.numel()} parameters\n")
    print("| estimator | SNR of one estimate | cosine between two estimates | cosine of mean to reference |")
    print("|---|---|---|---|")
    for name, g in grads.items():
        m = g.mean(0)
        snr = m.norm() / ((g - m).pow(2).sum() / (len(g) - 1)).sqrt()
        pairs = [cos(g[i], g[j], dim=0) for i, j in itertools.combinations(range(len(g)), 2)]
        to_ref = cos(m, reference, dim=0) if name in SAME_OBJECTIVE else float("nan")
        print(f"| {name} | {snr:.3f} | {torch.stack(pairs).mean():.3f} | {to_ref:.3f} |")


if __name__ == "__main__":
    main()
