import numpy as np
import pytest
import torch

from hf_reward.rewards import (
    REWARDS,
    check_reward,
    class_counts,
    confusion_matrix,
    get_reward,
    miou,
    reward_of_masks,
)

IGNORE = 255


def naive_reward(name, pred, target, num_classes, ignore_index=IGNORE, beta=1.0, weights=None):
    """One image at a time, with plain numpy loops over classes: the reference semantics."""
    out = []
    for p, t in zip(pred.numpy(), target.numpy()):
        keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
        p, t = p[keep], t[keep]
        n = len(t)
        rows = []  # (score, present, weight) per class
        for c in range(num_classes):
            tp, gt, pd = np.sum((p == c) & (t == c)), np.sum(t == c), np.sum(p == c)
            w = 1.0 if weights is None else weights[c]
            if name == "miou":
                rows.append((tp / (gt + pd - tp) if gt + pd - tp else 0.0, gt + pd - tp > 0, w))
            elif name == "miou_gt":  # only the classes in the target count
                rows.append((tp / (gt + pd - tp) if gt else 0.0, gt > 0, 1.0))
            elif name in ("dice", "f_beta"):
                b2 = beta**2 if name == "f_beta" else 1.0
                rows.append(((1 + b2) * tp / (b2 * gt + pd) if b2 * gt + pd else 0.0, b2 * gt + pd > 0, w))
            elif name == "mean_accuracy":
                rows.append((tp / gt if gt else 0.0, gt > 0, 1.0))
            elif name == "fw_iou":
                rows.append((gt / n * tp / (gt + pd - tp) if gt else 0.0, True, 1.0))
        if name == "pixel_accuracy":
            out.append(np.mean(p == t) if n else 0.0)
        elif name == "fw_iou":
            out.append(sum(s for s, _, _ in rows) if n else 0.0)
        elif name == "cohen_kappa":
            po = np.mean(p == t) if n else 0.0
            pe = sum(np.sum(t == c) * np.sum(p == c) for c in range(num_classes)) / n**2 if n else 0.0
            out.append((po - pe) / (1 - pe) if pe < 1 else 0.0)
        else:
            total = sum(w for _, present, w in rows if present)
            out.append(sum(s * w for s, present, w in rows if present) / total if total else 0.0)
    return np.array(out)


def random_masks(seed, batch=7, num_classes=6):
    g = torch.Generator().manual_seed(seed)
    # Few classes per image, so many are absent from an image; ~20% ignore; one all-ignore image.
    pred = torch.randint(0, 4, (batch, 9, 11), generator=g)
    target = torch.randint(1, 5, (batch, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGNORE
    target[3] = IGNORE
    return pred, target


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("seed", range(3))
def test_every_named_reward_matches_a_naive_reference(name, seed):
    pred, target = random_masks(seed)
    got = reward_of_masks(REWARDS[name], pred, target, 6)
    np.testing.assert_allclose(got.numpy(), naive_reward(name, pred, target, 6), rtol=1e-10, atol=1e-12)
    assert got[3] == 0  # the all-ignore image: an empty matrix scores 0


def test_weighted_and_beta_variants_match_the_reference():
    pred, target = random_masks(0)
    weights = [0.0, 2.0, 1.0, 0.5, 3.0, 1.0]
    for name, kwargs in [("miou", {}), ("f_beta", {"beta": 2.0})]:
        reward = get_reward(name, class_weights=weights, **kwargs)
        expected = naive_reward(name, pred, target, 6, weights=weights, **kwargs)
        np.testing.assert_allclose(reward_of_masks(reward, pred, target, 6).numpy(), expected, rtol=1e-10)
    # beta = 1 is dice
    torch.testing.assert_close(
        reward_of_masks(get_reward("f_beta"), pred, target, 6), reward_of_masks(get_reward("dice"), pred, target, 6)
    )


def test_hand_computed_values():
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 0]])  # [target, pred]: class 2 absent
    counts = class_counts(cm)
    assert REWARDS["miou"](*counts).item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert REWARDS["dice"](*counts).item() == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert REWARDS["pixel_accuracy"](*counts).item() == pytest.approx(3 / 4)
    assert REWARDS["mean_accuracy"](*counts).item() == pytest.approx((1 / 2 + 1) / 2)
    assert REWARDS["fw_iou"](*counts).item() == pytest.approx(2 / 4 * 1 / 2 + 2 / 4 * 2 / 3)
    po, pe = 3 / 4, (2 * 1 + 2 * 3) / 16
    assert REWARDS["cohen_kappa"](*counts).item() == pytest.approx((po - pe) / (1 - pe))
    # weights 1, 3 on the present classes
    assert get_reward("miou", class_weights=[1, 3, 7])(*counts).item() == pytest.approx((1 / 2 + 3 * 2 / 3) / 4)


