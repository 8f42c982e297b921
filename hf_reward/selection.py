"""Choosing what to ship on a development split: each model's dev-best decoder, and a tuned model only where its
dev gain over the decoded start is certain.

The candidates are models (the start, continued cross-entropy, a tuning recipe), each decoded by
several decoders, all scored on the same dev images for one metric from their per-image records
(:meth:`hf_reward.metrics.StreamingMeanIoU.image_records`). :func:`choose`:

1. each model's decoder is the one with the best dev score;
2. each other model, so decoded, is compared with the baseline (the start, so decoded) by a
   paired bootstrap over the dev images (:func:`paired_interval`: both are scored on the same
   resampled images, ``samples`` times; the 2.5% and 97.5% quantiles of the difference);
3. the winner is the model with the best dev score among those whose interval lies above 0, and
   the baseline when none does.

The decoder is picked on the same dev images the interval is computed on, for every model alike,
which flatters each a little; the rule asks for a certain gain, not the largest one, so a tuned
model that merely ties the start is not shipped.

Example::

    >>> good = {"counts": torch.tensor([[[1.0, 1.0]] * 3] * 8)}            # 8 images, IoU 1 each
    >>> poor = {"counts": torch.tensor([[[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]] * 8)}  # IoU 0 and 1: 0.5
    >>> d = choose({"start": {"argmax": poor}, "tuned": {"argmax": good}}, "image_miou")
    >>> d.winner, d.gains["tuned"][0]
    (('tuned', 'argmax'), 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .metrics import counted_images, resampled_scores
from .rewards import Reward

Records = Mapping[str, torch.Tensor]


def metric_scores(records: Records, metric: str, weights: torch.Tensor, reward: Reward | None = None) -> torch.Tensor:
    """``metric`` of ``records`` over each row of ``weights (R, N)``: ``(R,)``. ``metric="reward"``: ``reward`` of
    the summed counts (any reward of the counts at dataset scope); else a key of
    :func:`hf_reward.metrics.resampled_scores`."""
    if metric == "reward":
        if reward is None:
            raise ValueError("metric 'reward' needs the reward of the counts to score")
        tp, gt, pd = records["counts"].double().unbind(1)  # (N, C) each
        w = weights.double() * counted_images(records).double()
        return reward(w @ tp, w @ gt, w @ pd).double()  # rewards take counts (..., C): one call for every row
    scores = resampled_scores(records, weights)
    if metric not in scores:
        raise ValueError(f"the records score {sorted(scores)}, not {metric!r}")
    return scores[metric]


def bootstrap_weights(sizes: list[int], samples: int, rng: np.random.Generator) -> torch.Tensor:
    """``(samples, sum(sizes))`` counts of a bootstrap over images stratified by fold: each fold's ``n`` images
    resampled ``n`` times with replacement, the folds side by side."""
    return torch.from_numpy(
        np.concatenate([rng.multinomial(n, np.full(n, 1.0 / n), size=samples) for n in sizes], axis=1)
    ).double()


def paired_interval(
    model: list[Records],
    reference: list[Records],
    metric: str,
    weights: torch.Tensor,
    rng: np.random.Generator,
    reward: Reward | None = None,
) -> tuple[float, float, float]:
    """Mean and 95% percentile interval of ``metric(model) - metric(reference)``, paired by image and by seed.

    ``model`` and ``reference``: per seed, per-image records (:meth:`StreamingMeanIoU.image_records`) of the
    same images (a reference with one model repeats it for every seed). ``weights (R, N)``: the image
    resamples (:func:`bootstrap_weights`); each resample also draws the seeds with replacement.
    """
    everything = torch.ones(1, weights.shape[1], dtype=torch.float64)

    def gaps(w):  # (S, R): each seed's difference on each resample
        return torch.stack(
            [
                metric_scores(m, metric, w, reward) - metric_scores(r, metric, w, reward)
                for m, r in zip(model, reference)
            ]
        )

    point = float(gaps(everything).mean())
    per_seed = gaps(weights)
    seeds = torch.from_numpy(rng.integers(0, len(model), size=(weights.shape[0], len(model))))
    boot = per_seed[seeds, torch.arange(weights.shape[0])[:, None]].mean(1)
    low, high = np.nanquantile(boot.numpy(), [0.025, 0.975])
    return point, float(low), float(high)


@dataclass
class Decision:
    """What :func:`choose` decided, and on what."""

    metric: str
    baseline: str
    winner: tuple[str, str]  # (model, decoder)
    decoders: dict[str, str]  # each model's dev-best decoder
    dev: dict[str, dict[str, float]]  # model -> decoder -> dev score
    gains: dict[str, tuple[float, float, float]]  # each other model over the baseline, decoded: mean, low, high

    def reason(self) -> str:
        """One sentence: what ships, and the dev intervals that decided it (in points)."""
        model, decoder = self.winner
        intervals = "; ".join(
            f"{name} + {self.decoders[name]} {100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
            for name, (m, lo, hi) in self.gains.items()
        )
        if model == self.baseline:
            if not self.gains:
                return f"Ships {model} + {decoder}, the dev-best decoder (no tuned model to compare)."
            return (
                f"Ships {model} + {decoder}: no tuned model's dev gain over it is certain (95% interval above 0): "
                f"{intervals}."
            )
        return (
            f"Ships {model} + {decoder}: its dev gain over {self.baseline} + {self.decoders[self.baseline]} is "
            f"certain (95% interval above 0): {intervals}."
        )


def choose(
    dev: Mapping[str, Mapping[str, Records]],
    metric: str,
    *,
    baseline: str = "start",
    reward: Reward | None = None,
    samples: int = 2000,
    seed: int = 0,
) -> Decision:
    """The candidate to ship: ``dev`` maps model -> decoder -> per-image records on the dev images (the same images
    in the same order for all); ``metric`` as :func:`metric_scores` takes it. See the module doc."""
    if baseline not in dev:
        raise ValueError(f"the baseline {baseline!r} is not among the models {list(dev)}")
    once = torch.ones(1, len(counted_images(next(iter(dev[baseline].values())))), dtype=torch.float64)
    scores = {
        model: {d: float(metric_scores(r, metric, once, reward)[0]) for d, r in decoded.items()}
        for model, decoded in dev.items()
    }
    best = {model: max(s, key=s.get) for model, s in scores.items()}  # the first listed of tied decoders
    rng = np.random.default_rng(seed)
    weights = bootstrap_weights([once.shape[1]], samples, rng)
    reference = [dev[baseline][best[baseline]]]
    gains = {
        model: paired_interval([dev[model][best[model]]], reference, metric, weights, rng, reward)
        for model in dev
        if model != baseline
    }
    certain = [model for model, (_, low, _) in gains.items() if low > 0]
    winner = max(certain, key=lambda m: scores[m][best[m]]) if certain else baseline
    return Decision(metric, baseline, (winner, best[winner]), best, scores, gains)
