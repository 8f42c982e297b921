"""Domain adaptation's building blocks on hand-made cases with known answers."""

import itertools
import math

import pytest
import torch

from hf_reward.adaptation import (
    class_balanced_thresholds,
    em_priors,
    expected_miou_shortfall,
    mean_entropy,
    mean_posteriors,
    pseudo_labels,
)
from hf_reward.rewards import miou, reward_of_masks

# Two pixel types with known class-conditional frequencies p(x | y): rows x in (A, B), columns y.
LIKELIHOOD = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64)


def posterior_logits(prior: torch.Tensor) -> torch.Tensor:
    """log p(y | x) under ``prior`` for x = A, B: (2, C)."""
    joint = LIKELIHOOD * prior
    return (joint / joint.sum(1, keepdim=True)).log()


def images_of(logits_by_type: torch.Tensor, counts: list[int]) -> list:
    """One 'image' (1, C, 1, n) per pixel type, with counts[x] pixels of type x."""
    return [
        (logits_by_type[x].float().view(1, -1, 1, 1).expand(1, -1, 1, n).contiguous(), None)
        for x, n in enumerate(counts)
    ]


def test_em_recovers_the_target_priors_of_a_prior_shift():
    source, target = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.2, 0.8], dtype=torch.float64)
    # The target's pixel types in their exact proportions: P(x) = sum_y p(x | y) pi_t(y) = (0.4, 0.6).
    data = images_of(posterior_logits(source), [400, 600])
    prior, offsets = em_priors(data, source, tolerance=1e-10, max_iterations=1000)
    assert prior.tolist() == pytest.approx(target.tolist(), abs=1e-4)
    assert offsets.tolist() == pytest.approx((target / source).log().tolist(), abs=1e-3)
    # The offsets turn the source posteriors into the target's Bayes posteriors.
    corrected = (posterior_logits(source) + offsets.double()).softmax(1)
    assert torch.allclose(corrected, posterior_logits(target).exp(), atol=1e-3)


def test_em_keeps_the_priors_when_the_target_is_the_source():
    source = torch.tensor([0.3, 0.7], dtype=torch.float64)
    data = images_of(posterior_logits(source), [45, 55])  # P(x) = (0.8*.3 + .3*.7, .2*.3 + .7*.7) = (0.45, 0.55)
    assert mean_posteriors(data).tolist() == pytest.approx(source.tolist(), abs=1e-6)
    prior, offsets = em_priors(data, source)
    assert prior.tolist() == pytest.approx(source.tolist(), abs=1e-5) and offsets.abs().max() < 1e-4
    with pytest.raises(TypeError, match="not an iterator"):
        em_priors(iter(data), source)
    with pytest.raises(ValueError, match="must be positive"):
        em_priors(data, torch.tensor([0.0, 1.0]))


def test_class_balanced_pseudo_labels_keep_each_classs_most_confident_portion():
    # Class 0 predicted at 4 pixels (confidences .9 .8 .7 .6), class 1 at 2 (.95, .55), class 2 nowhere.
    confidences = [0.9, 0.8, 0.7, 0.6, 0.95, 0.55]
    classes = [0, 0, 0, 0, 1, 1]
    logits = torch.full((1, 3, 1, 6), -30.0)
    for i, (p, c) in enumerate(zip(confidences, classes)):
        logits[0, c, 0, i] = 0.0
        logits[0, (c + 1) % 3, 0, i] = math.log((1 - p) / p)  # softmax max = p (the third class is ~0)
    thresholds = class_balanced_thresholds(logits, portion=0.5)
    assert thresholds[:2].tolist() == pytest.approx([0.8, 0.95], abs=1e-6) and thresholds[2] == math.inf
    assert pseudo_labels(logits, thresholds)[0, 0].tolist() == [0, 0, 255, 255, 1, 255]
    assert pseudo_labels(logits, class_balanced_thresholds(logits, 1.0))[0, 0].tolist() == classes


def test_entropy_and_expected_shortfall_rank_a_sure_image_below_an_unsure_one():
    sure = torch.zeros(1, 3, 4, 4)
    sure[:, 1] = 60.0
    unsure = torch.zeros(1, 3, 4, 4)
    logits = torch.cat([sure, unsure])
    assert mean_entropy(logits).tolist() == pytest.approx([0.0, math.log(3)], abs=1e-6)
    shortfall = expected_miou_shortfall(logits, num_samples=16, generator=torch.Generator().manual_seed(0))
    assert shortfall[0] == 0.0 and shortfall[1] > 0.5


def test_expected_shortfall_is_unbiased_against_enumeration():
    """Three pixels, two classes: the expectation over all 8 masks, weighted by their probabilities."""
    p1 = torch.tensor([0.9, 0.4, 0.25])  # P(class 1) per pixel
    logits = torch.stack([torch.zeros(3), (p1 / (1 - p1)).log()]).view(1, 2, 1, 3)
    pred = logits.argmax(1)
    exact = 0.0
    for mask in itertools.product([0, 1], repeat=3):
        weight = math.prod(float(p1[i] if m else 1 - p1[i]) for i, m in enumerate(mask))
        exact += weight * float(reward_of_masks(miou, pred, torch.tensor(mask).view(1, 1, 3), 2)[0])
    estimate = expected_miou_shortfall(logits, num_samples=40000, generator=torch.Generator().manual_seed(1))
    assert float(estimate[0]) == pytest.approx(1 - exact, abs=0.006)
