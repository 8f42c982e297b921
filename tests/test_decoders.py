"""Decoders (hf_reward.decoders): each one's masks, and every decoder's metrics on a split."""

import copy
import itertools

import pytest
import torch
from conftest import BlobsDataset, tiny_segformer

from hf_reward.calibrate import collect_logits, fit_offsets, fold_offsets
from hf_reward.cli.evaluation import evaluate
from hf_reward.data import collate_segmentation
from hf_reward.decoders import DECODERS, decode, score_decoders
from hf_reward.rewards import miou

C = 4
ID2LABEL = {i: f"class{i}" for i in range(C)}


def sharp_model():
    model = tiny_segformer(num_labels=C)
    with torch.no_grad():  # a random head's logits lie ~1e-4 apart, far below the offsets' grid
        model.decode_head.classifier.weight.mul_(2000.0)
    return model


def cache(model, dataset):
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_segmentation)
    return collect_logits(model, loader, progress=False)


@pytest.mark.filterwarnings("ignore:offsets of classes")
@pytest.mark.parametrize("per_image", [False, True])
def test_offsets_decode_as_the_model_with_the_offsets_folded_in(per_image):
    model, data = sharp_model(), BlobsDataset(n=8, num_labels=C)
    fitted = fit_offsets(cache(model, data), "miou_gt" if per_image else "miou", per_image=per_image, progress=False)
    folded = copy.deepcopy(model)
    fold_offsets(folded, fitted, split="train")
    name = "image_offsets" if per_image else "offsets"
    for (logits, labels), (folded_logits, _) in zip(cache(model, data), cache(folded, data)):
        size = tuple(labels.shape[-2:])
        masks = decode(name, logits, size, {name: fitted.offsets})
        assert (masks == decode("argmax", folded_logits, size, {})).float().mean() > 0.99  # fp16 cache, float sums


def test_rankseg_maximises_its_own_objective_found_by_brute_force():
    """RankSEG decodes probabilities for the expected IoU. On binary images of 8 pixels, independent with
    probabilities p, a mask's expected IoU is exact by enumerating the 2^8 labelings, and the best of the 2^8
    masks is the reference. Over 20 images RankSEG's (RMA, no pruning) mask is within 0.5% of it on every one;
    thresholding at 0.5 loses 13% on average (down to an empty mask when no pixel passes 0.5)."""
    from rankseg.functional import rankseg

    labelings = torch.tensor(list(itertools.product([0, 1], repeat=8)), dtype=torch.float64)  # (256, 8)
    ratios, thresholded = [], []
    for seed in range(20):
        p = torch.rand(8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8
        chance = (labelings * p + (1 - labelings) * (1 - p)).prod(1)

        def expected_iou(mask, chance=chance):
            union = ((labelings + mask) > 0).sum(1)
            return float((chance * torch.where(union > 0, (labelings * mask).sum(1) / union.clamp(min=1), 1.0)).sum())

        best = max(expected_iou(mask) for mask in labelings)
        decoded = rankseg(p.float().view(1, 1, 2, 4), metric="IoU", output_mode="multilabel", pruning_prob=0.0)
        ratios.append(expected_iou(decoded.view(-1).double()) / best)
        thresholded.append(expected_iou((p > 0.5).double()) / best)
    assert min(ratios) > 0.995 and sum(thresholded) / 20 < 0.9


def test_rankseg_decodes_every_image_to_classes():
    logits = torch.randn(2, C, 8, 10) * 3
    masks = decode("rankseg", logits, (32, 40), {})
    assert masks.shape == (2, 32, 40) and masks.dtype == torch.long and 0 <= masks.min() and masks.max() < C
    with pytest.raises(ValueError, match="decoder must be one of"):
        decode("median", logits, (32, 40), {})


@pytest.mark.filterwarnings("ignore:offsets of classes")
def test_every_decoder_is_scored_on_every_split_and_argmax_is_the_model():
    model, train, val = sharp_model(), BlobsDataset(n=8, num_labels=C), BlobsDataset(n=6, num_labels=C, seed=1)
    options = {"per_image": True, "boundary_tolerances": ["1px"], "thing_classes": ["class1"]}
    scores = score_decoders(model, train, {"validation": val}, list(DECODERS), miou, ID2LABEL, **options)
    assert set(scores) == {"validation", "fitted"} and set(scores["validation"]) == set(DECODERS)
    assert set(scores["fitted"]) == {"offsets", "image_offsets"} and len(scores["fitted"]["offsets"]) == C
    assert {"image_miou", "boundary_f_1px", "object_f1", "reward", "mean_iou"} <= set(scores["validation"]["rankseg"])
    plain = evaluate(model, val, ID2LABEL, batch_size=4, reward=miou, metric_options=options, progress=False).compute()
    for key in ("mean_iou", "image_miou", "boundary_f_1px", "object_f1"):
        assert scores["validation"]["argmax"][key] == pytest.approx(plain[key], abs=1e-3), key


@pytest.mark.slow
def test_the_rankseg_benchmark_runs_and_the_library_decodes_as_its_chosen_setting(tmp_path):
    """scripts/bench_rankseg.py on two CamVid images; the library's decoder is its scale 0.25, pruning 0 setting."""
    from conftest import CAMVID, load_script

    from hf_reward.data.camvid import camvid_id2label
    from hf_reward.modeling import build_segformer

    id2label, _ = camvid_id2label(CAMVID)
    build_segformer(
        id2label, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16
    ).save_pretrained(tmp_path)
    bench = load_script("bench_rankseg")
    rows = bench.main(["--checkpoint", str(tmp_path), "--camvid_root", str(CAMVID), "--max_images", "2"])
    assert len(rows) == len(bench.SETTINGS) and rows[0].startswith("| 1 | 0.5 |") and "(+0.00)" in rows[0]
    logits = torch.randn(2, C, 30, 40) * 3
    assert torch.equal(decode("rankseg", logits, (360, 480), {}), bench.decode(logits, (360, 480), 0.25, 0.0))
    logits = torch.randn(2, C, 16, 16) * 3  # small labels keep their size: 90 pixels at least
    assert torch.equal(decode("rankseg", logits, (64, 64), {}), bench.decode(logits, (64, 64), 1.0, 0.0))
