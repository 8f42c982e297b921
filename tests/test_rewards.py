import numpy as np
import pytest
import torch

from hf_reward import confusion_matrix, dice, miou, pixel_accuracy

IGNORE = 255


def naive_scores(pred, target, num_classes, ignore_index=IGNORE):
    """Per image, per class, with plain numpy loops: the reference semantics."""
    out = {"miou": [], "dice": [], "acc": []}
    for p, t in zip(pred.numpy(), target.numpy()):
        keep = t != ignore_index
        p, t = p[keep], t[keep]
        ious, dices = [], []
        for c in range(num_classes):
            inter = np.sum((p == c) & (t == c))
            union = np.sum((p == c) | (t == c))
            if union:
                ious.append(inter / union)
                dices.append(2 * inter / (np.sum(p == c) + np.sum(t == c)))
        out["miou"].append(np.mean(ious) if ious else np.nan)
        out["dice"].append(np.mean(dices) if dices else np.nan)
        out["acc"].append(np.mean(p == t) if len(t) else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def test_hand_computed_values():
    pred = torch.tensor([[[0, 0], [1, 1]]])
    target = torch.tensor([[[0, 1], [1, 1]]])
    # IoU(0) = 1/2, IoU(1) = 2/3, class 2 absent from both -> excluded.
    assert miou(pred, target, 3).item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Dice(0) = 2*1/(2+1), Dice(1) = 2*2/(2+3).
    assert dice(pred, target, 3).item() == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert pixel_accuracy(pred, target, 3).item() == pytest.approx(3 / 4)


def test_ignore_pixels_excluded_from_prediction_and_target():
    pred = torch.tensor([[[2, 0], [1, 1]]])
    target = torch.tensor([[[IGNORE, 0], [1, 1]]])
    # The ignored pixel predicted as class 2 must not make class 2 a false positive.
    assert miou(pred, target, 3).item() == pytest.approx(1.0)
    cm = confusion_matrix(pred, target, 3)
    assert cm.sum().item() == 3 and cm[0, :, 2].sum().item() == 0


def test_false_positive_class_counts():
    pred = torch.tensor([[[2, 0], [1, 1]]])
    target = torch.tensor([[[0, 0], [1, 1]]])
    # Class 2 predicted but absent from the target: present, IoU 0.
    assert miou(pred, target, 3).item() == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_all_ignore_image_is_nan_others_unaffected():
    pred = torch.zeros(2, 3, 3, dtype=torch.long)
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    target[0] = IGNORE
    for fn in (miou, dice, pixel_accuracy):
        r = fn(pred, target, 4)
        assert torch.isnan(r[0]) and r[1].item() == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_reference_on_random_masks(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 6
    # Few classes per image, so many are absent from an image; ~20% ignore; one all-ignore image.
    pred = torch.randint(0, 4, (7, 9, 11), generator=g)
    target = torch.randint(1, 5, (7, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    target[3] = IGNORE
    ref = naive_scores(pred, target, num_classes)
    np.testing.assert_allclose(miou(pred, target, num_classes).numpy(), ref["miou"], rtol=1e-6)
    np.testing.assert_allclose(dice(pred, target, num_classes).numpy(), ref["dice"], rtol=1e-6)
    np.testing.assert_allclose(pixel_accuracy(pred, target, num_classes).numpy(), ref["acc"], rtol=1e-6)


def test_confusion_matrix_layout_and_shape_check():
    pred = torch.tensor([[[1, 1]], [[0, 2]]])
    target = torch.tensor([[[0, 1]], [[0, 0]]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.shape == (2, 3, 3)
    assert cm[0, 0, 1] == 1 and cm[0, 1, 1] == 1  # [image, target, pred]
    assert cm[1, 0, 0] == 1 and cm[1, 0, 2] == 1
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(pred, target[:, :, :1], 3)


@pytest.mark.parametrize("ignore_index", [-100, 0, 4, 255])
def test_any_ignore_index(ignore_index):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 6), generator=g)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = ignore_index
    ref = naive_scores(pred, target, 4, ignore_index)
    np.testing.assert_allclose(miou(pred, target, 4, ignore_index).numpy(), ref["miou"], rtol=1e-6)
    assert confusion_matrix(pred, target, 4, ignore_index).sum() == (target != ignore_index).sum()
