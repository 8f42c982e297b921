import copy
import gc

import pytest
import torch
from conftest import BlobsDataset, tiny_segformer
from transformers import SegformerForSemanticSegmentation

from hf_reward.calibrate import (
    Calibration,
    LogitCache,
    PixelSample,
    _candidate_confusions,
    _first_winning_index,
    _grid,
    _switch_histogram,
    bilinear_at,
    collect_logits,
    default_pixel_sample,
    fit_offsets,
    fold_offsets,
)
from hf_reward.decisions import upsample_logits
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.rewards import class_counts, cohen_kappa, confusion_matrix, get_reward, mean_accuracy, miou

C = 4
REWARDS = {
    "miou": miou,
    "weighted_miou": get_reward("miou", class_weights=[1.0, 3.0, 0.5, 2.0]),
    "mean_accuracy": mean_accuracy,
    "cohen_kappa": cohen_kappa,
}


def random_case(lattice: bool, seed: int = 0, images: int = 3):
    """Batches of logits (2, C, 4, 5) and labels (2, 16, 20), with ignored pixels (255, -1, C), class 3
    never in the target and class 2 never predicted without offsets. ``lattice``: logits in quarters,
    so that the bilinear weights (multiples of 1/8) give exact ties, with each other and with the grid."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(images):
        if lattice:
            z = torch.randint(-6, 7, (2, C, 4, 5), generator=g) / 4
        else:
            z = torch.randn(2, C, 4, 5, generator=g)
        z[:, 2] -= 3.5
        y = torch.randint(0, C - 1, (2, 16, 20), generator=g)
        noise = torch.rand(y.shape, generator=g)
        y[noise < 0.1], y[noise > 0.97], y[(noise > 0.95) & (noise <= 0.97)] = 255, -1, C
        batches.append((z, y))
    return batches


def brute_confusion(batches, offsets):
    return sum(
        confusion_matrix(upsample_logits(z, tuple(y.shape[-2:])).add(offsets.view(1, -1, 1, 1)).argmax(1), y, C).sum(0)
        for z, y in batches
    )


def brute_metric(reward, batches, offsets):
    return float(reward(*class_counts(brute_confusion(batches, offsets))))


@pytest.mark.parametrize("lattice", [False, True])
def test_one_class_update_matches_brute_force_for_every_grid_value(lattice):
    batches = random_case(lattice)
    assert brute_confusion(batches, torch.zeros(C))[:, 2].sum() == 0  # class 2 is not predicted at b = 0
    step, max_offset = (0.25, 2.0) if lattice else (0.05, 3.0)
    grid = _grid(step, max_offset)
    others = grid[torch.randint(0, len(grid), (C,), generator=torch.Generator().manual_seed(1))]
    for c in range(C):
        hist = sum(_switch_histogram(z, y, others, c, grid, 255) for z, y in batches)
        cms = _candidate_confusions(hist, c)
        scores = miou(*class_counts(cms))
        for k, value in enumerate(grid):
            offsets = others.clone()
            offsets[c] = value
            assert torch.equal(cms[k], brute_confusion(batches, offsets)), (c, k)
            assert float(scores[k]) == brute_metric(miou, batches, offsets)


@pytest.mark.filterwarnings("ignore:offsets of classes")  # mean accuracy (recall) would predict class 0 everywhere
@pytest.mark.parametrize("name", list(REWARDS))
@pytest.mark.parametrize("lattice", [False, True])
def test_fit_is_a_coordinatewise_optimum_and_never_worse(name, lattice):
    reward = REWARDS[name]
    batches = random_case(lattice, seed=2)
    step, max_offset = 0.25, 2.0
    result = fit_offsets(batches, reward, step=step, max_offset=max_offset, max_sweeps=10, progress=False)
    grid = _grid(step, max_offset)
    assert result.converged and all(any(b == grid) for b in result.offsets)
    assert result.metric_before == brute_metric(reward, batches, torch.zeros(C))
    assert result.metric_after == brute_metric(reward, batches, result.offsets)
    assert torch.equal(result.confusion_before, brute_confusion(batches, torch.zeros(C)))
    assert torch.equal(result.confusion_after, brute_confusion(batches, result.offsets))
    metrics = [result.metric_before, *result.history]
    assert all(a <= b for a, b in zip(metrics, metrics[1:])) and metrics[-1] == result.metric_after
    assert result.metric_after > result.metric_before
    for c in range(C):
        for value in grid:
            moved = result.offsets.clone()
            moved[c] = value
            assert brute_metric(reward, batches, moved) <= result.metric_after, (c, float(value))


def brute_image_metric(reward, batches, offsets):
    """The mean over images with a counted pixel of each image's reward, masks by brute force."""
    values = []
    for z, y in batches:
        pred = upsample_logits(z, tuple(y.shape[-2:])).add(offsets.view(1, -1, 1, 1)).argmax(1)
        for cm in confusion_matrix(pred, y, C):
            if cm.sum() > 0:
                values.append(float(reward(*class_counts(cm))))
    return sum(values) / len(values)


