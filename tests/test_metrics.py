"""Dataset-level mIoU: agreement with the official Cityscapes evaluation and with the semantics
of `evaluate`'s mean_iou, on fixtures with ignore pixels and absent classes; the `evaluate`
module of the project; logits upsampling; accumulation; Trainer with batch_eval_metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import id2label as cs_id2label
from cityscapesscripts.helpers.labels import trainId2label

from hf_reward.data import cityscapes_id2label, cityscapes_label_map, label_lookup
from hf_reward.decisions import upsample_logits
from hf_reward.metrics import StreamingMeanIoU, scores_from_confusion


def one_hot_logits(pred: np.ndarray, num_classes: int) -> torch.Tensor:
    """Logits (B, C, H, W) whose argmax is ``pred`` (B, H, W)."""
    return F.one_hot(torch.from_numpy(pred).long(), num_classes).permute(0, 3, 1, 2).float()


def evaluate_mean_iou_reference(preds, refs, num_labels, ignore_index):
    """Independent numpy implementation of the semantics of evaluate's mean_iou (Hub module
    "evaluate-metric/mean_iou"): per image, drop pixels whose reference is ignore_index, add
    histograms of intersection / prediction / reference; IoU = I / (P + R - I), accuracy = I / R,
    NaN where the denominator is 0; means are nanmeans; overall accuracy = sum I / sum R."""
    total_i = total_p = total_r = np.zeros(num_labels)
    for pred, ref in zip(preds, refs):
        keep = ref != ignore_index
        pred, ref = pred[keep], ref[keep]
        inter = pred[pred == ref]

        def hist(x):
            return np.histogram(x, bins=num_labels, range=(0, num_labels - 1))[0]

        total_i, total_p, total_r = total_i + hist(inter), total_p + hist(pred), total_r + hist(ref)
    union = total_p + total_r - total_i
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = total_i / union, total_i / total_r
    return {
        "mean_iou": np.nanmean(iou),
        "mean_accuracy": np.nanmean(acc),
        "overall_accuracy": total_i.sum() / total_r.sum(),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
    }


def fixture(seed=0, num_classes=6, ignore_index=255, shape=(3, 12, 16)):
    """Predictions and references with ignore pixels, a class absent from both (5), a class only
    predicted (4) and a class only in the reference (3)."""
    rng = np.random.default_rng(seed)
    ref = rng.choice([0, 1, 2, 3], size=shape)
    pred = np.where(rng.random(shape) < 0.6, ref, rng.choice([0, 1, 2, 4], size=shape))
    pred[ref == 3] = rng.choice([0, 1], size=(ref == 3).sum())
    ref[rng.random(shape) < 0.15] = ignore_index
    return pred, ref


def test_agrees_with_evaluate_mean_iou_semantics_across_batches():
    pred, ref = fixture()
    metric = StreamingMeanIoU(6, ignore_index=255)
    for b in range(3):  # one image per batch: dataset-level, not a mean over images
        metric.update(one_hot_logits(pred[b : b + 1], 6), torch.from_numpy(ref[b : b + 1]))
    got, want = metric.scores(), evaluate_mean_iou_reference(pred, ref, 6, 255)
    np.testing.assert_allclose(got["iou"], want["per_category_iou"], equal_nan=True)
    np.testing.assert_allclose(got["accuracy"], want["per_category_accuracy"], equal_nan=True)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert got[key] == pytest.approx(want[key])
    assert math.isnan(got["iou"][5]) and got["iou"][4] == 0 and got["iou"][3] == 0  # absent / FP only / FN only
    per_image_mean = np.mean(
        [evaluate_mean_iou_reference(pred[b : b + 1], ref[b : b + 1], 6, 255)["mean_iou"] for b in range(3)]
    )
    assert got["mean_iou"] != pytest.approx(per_image_mean)


def test_evaluate_module_loads_offline_and_gives_the_same_numbers():
    import evaluate

    from hf_reward.mean_iou import METRIC_PATH

    pred, ref = fixture(seed=1)
    module = evaluate.load(METRIC_PATH)
    got = module.compute(predictions=list(pred), references=list(ref), num_labels=6, ignore_index=255)
    want = evaluate_mean_iou_reference(pred, ref, 6, 255)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert got[key] == pytest.approx(want[key])
    np.testing.assert_allclose(got["per_category_iou"], want["per_category_iou"], equal_nan=True)
    shapes = module.compute(
        predictions=list(pred), references=list(ref), num_labels=6, boundary_tolerances=["1px"], thing_labels=[2]
    )
    streamed = StreamingMeanIoU(6, per_image=True, boundary_tolerances=["1px"], thing_classes=["2"])
    for p, r in zip(pred, ref):
        streamed.update_masks(torch.as_tensor(p)[None], torch.as_tensor(r)[None])
    for key in ("image_miou", "class_miou", "image_miou_worst10", "boundary_f_1px", "object_f1"):
        assert shapes[key] == pytest.approx(streamed.compute()[key]), key


def test_agrees_with_official_cityscapes_evaluation():
    """Label-id ground truth (void ids included) scored by cityscapesscripts' own IoU and
    averaging functions on a confusion matrix built as evaluatePair does."""
    rng = np.random.default_rng(2)
    shape = (2, 20, 24)
    gt_ids = rng.choice([0, 1, 4, 7, 8, 11, 17, 20, 24, 26, 33], size=shape)  # void: 0, 1, 4
    train_ids = np.vectorize(lambda i: cityscapes_label_map()[i])(gt_ids)
    pred_train = np.where(rng.random(shape) < 0.7, train_ids, rng.choice([0, 2, 5, 13, 15], size=shape))
    pred_train = np.where(pred_train == 255, 0, pred_train)  # a model predicts a class everywhere

    metric = StreamingMeanIoU(19, cityscapes_id2label())
    table = label_lookup(cityscapes_label_map())
    metric.update(one_hot_logits(pred_train, 19), torch.from_numpy(table[gt_ids]))
    ours = metric.compute()

    args = cs_eval.args
    conf = cs_eval.generateMatrix(args)  # official: (34, 34) over label ids, conf[gt, pred]
    pred_ids = np.vectorize(lambda t: trainId2label[t].id)(pred_train)
    encoded = gt_ids.astype(np.int64) * 100 + pred_ids
    values, counts = np.unique(encoded, return_counts=True)
    for v, c in zip(values, counts):
        conf[v // 100, v % 100] += c
    official = {
        cs_id2label[i].name: cs_eval.getIouScoreForLabel(i, conf, args)
        for i in args.evalLabels
        if not cs_id2label[i].ignoreInEval
    }
    official_mean = cs_eval.getScoreAverage(official, args)

    for name, iou in official.items():
        key = "iou_" + name.replace(" ", "_")
        assert (math.isnan(ours[key]) and math.isnan(iou)) or ours[key] == pytest.approx(iou), name
    assert math.isnan(ours["iou_bus"]) is False and ours["iou_bus"] == 0  # predicted, never true
    assert math.isnan(ours["iou_wall"])  # neither predicted nor true: out of the mean
    assert ours["mean_iou"] == pytest.approx(official_mean)


def test_logits_are_upsampled_bilinearly_to_the_label_size():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 16, 20))
    labels[:, :2] = 255
    metric = StreamingMeanIoU(3)
    metric.update(logits, labels)
    pred = F.interpolate(logits, size=(16, 20), mode="bilinear", align_corners=False).argmax(1)
    keep = labels != 255
    cm = np.zeros((3, 3), np.int64)
    np.add.at(cm, (labels[keep].numpy(), pred[keep].numpy()), 1)
    assert torch.equal(metric.confusion, torch.from_numpy(cm))
    assert metric.compute()["overall_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())


def test_scores_and_keys_by_class_name():
    metric = StreamingMeanIoU(3, {0: "road", 1: "traffic sign", 2: "sky"})
    metric.update_masks(torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 1, 1, 255]]]))
    out = metric.compute()
    assert out["iou_road"] == 0.5 and out["iou_traffic_sign"] == 0.5 and math.isnan(out["iou_sky"])
    assert out["mean_iou"] == 0.5 and out["mean_accuracy"] == 0.75 and out["overall_accuracy"] == pytest.approx(2 / 3)
    assert (
        scores_from_confusion(np.zeros((2, 2)))["mean_iou"] != scores_from_confusion(np.zeros((2, 2)))["mean_iou"]
    )  # NaN


def test_bad_labels_and_shapes_are_refused():
    metric = StreamingMeanIoU(3)
    with pytest.raises(ValueError, match=r"labels hold \[7\]"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 7], [255, 1]]]))
    with pytest.raises(ValueError, match=r"\(B, C=3, h, w\)"):
        metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="id2label has 2 classes"):
        StreamingMeanIoU(3, {0: "a", 1: "b"})


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 29, 37), (1, 3, 33, 47, 100, 100), (2, 11, 32, 44, 128, 176)])
def test_upsampled_logits_are_bilinear_and_each_channel_does_not_depend_on_the_others(shape):
    b, c, h, w, *size = shape
    logits = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0)) * 10
    up = upsample_logits(logits, tuple(size))
    stock = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    assert up.shape == (b, c, *size) and torch.allclose(up, stock, atol=1e-5, rtol=0)
    for j in range(c):  # bitwise, so that a pass over one class agrees with the argmax over all
        assert torch.equal(up[:, j], upsample_logits(logits[:, j : j + 1], tuple(size))[:, 0])
