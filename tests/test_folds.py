"""The cross-sequence protocol: folds by sequence on CamVid's file names, and the paired bootstrap's intervals."""

import numpy as np
import pytest
import torch
from conftest import CAMVID

from hf_reward.data.camvid import camvid_frames
from hf_reward.data.labels import DataError
from hf_reward.experiments.study import StudyConfig, fold_rows, sequence_of
from hf_reward.metrics import StreamingMeanIoU, resampled_scores
from hf_reward.selection import bootstrap_weights, paired_interval


@pytest.mark.parametrize("held_out", ["0016E5", "0006R0", "0001TP"])
def test_a_fold_keeps_its_sequence_out_of_training_dev_and_decoder_fitting(held_out):
    """On CamVid's own file names: the held-out sequence's frames (of train and validation) are all in ``heldout``
    and in no other part; training (which the decoders are fitted on) and dev hold the other sequences only."""
    names = camvid_frames("train", CAMVID) + camvid_frames("validation", CAMVID)
    rows = fold_rows(names, held_out, 0.2)
    assert sorted(rows["train"] + rows["dev"] + rows["heldout"]) == list(range(len(names)))
    assert {sequence_of(names[r]) for r in rows["heldout"]} == {held_out}
    assert len(rows["heldout"]) == sum(sequence_of(n) == held_out for n in names)
    for part in ("train", "dev"):
        assert held_out not in {sequence_of(names[r]) for r in rows[part]}
    # dev: a block at the start of each other sequence, never frames interleaved with training frames
    for sequence in {sequence_of(n) for n in names} - {held_out}:
        frames = sorted(
            (names[r].split("_", 1)[1], part)
            for part in ("train", "dev")
            for r in rows[part]
            if sequence_of(names[r]) == sequence
        )
        parts = [part for _, part in frames]
        assert parts == sorted(parts, key=lambda p: p != "dev") and "dev" in parts


def test_a_sequence_that_is_not_there_is_named():
    with pytest.raises(DataError, match="no frame of sequence 'Seq05VD'.*0001TP"):
        fold_rows(["0001TP_006690.png", "0016E5_07959.png"], "Seq05VD", 0.2)


def test_folds_refuse_a_checkpoint_pretrained_elsewhere_and_an_unknown_fold():
    arms = {"ce": {"learning_rates": [1e-4], "horizons": ["short"]}}
    common = dict(horizons={"short": {"max_steps": 2}}, arms=arms, folds=["0006R0"])
    with pytest.raises(ValueError, match="pretraining per fold"):
        StudyConfig(pretrained="runs/study_camvid/pretrain", **common)
    with pytest.raises(ValueError, match="held_out '0001TP' is not one of the folds"):
        StudyConfig(held_out="0001TP", **common)
    assert StudyConfig(held_out="0006R0", **common).report_split == "heldout"


def records_of(pred, labels, num_classes=3):
    metric = StreamingMeanIoU(num_classes, per_image=True, boundary_tolerances=["1px"], thing_classes=["1"])
    metric.update_masks(pred, labels)
    return metric, metric.image_records()


def test_weighted_metrics_equal_the_metrics_of_the_images_repeated():
    """A multiset given by weights scores what the streamed metric gives on those images, repeated."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (7, 6, 6), generator=g)
    labels[0] = 255  # an image with no counted pixel: left out of the per-image means
    pred = torch.randint(0, 3, (7, 6, 6), generator=g)
    _, records = records_of(pred, labels)
    counts = torch.tensor([2, 0, 1, 3, 0, 1, 4])  # 11 images: the lowest 10% is one image
    weighted = resampled_scores(records, counts[None].double())
    repeated, _ = records_of(pred.repeat_interleave(counts, 0), labels.repeat_interleave(counts, 0))
    expected = repeated.compute()
    for key, value in weighted.items():
        assert value.item() == pytest.approx(expected[key], abs=1e-12), key
    everything, _ = records_of(pred, labels)
    assert resampled_scores(records, torch.ones(1, 7))["image_miou_worst10"].item() == pytest.approx(
        everything.compute()["image_miou_worst10"]
    )


def test_the_paired_interval_matches_the_enumerated_bootstrap():
    """Two images and one seed: a resample is aa, ab, ba or bb with probability 1/4 each; the model gains 0 on image
    a and 1 on image b in mIoU^I, so the resampled gain is 0, 1/2, 1/2, 1. The 95% interval is [0, 1]; at one
    seed the mean is the plain gain, 1/2."""
    labels = torch.tensor([[[0, 1]], [[0, 1]]])
    reference = torch.tensor([[[0, 1]], [[0, 0]]])  # image b: mIoU^I 0.25 (class 0: 1/2, class 1: 0)
    model = torch.tensor([[[0, 1]], [[0, 1]]])  # image b: 1, a gain of 0.75
    _, ref = records_of(reference, labels, 2)
    _, mod = records_of(model, labels, 2)
    rng = np.random.default_rng(0)
    weights = bootstrap_weights([2], 4000, rng)
    assert weights.sum(1).eq(2).all() and set(map(tuple, weights.tolist())) == {(2, 0), (1, 1), (0, 2)}
    mean, low, high = paired_interval([mod], [ref], "image_miou", weights, rng)
    assert mean == pytest.approx(0.375)  # (0 + 0.75) / 2
    assert (low, high) == (0.0, 0.75)
    # the share of resamples at each value follows the enumeration: 1/4 at 0, 1/2 at 0.375, 1/4 at 0.75
    gains = (weights[:, 1] / 2 * 0.75).numpy()
    shares = [np.mean(np.isclose(gains, v)) for v in (0.0, 0.375, 0.75)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_the_interval_resamples_seeds_too():
    """One image, two seeds: image resampling changes nothing, so the interval is the seeds' bootstrap: the mean of
    two draws from the gains {0, 1}, i.e. 0, 1/2 or 1; the point is the mean over seeds."""
    labels = torch.tensor([[[0, 1]]])
    _, ref = records_of(torch.tensor([[[0, 0]]]), labels, 2)  # mIoU^I 0.25
    _, same = records_of(torch.tensor([[[0, 0]]]), labels, 2)
    _, better = records_of(torch.tensor([[[0, 1]]]), labels, 2)  # 1.0
    rng = np.random.default_rng(1)
    mean, low, high = paired_interval([same, better], [ref, ref], "image_miou", bootstrap_weights([1], 2000, rng), rng)
    assert mean == pytest.approx(0.375) and (low, high) == (0.0, 0.75)


def test_records_saved_before_the_counted_flag_score_the_same():
    """Studies cached per-image records before ``counted`` was one of them: it is read off the counts then."""
    labels = torch.tensor([[[0, 1]], [[255, 255]]])
    _, records = records_of(torch.tensor([[[0, 1]], [[0, 0]]]), labels, 2)
    older = {k: v for k, v in records.items() if k != "counted"}
    everything = torch.ones(1, 2)
    assert (
        resampled_scores(older, everything)["object_f1"].item()
        == resampled_scores(records, everything)["object_f1"].item()
    )