@pytest.mark.parametrize("lattice", [False, True])
def test_per_image_scores_match_brute_force_for_every_grid_value(lattice):
    """One histogram per image: every candidate's per-image confusion matrices, hence any per-image reward."""
    batches = random_case(lattice, seed=3)
    batches[0][1][1] = 255  # an image with no counted pixel: it does not enter the mean
    step, max_offset = (0.25, 2.0) if lattice else (0.1, 3.0)
    grid = _grid(step, max_offset)
    others = grid[torch.randint(0, len(grid), (C,), generator=torch.Generator().manual_seed(4))]
    for c in range(C):
        per_image = [
            _candidate_confusions(_switch_histogram(z, y, others, c, grid, 255, per_image=True), c) for z, y in batches
        ]
        for k, value in enumerate(grid):
            offsets = others.clone()
            offsets[c] = value
            for (z, y), cms in zip(batches, per_image):
                pred = upsample_logits(z, tuple(y.shape[-2:])).add(offsets.view(1, -1, 1, 1)).argmax(1)
                assert torch.equal(cms[:, k], confusion_matrix(pred, y, C)), (c, k)


@pytest.mark.filterwarnings("ignore:offsets of classes")
@pytest.mark.parametrize("name", ["miou_gt", "miou", "dice"])
def test_per_image_fit_is_a_coordinatewise_optimum_of_the_mean_image_reward(name):
    reward = get_reward(name)
    batches = random_case(lattice=True, seed=5)
    result = fit_offsets(batches, reward, step=0.25, max_offset=2.0, max_sweeps=10, per_image=True, progress=False)
    assert result.converged and result.per_image
    assert result.metric_before == pytest.approx(brute_image_metric(reward, batches, torch.zeros(C)), abs=1e-12)
    assert result.metric_after == pytest.approx(brute_image_metric(reward, batches, result.offsets), abs=1e-12)
    assert torch.equal(result.confusion_after, brute_confusion(batches, result.offsets))
    for c in range(C):
        for value in _grid(0.25, 2.0):
            moved = result.offsets.clone()
            moved[c] = value
            assert brute_image_metric(reward, batches, moved) <= result.metric_after + 1e-12, (c, float(value))


def test_perfect_predictions_keep_zero_offsets():
    batches = random_case(lattice=False)
    perfect = [
        (10.0 * torch.nn.functional.one_hot(y.clamp(0, C - 1), C).permute(0, 3, 1, 2).float(), y) for _, y in batches
    ]
    kept = [z.clone() for z, _ in perfect]
    result = fit_offsets(perfect, progress=False)
    assert all(torch.equal(z, k) for (z, _), k in zip(perfect, kept))  # at label size: not upsampled, not copied
    assert torch.equal(result.offsets, torch.zeros(C))
    assert result.metric_before == result.metric_after == 1.0 and result.history == [1.0] and result.converged


