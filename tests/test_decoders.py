"""Decoders (hf_reward.decoders): each one's masks, and every decoder's metrics on a split."""

import copy

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
