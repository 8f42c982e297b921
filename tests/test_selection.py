"""What ships: the choice on dev (rigged cases with a known answer), the metric table, the recorded decoder."""

import numpy as np
import pytest
import torch
from conftest import tiny_segformer

from hf_reward import segment
from hf_reward.calibrate import fold_offsets
from hf_reward.decoders import decode, record_decoder, recorded_decoder
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.recipes import METRICS, metric_plan
from hf_reward.rewards import get_reward
from hf_reward.selection import choose, metric_scores


def records(ious: list[float], size: int = 100) -> dict:
    """Per-image records of two-class images (class 0 only in the ground truth) with these IoUs of class 0."""
    tp = torch.tensor([round(iou * size) for iou in ious], dtype=torch.float64)
    counts = torch.zeros(len(ious), 3, 2, dtype=torch.float64)
    counts[:, 0, 0], counts[:, 1, 0] = tp, float(size)  # tp, gt
    counts[:, 2, 0] = tp  # predicted class 0 only where right; the rest predicted class 1 (absent from gt)
    counts[:, 2, 1] = size - tp
    return {"counted": torch.ones(len(ious), dtype=torch.bool), "counts": counts}


def noisy(base: list[float], shift: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [min(max(b + shift + rng.normal(0, 0.02), 0.0), 1.0) for b in base]


BASE = list(np.random.default_rng(0).uniform(0.3, 0.7, size=60))


def test_the_decoder_alone_wins_when_tuning_only_ties():
    """The tuned model's gain over the decoded start is noise around 0: the start, decoded, ships."""
    dev = {
        "start": {"argmax": records(BASE), "image_offsets": records(noisy(BASE, 0.05, 1))},
        "recipe": {"argmax": records(noisy(BASE, 0.0, 2)), "image_offsets": records(noisy(BASE, 0.05, 3))},
    }
    decision = choose(dev, "image_miou")
    assert decision.winner == ("start", "image_offsets")
    assert decision.decoders == {"start": "image_offsets", "recipe": "image_offsets"}
    mean, low, high = decision.gains["recipe"]
    assert low <= 0 <= high and abs(mean) < 0.01
    assert "no tuned model's dev gain over it is certain" in decision.reason()


def test_the_recipe_wins_when_its_dev_gain_is_certain():
    dev = {
        "start": {"argmax": records(BASE), "image_offsets": records(noisy(BASE, 0.02, 1))},
        "cross-entropy": {"argmax": records(noisy(BASE, 0.0, 4)), "image_offsets": records(noisy(BASE, 0.02, 5))},
        "recipe": {"argmax": records(noisy(BASE, 0.06, 2)), "image_offsets": records(noisy(BASE, 0.04, 3))},
    }
    decision = choose(dev, "image_miou")
    assert decision.winner == ("recipe", "argmax")
    assert decision.gains["recipe"][1] > 0 and decision.gains["cross-entropy"][1] < 0.01
    assert decision.reason().startswith("Ships recipe + argmax: its dev gain")


def test_the_best_certain_model_wins_and_the_interval_is_paired():
    """Two certain gains: the larger ships. Pairing: a constant gain on noisy images has an interval of width 0."""
    dev = {
        "start": {"argmax": records(BASE)},
        "a": {"argmax": records([b + 0.02 for b in BASE])},
        "b": {"argmax": records([b + 0.05 for b in BASE])},
    }
    decision = choose(dev, "image_miou")
    assert decision.winner == ("b", "argmax")
    mean, low, high = decision.gains["a"]
    assert mean == pytest.approx(0.02, abs=1e-9) and high - low == pytest.approx(0.0, abs=1e-9)


def test_a_count_reward_is_scored_on_the_summed_counts():
    r = records([0.5, 1.0])
    dice = get_reward("dice")
    tp, gt, pd = r["counts"].sum(0)
    assert float(metric_scores(r, "reward", torch.ones(1, 2), dice)[0]) == pytest.approx(float(dice(tp, gt, pd)))
    with pytest.raises(ValueError, match="needs the reward"):
        metric_scores(r, "reward", torch.ones(1, 2))
    with pytest.raises(ValueError, match="not 'object_f2'"):
        metric_scores(r, "object_f2", torch.ones(1, 2))


def test_every_metric_has_decoders_a_recipe_and_its_evidence():
    for name, plan in METRICS.items():
        assert plan.decoders[0] == "argmax" and plan.recipe_name and "study_camvid_folds" in plan.evidence, name
        assert plan.decode_only  # the cross-sequence study: no recipe clears the bar
    boundary = metric_plan("boundary_f", "0.75%")
    assert boundary.key == "boundary_f_0.75%" and boundary.recipe == METRICS["boundary_f"].recipe
    generic = metric_plan("f_beta")
    assert generic.key == "reward" and generic.offsets_reward == "f_beta" and generic.recipe == {"reward": "f_beta"}
    with pytest.raises(ValueError, match="metric must be one of"):
        metric_plan("accuracy_of_everything")


def test_segment_follows_the_recorded_decoder():
    model = tiny_segformer(num_labels=3).eval()
    pixels = torch.rand(2, 3, 32, 48)
    logits = model(pixel_values=pixels).logits
    assert recorded_decoder(model.config) == "argmax"
    assert torch.equal(segment(model, pixels), decode("argmax", logits, (32, 48), {}))
    # offsets folded: the argmax of the folded model is the offsets' decision on the original logits
    offsets = torch.tensor([0.0, 3.0, -1.0])
    fold_offsets(model, offsets, split="train", method="image_offsets")
    record_decoder(model, "image_offsets")
    assert recorded_decoder(model.config) == "argmax"
    assert torch.equal(
        segment(model, pixels, size=(16, 24)), decode("offsets", logits, (16, 24), {"offsets": offsets})
    )
    record_decoder(model, "rankseg")
    assert torch.equal(segment(model, pixels), decode("rankseg", model(pixel_values=pixels).logits, (32, 48), {}))
    with pytest.raises(ValueError, match="decoder must be one of"):
        record_decoder(model, "crf")


def test_records_of_the_streaming_metric_score_as_it_does():
    """The dev decision reads the same numbers StreamingMeanIoU reports."""
    metric = StreamingMeanIoU(3, {0: "a", 1: "b", 2: "c"}, per_image=True)
    labels = torch.randint(0, 3, (4, 8, 8))
    metric.update_masks(torch.randint(0, 3, (4, 8, 8)), labels)
    decision = choose({"start": {"argmax": metric.image_records()}}, "image_miou")
    assert decision.dev["start"]["argmax"] == pytest.approx(metric.compute()["image_miou"])