def calibrate_tiny(cache_dir=None):
    model = tiny_segformer(num_labels=C)
    with torch.no_grad():  # a random head's logits lie ~1e-4 apart, far below the grid's step
        model.decode_head.classifier.weight.mul_(2000.0)

    loader = torch.utils.data.DataLoader(BlobsDataset(n=8, num_labels=C), batch_size=4)
    cache = collect_logits(model, loader, cache_dir=cache_dir, progress=False)
    return model, loader, cache


def predict(model, loader):
    model.eval()  # the decode head's batch norm
    with torch.no_grad():
        return [upsample_logits(model(pixel_values=b["pixel_values"]).logits, b["labels"].shape[-2:]) for b in loader]


def test_fold_gives_the_calibrated_predictions_and_saves(tmp_path):
    model, loader, cache = calibrate_tiny()
    result = fit_offsets(cache, progress=False)
    assert result.metric_after > result.metric_before
    before = predict(model, loader)

    zero = Calibration(torch.zeros(C), "miou", 0.0, 0.0, [], True, None, None, 0.05, 5.0)
    unchanged = copy.deepcopy(model)
    fold_offsets(unchanged, zero, split="train")
    assert all(torch.equal(p, q) for p, q in zip(predict(unchanged, loader), before))

    fold_offsets(model, result, split="train")
    after = predict(model, loader)
    metric = StreamingMeanIoU(C)
    for logits, shifted, batch in zip(before, after, loader):
        expected = logits + result.offsets.view(1, -1, 1, 1)
        # Folded, the offset is added before the upsampling, not after: equal up to float rounding,
        # so only pixels whose two best classes are within 1e-5 may differ.
        top2 = expected.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-5
        assert clear.float().mean() > 0.99
        assert torch.equal(shifted.argmax(1)[clear], expected.argmax(1)[clear])
        metric.update_masks(shifted.argmax(1), batch["labels"])
    # The fit saw fp16 logits; the model scores with its float32 ones.
    assert metric.compute()["mean_iou"] == pytest.approx(result.metric_after, abs=1e-3)

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = SegformerForSemanticSegmentation.from_pretrained(tmp_path, use_safetensors=True)
    assert all(torch.equal(p.argmax(1), q.argmax(1)) for p, q in zip(predict(loaded, loader), after))
    record = loaded.config.calibration
    assert record["offsets"] == {f"class{i}": pytest.approx(float(b)) for i, b in enumerate(result.offsets)}
    assert record["split"] == "train" and record["reward"] == "miou"
    assert record["metric_after"] == result.metric_after and record["metric_before"] == result.metric_before


def test_disk_cache_gives_the_same_offsets_as_ram(tmp_path):
    _, _, ram = calibrate_tiny()
    _, _, disk = calibrate_tiny(cache_dir=tmp_path)
    logits, labels = torch.randn(C, 3, 5), torch.tensor([[0, 1, 255, 255, 3]] * 12)
    for cache in (ram, disk):  # an image of another size, with ignored labels
        cache.append(logits, labels)
    assert len(ram) == len(disk) == 9
    for (z, y), (z2, y2) in zip(ram, disk):
        assert z.dtype == z2.dtype == torch.float16 and torch.equal(z, z2) and torch.equal(y, y2)
    assert y.tolist() == [[[0, 1, C, C, 3]] * 12]
    reward = get_reward("miou", class_weights=[1.0, 2.0, 1.0, 1.0])
    a, b = fit_offsets(ram, reward, progress=False), fit_offsets(disk, reward, progress=False)
    assert torch.equal(a.offsets, b.offsets) and a.history == b.history
    assert a.reward == "miou(class_weights=[1.0, 2.0, 1.0, 1.0])"
    del disk, cache, b
    gc.collect()
    assert not any(tmp_path.iterdir())  # the cache's files go with it


