"""Gradient noise of each estimator on real data: one batch, fixed parameters, fresh samples.

    python scripts/bench_variance.py                   # ~10 min on one thread, after scripts/study.py

Loads a pretrained checkpoint (by default the CamVid study's, ``scripts/study.py``) and CamVid's
training split at the study's size through :func:`hf_reward.data.in_memory.materialise_split`
(reading the study's cache file when it is there), takes one training batch of 8 images, runs
the model once, and draws ``--draws`` independent gradient estimates per estimator (fresh masks,
same parameters, backward through the same forward).

Per-image objective (temperature 1, image scope, the score-function arms of the study): every
estimator is unbiased for the same gradient g* = -grad E[mean per-image mIoU], so the
reference is the mean of ``--reference-draws`` estimates of the least noisy one (local, K=4):

- SNR = ||g*|| / sqrt(trace Cov g): signal against noise of one estimate;
- cos(g, g*): mean cosine between one estimate and the reference;
- draws for cos 0.9: how many estimates must be averaged for cosine 0.9 to g*: cos^2 of a mean of
  n estimates is ~ SNR^2 n / (SNR^2 n + 1), so n = 0.81 / 0.19 / SNR^2 (at least 1).

Dataset objective (temperature 0.5, dataset scope, the local arms): the running confusion matrix
is the greedy one of 72 other training images (what decay 0.9 holds after ~9 batches of 8). These
rows have no common reference with the others; their signal is their own mean, with the noise
of the mean subtracted (||mean||^2 - trace Cov / draws).

Boundary F (``--boundary``, the default): the same per-image measures for boundary F at 2 px, T = 0.5,
masks at label resolution, against the mean of ``--reference-draws`` of local K=4; the last row, the
local estimator around the argmax mask (``switch_around="decoded"``), is biased for that gradient, and
its cosine says how far from it it points.

Results: docs/estimators.md, "Gradient noise of the estimators".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import SegformerForSemanticSegmentation

from hf_reward import LossSettings, RewardState, confusion_matrix, reward_loss
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation, load_camvid
from hf_reward.data.camvid import DEFAULT_ROOT
from hf_reward.data.in_memory import InMemorySegmentation, materialise_split
from hf_reward.mask_scores import BoundaryFReward
from hf_reward.policy import align_to_resolution
from hf_reward.rewards import miou


def settings(
    estimator: str,
    num_samples: int,
    baseline: str = "none",
    scope: str = "image",
    temperature: float = 1.0,
    resolution: str = "logits",
    **fields,
) -> LossSettings:
    return LossSettings(
        **{"reward": miou, **fields},
        estimator=estimator,
        reward_scope=scope,
        num_samples=num_samples,
        temperature=temperature,
        baseline=baseline,
        sample_resolution=resolution,
        ignore_index=255,
    )


PER_IMAGE = {
    "score none K=1": settings("score", 1),
    "score ema K=1": settings("score", 1, "ema"),
    "score batch_mean K=1": settings("score", 1, "batch_mean"),
    "score greedy K=1": settings("score", 1, "greedy"),
    "score sample K=2": settings("score", 2, "sample"),
    "score loo K=2": settings("score", 2, "loo"),
    "score loo K=4": settings("score", 4, "loo"),
    "score loo K=8": settings("score", 8, "loo"),
    "local K=1": settings("local", 1),
    "local K=4": settings("local", 4),
}
DATASET = {  # the recipe's objective: dataset-scope mIoU at temperature 0.5
    "local dataset K=1": settings("local", 1, scope="dataset", temperature=0.5),
    "local dataset K=4": settings("local", 4, scope="dataset", temperature=0.5),
    "local dataset K=1, labels resolution": settings(
        "local", 1, scope="dataset", temperature=0.5, resolution="labels"
    ),
}


def boundary_estimators(num_classes: int) -> dict[str, LossSettings]:
    """Per-image boundary F at 2 px, T = 0.5, masks at label resolution (the rewards study's boundary arms).
    Every row but the last is unbiased for g* = -grad E[mean boundary F]."""
    fields = dict(temperature=0.5, resolution="labels", reward=None, mask_reward=BoundaryFReward(num_classes, "2px"))
    return {
        "score loo K=4": settings("score", 4, "loo", **fields),
        "score loo K=8": settings("score", 8, "loo", **fields),
        "local K=1": settings("local", 1, **fields),
        "local K=4": settings("local", 4, **fields),
        "local K=1 around the decoded mask (biased)": settings("local", 1, **fields, switch_around="decoded"),
    }


class GradientStats:
    """Running sums over draws: the mean gradient, the summed squared norms, cosines to a reference."""

    def __init__(self, reference: torch.Tensor | None = None):
        self.reference, self.n, self.total, self.squares, self.cosines, self.seconds = reference, 0, 0.0, 0.0, 0.0, 0.0

    def add(self, g: torch.Tensor, seconds: float) -> None:
        self.n, self.total, self.squares, self.seconds = (
            self.n + 1,
            self.total + g,
            self.squares + g.dot(g),
            self.seconds + seconds,
        )
        if self.reference is not None:
            self.cosines += torch.nn.functional.cosine_similarity(g, self.reference, dim=0)

    def mean(self) -> torch.Tensor:
        return self.total / self.n

    def trace_cov(self) -> torch.Tensor:
        m = self.mean()
        return (self.squares - self.n * m.dot(m)) / (self.n - 1)

    def row(self, name: str) -> str:
        tr = self.trace_cov()
        if self.reference is not None:
            snr = self.reference.norm() / tr.sqrt()
            cos = f"{self.cosines / self.n:.3f}"
        else:
            snr = (self.mean().dot(self.mean()) - tr / self.n).clamp(min=0).sqrt() / tr.sqrt()
            cos = "—"
        draws = max(1.0, 0.81 / 0.19 / snr.item() ** 2) if snr > 0 else float("inf")
        return f"| {name} | {snr:.3f} | {cos} | {draws:.0f} | {1000 * self.seconds / self.n:.0f} |"


def draw(
    logits, labels, params, stats: GradientStats, draws: int, seed: int, loss_settings: LossSettings, **kwargs
) -> None:
    for i in range(draws):
        start = time.perf_counter()
        loss = reward_loss(
            logits, labels, loss_settings, generator=torch.Generator().manual_seed(seed + i), **kwargs
        ).loss
        g = torch.cat([x.flatten() for x in torch.autograd.grad(loss, params, retain_graph=True)])
        stats.add(g, time.perf_counter() - start)


TABLE_HEAD = (
    "| estimator | SNR of one estimate | cos(one estimate, reference) | draws for cos 0.9 | ms per estimate |\n"
    "|---|---|---|---|---|"
)


@dataclass
class VarianceArguments:
    """the checkpoint, the data and the number of draws"""

    checkpoint: str = field(default="runs/study_camvid/pretrain", metadata={"help": "The model to differentiate."})
    data_root: str = field(default=DEFAULT_ROOT, metadata={"help": "CamVid's directory."})
    cache: str = field(
        default="runs/study_camvid/train.safetensors", metadata={"help": "materialise_split's cache of the split."}
    )
    size: list[int] = field(default_factory=lambda: [128, 176], metadata={"help": "Image size (height, width)."})
    draws: int = field(default=32, metadata={"help": "Estimates per estimator."})
    reference_draws: int = field(default=128, metadata={"help": "Estimates of local K=4 averaged as the reference."})
    boundary: bool = field(default=True, metadata={"help": "Also the boundary-F table (~5 min more)."})


def main(argv: list[str] | None = None):
    (args,) = parse_config([VarianceArguments], argv, description=__doc__.split("\n\n")[0])
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation.from_pretrained(args.checkpoint, use_safetensors=True)
    model.eval()  # no dropout: the only randomness left is the sampling
    params = [p for p in model.parameters() if p.requires_grad]
    images, all_labels, _ = materialise_split(
        args.cache, load_camvid, "train", args.size, root=args.data_root, streaming=False
    )
    batch = collate_segmentation(list(InMemorySegmentation(images, all_labels, indices=range(80))))
    images, labels = batch["pixel_values"], batch["labels"]
    num_classes = model.config.num_labels
    with torch.no_grad():
        context_logits, context_labels = align_to_resolution(
            model(pixel_values=images[8:]).logits, labels[8:], "logits"
        )
        running = confusion_matrix(context_logits.argmax(1), context_labels, num_classes).sum(0).double()
    logits = model(pixel_values=images[:8]).logits
    labels = labels[:8]

    reference = reference_gradient(logits, labels, params, args, PER_IMAGE["local K=4"])
    with torch.no_grad():  # a converged running mean: the expected per-image reward under the policy
        ema_value = reward_loss(logits, labels, settings("score", 64)).rewards.mean()

    print(
        f"{args.draws} draws per estimator; one batch of 8 CamVid training images at {tuple(labels.shape[-2:])}; "
        f"{reference.numel()} parameters; reference: {args.reference_draws} draws of local K=4\n"
    )
    print(TABLE_HEAD)
    print_rows(PER_IMAGE, reference, logits, labels, params, args.draws, state=RewardState(ema=ema_value))
    print_rows(DATASET, None, logits, labels, params, args.draws, " (T=0.5, own mean)", RewardState(running=running))
    if args.boundary:
        boundary_table(logits, labels, params, args)


def print_rows(estimators, reference, logits, labels, params, draws: int, suffix: str = "", state=None) -> None:
    """One table row per estimator: ``draws`` estimates against ``reference`` (None: their own mean)."""
    for name, loss_settings in estimators.items():
        stats = GradientStats(reference)
        draw(logits, labels, params, stats, draws, 0, loss_settings, state=state)
        print(stats.row(name + suffix), flush=True)


def reference_gradient(logits, labels, params, args, loss_settings: LossSettings) -> torch.Tensor:
    """The mean of ``--reference_draws`` estimates (seeds apart from the compared draws')."""
    stats = GradientStats()
    draw(logits, labels, params, stats, args.reference_draws, 10_000, loss_settings)
    return stats.mean()


def boundary_table(logits, labels, params, args) -> None:
    """The boundary-F rows: one estimate's SNR and cosine to the mean of local K=4, as the mIoU^I table."""
    estimators = boundary_estimators(logits.shape[1])
    reference = reference_gradient(logits, labels, params, args, estimators["local K=4"])
    print(
        f"\nBoundary F at 2 px per image, T = 0.5, masks at {tuple(labels.shape[-2:])}; reference: "
        f"{args.reference_draws} draws of local K=4\n"
    )
    print(TABLE_HEAD)
    print_rows(estimators, reference, logits, labels, params, args.draws)


if __name__ == "__main__":
    run_script(main)