def test_ignore_pixels_excluded_from_prediction_and_target():
    pred = torch.tensor([[[2, 0], [1, 1]]])
    target = torch.tensor([[[IGNORE, 0], [1, 1]]])
    # The ignored pixel predicted as class 2 must not make class 2 a false positive.
    assert reward_of_masks(miou, pred, target, 3).item() == pytest.approx(1.0)
    cm = confusion_matrix(pred, target, 3)
    assert cm.sum().item() == 3 and cm[0, :, 2].sum().item() == 0


def test_out_of_range_values_never_reach_another_class_or_image():
    """Target 260 in image 0 used to be counted as a class of image 1; 300 in the last image crashed."""
    pred = torch.zeros(2, 1, 3, dtype=torch.long)
    target = torch.tensor([[[0, 260, 57]], [[1, 1, 300]]])
    cm = confusion_matrix(pred, target, 11)
    assert cm.shape == (2, 11, 11)
    assert cm[0].sum() == 1 and cm[0, 0, 0] == 1  # only the valid pixel of image 0
    assert cm[1].sum() == 2 and cm[1, 1, 0] == 2  # image 1 untouched by image 0's 260
    bad_pred = torch.tensor([[[11, -1, 0]], [[0, 0, 0]]])
    assert confusion_matrix(bad_pred, torch.zeros(2, 1, 3, dtype=torch.long), 11).sum() == 4


def test_confusion_matrix_layout_and_shape_check():
    pred = torch.tensor([[[1, 1]], [[0, 2]]])
    target = torch.tensor([[[0, 1]], [[0, 0]]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.shape == (2, 3, 3)
    assert cm[0, 0, 1] == 1 and cm[0, 1, 1] == 1  # [image, target, pred]
    assert cm[1, 0, 0] == 1 and cm[1, 0, 2] == 1
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(pred, target[:, :, :1], 3)


@pytest.mark.parametrize("ignore_index", [-100, 4, 255])
def test_any_ignore_index(ignore_index):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 6), generator=g)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = ignore_index
    ref = naive_reward("miou", pred, target, 4, ignore_index)
    np.testing.assert_allclose(reward_of_masks(miou, pred, target, 4, ignore_index).numpy(), ref, rtol=1e-10)
    assert confusion_matrix(pred, target, 4, ignore_index).sum() == (target != ignore_index).sum()


def test_check_reward_names_what_is_wrong():
    for reward in REWARDS.values():
        check_reward(reward, 5)
    with pytest.raises(ValueError, match=r"gave \(4, 3, 5\)"):
        check_reward(lambda tp, gt, pd: tp, 5)
    with pytest.raises(ValueError, match=r"not finite on count matrices of kind \['empty', 'class 0 absent'\]"):
        check_reward(lambda tp, gt, pd: (tp / (gt + pd - tp)).mean(-1), 5)  # 0/0 where a class is in neither

    def precision_nan_where_never_predicted(tp, gt, pd):
        return (tp / pd).nan_to_num(nan=0.0, posinf=0.0).mean(-1) + torch.where(pd[..., 0] > 0, 0.0, torch.nan)

    with pytest.raises(ValueError, match=r"\['empty', 'class 0 absent', 'class 0 never predicted'\]"):
        check_reward(precision_nan_where_never_predicted, 5)
    every_class = []
    check_reward(lambda tp, gt, pd: every_class.append((gt > 0).all(-1) & (pd > 0).all(-1)) or tp.sum(-1), 5)
    assert every_class[0][1].all()  # the matrices said to have every class present do
    with pytest.raises(ValueError, match="failed"):
        check_reward(lambda tp, gt, pd: tp @ torch.ones(2), 5)


def test_get_reward_rejects_unknown_names_and_misplaced_weights():
    with pytest.raises(ValueError, match="reward must be one of"):
        get_reward("hausdorff")
    with pytest.raises(ValueError, match="class_weights apply to"):
        get_reward("pixel_accuracy", class_weights=[1.0, 2.0])