def test_the_cache_refuses_labels_that_are_neither_a_class_nor_ignore():
    """As training and evaluation do: 57 on an 11-class model is a wrong label map, not void."""
    cache = LogitCache(C)
    cache.append(torch.randn(C, 2, 2), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels hold \[57\] \(image 1 of the calibration split\)"):
        cache.append(torch.randn(C, 2, 2), torch.full((4, 4), 57))


def test_fit_rejects_a_one_pass_iterator():
    with pytest.raises(TypeError, match="not an iterator"):
        fit_offsets(iter(random_case(lattice=False)), progress=False)


def test_a_reward_that_is_nan_on_some_candidate_is_refused_not_fitted_to_zero():
    """NaN only where a class is never predicted: at b = 0 for class 2 here, which no pixel predicts."""

    def precision_of_class_2(tp, gt, pd):  # finite on the matrices check_reward tries, NaN where pd[2] = 0
        return torch.where(gt.sum(-1) == 0, 0.0, tp[..., 2] / pd[..., 2])

    with pytest.raises(ValueError, match="'precision_of_class_2' is not finite for class 0's offset"):
        fit_offsets(random_case(lattice=False), precision_of_class_2, progress=False)


def test_the_threshold_index_is_the_first_grid_value_that_wins_even_at_ties_and_large_logits():
    """Reference: every grid value tried, with the float32 sums the argmax computes."""
    g = torch.Generator().manual_seed(6)
    grid = _grid(0.05, 5.0)
    u = torch.randn(4000, generator=g) * torch.tensor([1.0, 30.0, 3000.0]).repeat(1334)[:4000]
    # Half the runners-up sit exactly where a grid value lands u on them: ties, and near-ties from rounding.
    m = torch.where(torch.arange(4000) % 2 == 0, u + grid[torch.randint(0, len(grid), (4000,), generator=g)], u + 1.3)
    c_first = torch.rand(4000, generator=g) < 0.5
    sums = u.view(-1, 1) + grid.view(1, -1)  # (n, K)
    wins = (sums > m.view(-1, 1)) | ((sums == m.view(-1, 1)) & c_first.view(-1, 1))
    reference = torch.where(wins.any(1), wins.float().argmax(1), len(grid))
    assert torch.equal(_first_winning_index(u, m, c_first, grid), reference)


def test_calibrating_a_model_fits_on_the_models_device(monkeypatch):
    """The fit runs where the model is (a GPU's passes take seconds), unless told otherwise."""
    from hf_reward.cli import evaluation

    seen = {}

    def spy(cache, reward, **kwargs):
        seen.update(kwargs)
        return fit_offsets(cache, reward, **kwargs)

    monkeypatch.setattr(evaluation, "fit_offsets", spy)
    model = tiny_segformer(C)
    data = BlobsDataset(4, 32, C)
    evaluation.calibrate_model(model, data, "miou", split="train", progress=False)
    assert seen["device"] == next(model.parameters()).device
    evaluation.calibrate_model(model, data, "miou", split="train", progress=False, device="cpu")
    assert seen["device"] == "cpu"


@pytest.mark.parametrize("per_image", [False, True])
def test_a_fit_over_no_counted_pixel_is_refused_not_scored_zero(per_image):
    logits = torch.randn(2, 3, 4, 4)
    void = torch.full((2, 4, 4), 255)
    with pytest.raises(ValueError, match="no counted pixel: every label is ignore_index \\(255\\)"):
        fit_offsets([(logits, void)], "miou_gt" if per_image else "miou", per_image=per_image, progress=False)


@pytest.mark.parametrize("size", [(16, 20), (13, 29), (4, 5), (3, 2)])
def test_the_pointwise_bilinear_gather_equals_interpolate_at_the_sampled_points(size):
    logits = torch.randn(C, 4, 5, generator=torch.Generator().manual_seed(1))
    full = upsample_logits(logits[None], size)[0].flatten(1)  # (C, H W)
    points = torch.randperm(size[0] * size[1], generator=torch.Generator().manual_seed(2))[:37]
    assert torch.allclose(bilinear_at(logits, size, points), full[:, points], atol=1e-6, rtol=0)


def cached(batches) -> LogitCache:
    cache = LogitCache(C)
    for z, y in batches:
        for zi, yi in zip(z, y):
            cache.append(zi, torch.where((yi < 0) | (yi >= C), 255, yi))
    return cache


@pytest.mark.parametrize("per_image", [False, True])
def test_a_sample_of_every_pixel_gives_the_exact_fit(per_image):
    g = torch.Generator().manual_seed(3)
    same_size = [(torch.randn(2, C, 16, 20, generator=g), y) for _, y in random_case(False, seed=4)]
    exact = cached(same_size)
    reward = "miou_gt" if per_image else "miou"
    a = fit_offsets(exact, reward, per_image=per_image, progress=False)
    b = fit_offsets(exact, reward, per_image=per_image, pixels_per_image=16 * 20, progress=False)
    assert torch.equal(a.offsets, b.offsets) and a.history == b.history
    assert torch.equal(a.confusion_after, b.confusion_after) and not torch.equal(a.offsets, torch.zeros(C))
    # with the quarter-size logits resized: the same offsets (values equal up to fp16 rounding of the sample)
    resized = cached(random_case(False, seed=4))
    a = fit_offsets(resized, reward, per_image=per_image, progress=False)
    b = fit_offsets(resized, reward, per_image=per_image, pixels_per_image=10**6, progress=False)
    assert torch.equal(a.offsets, b.offsets)


def test_the_pixel_sample_is_seeded_and_weighs_each_pixel_by_what_it_stands_for():
    cache = cached(random_case(False, seed=5))
    cache.append(torch.randn(C, 2, 3), torch.randint(0, C, (8, 10)))  # 80 < 100 pixels: all, in a group of its own
    a, b, other = (PixelSample(cache, 100, seed=s) for s in (0, 0, 1))
    assert len(a) == 2 and a.images == 7
    for (z, y), (z2, y2) in zip(a, b):
        assert torch.equal(z, z2) and torch.equal(y, y2)
    assert not torch.equal(next(iter(a))[1], next(iter(other))[1])
    (z, y), (z_last, y_last) = a
    assert z.dtype == torch.float16 and tuple(z.shape) == (6, C, 1, 100) and tuple(y_last.shape) == (1, 1, 80)
    assert a.weights[0].tolist() == [16 * 20 / 100] * 6 and a.weights[1].tolist() == [1.0]
    # the weighted sample's counts estimate the split's: within 10% of its counted pixels here
    fit = fit_offsets(a, "miou", max_sweeps=1, progress=False)
    counted = sum(int((y < C).sum()) for _, y in cache)
    assert fit.confusion_before.dtype == torch.float64
    assert abs(float(fit.confusion_before.sum()) / counted - 1) < 0.1
    with pytest.raises(ValueError, match="pixels_per_image must be at least 1, got 0"):
        PixelSample(cache, 0)


def test_large_splits_default_to_a_pixel_sample_and_decoders_use_it(monkeypatch):
    import hf_reward.calibrate as calibrate
    from hf_reward.decoders import fit_decoders

    cache = cached(random_case(False, seed=6))  # 6 images of 16 x 20
    assert cache.label_pixels == 6 * 320 and default_pixel_sample(cache) is None
    exact = fit_decoders(cache, ["offsets"], get_reward("miou"))["offsets"]
    assert torch.equal(exact, fit_offsets(cache, "miou", progress=False).offsets)
    monkeypatch.setattr(calibrate, "EXACT_MAX_PIXELS", 1000)
    assert default_pixel_sample(cache) == calibrate.DEFAULT_PIXELS_PER_IMAGE
    monkeypatch.setattr(calibrate, "DEFAULT_PIXELS_PER_IMAGE", 50)
    sampled = fit_decoders(cache, ["offsets", "image_offsets"], get_reward("miou"))
    assert torch.equal(sampled["offsets"], fit_offsets(PixelSample(cache, 50), "miou", progress=False).offsets)
    assert torch.equal(fit_decoders(cache, ["offsets"], get_reward("miou"), pixels_per_image=0)["offsets"], exact)
