"""Scores of whole masks (hf_reward.mask_scores) and the per-image metrics, against independent references."""

import itertools
import math

import pytest
import torch

from hf_reward.mask_scores import boundary_f, object_counts, object_f1, tolerance_pixels, within
from hf_reward.metrics import StreamingMeanIoU

IGNORE = 255


def brute_boundary_f(pred, target, num_classes, radius):
    """Per-image boundary F by definition: neighbours checked one by one, distances over every pair of pixels."""
    h, w = target.shape

    t, p = target.tolist(), pred.tolist()

    def is_boundary(m, y, x):  # a non-void neighbour with another value; void pixels are never boundaries
        return t[y][x] != IGNORE and any(
            0 <= y + dy < h and 0 <= x + dx < w and t[y + dy][x + dx] != IGNORE and m[y + dy][x + dx] != m[y][x]
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
        )

    scores = []
    for c in range(num_classes):
        g = [(y, x) for y in range(h) for x in range(w) if t[y][x] == c and is_boundary(t, y, x)]
        q = [(y, x) for y in range(h) for x in range(w) if p[y][x] == c and is_boundary(p, y, x)]
        if not g and not q:
            continue
        if not g or not q:
            scores.append(0.0)
            continue

        def near(a, others):
            return any(math.dist(a, b) <= radius for b in others)

        precision = sum(near(a, g) for a in q) / len(q)
        recall = sum(near(a, q) for a in g) / len(g)
        scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores) if scores else 1.0


def random_masks(n=3, h=7, w=9, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (n, h // 2 + 1, w // 2 + 1), generator=g)
    target = target.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w].contiguous()  # blobs, not noise
    pred = torch.where(
        torch.rand(n, h, w, generator=g) < 0.25, torch.randint(0, classes, (n, h, w), generator=g), target
    )
    target[torch.rand(n, h, w, generator=g) < 0.1] = IGNORE
    return pred, target


@pytest.mark.parametrize("tolerance", ["0px", "1px", "1.5px", "2.5px", "8px", "40%"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_f_matches_the_definition(tolerance, seed):
    pred, target = random_masks(seed=seed)
    radius = tolerance_pixels(tolerance, (7, 9))
    expected = [brute_boundary_f(p, t, 3, radius) for p, t in zip(pred, target)]
    torch.testing.assert_close(
        boundary_f(pred, target, 3, tolerance, IGNORE), torch.tensor(expected, dtype=torch.float64)
    )


@pytest.mark.parametrize("radius", [0.5, 1.0, 2.5, 6.0, 7.5])  # the convolution and the distance transform
def test_within_is_euclidean_distance(radius):
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 16, 17, generator=g) < 0.03
    coords = [list(zip(*torch.nonzero(m, as_tuple=True))) for m in points]
    expected = torch.tensor(
        [
            [[any(math.dist((y, x), (int(a), int(b))) <= radius for a, b in cs) for x in range(17)] for y in range(16)]
            for cs in coords
        ]
    )
    assert torch.equal(within(points, radius), expected)


def test_a_map_without_boundaries_agrees_with_itself_and_one_edge_off_scores_zero():
    flat = torch.zeros(1, 5, 5, dtype=torch.long)
    assert boundary_f(flat, flat, 2).item() == 1.0
    edge = flat.clone()
    edge[:, :, 3:] = 1
    assert boundary_f(flat, edge, 2).item() == 0.0  # the target has an edge the prediction misses entirely
    assert tolerance_pixels("0.75%", (360, 480)) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="'<pixels>px'"):
        tolerance_pixels("2", (10, 10))


def test_objects_are_components_matched_one_to_one_at_half_iou():
    target = torch.zeros(1, 8, 12, dtype=torch.long)
    target[0, 1:4, 1:4] = 1  # object A: 9 pixels
    target[0, 5:7, 6:11] = 1  # object B: 10 pixels
    target[0, 0, 11] = 2  # another class: not a thing here
    pred = torch.zeros_like(target)
    pred[0, 1:4, 1:3] = 1  # 6 of A's pixels: IoU 6/9, a match
    pred[0, 5:7, 6:8] = 1  # 4 of B's 10: IoU 0.4, no match
    pred[0, 0, 6] = 1  # a stray pixel: a predicted object with no match
    pred[0, 7, 0] = 1
    target[0, 7, 0] = IGNORE  # a prediction on void does not count
    counts = object_counts(pred, target, thing_ids=[1], ignore_index=IGNORE)
    assert counts.tolist() == [[2, 3, 1]]
    assert object_f1(counts).item() == pytest.approx(2 * 1 / 5)
    diagonal = torch.zeros(1, 3, 3, dtype=torch.long)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = 1  # 8-connected: one object
    assert object_counts(diagonal, diagonal, [1]).tolist() == [[1, 1, 1]]
    assert object_f1(torch.zeros(1, 3, dtype=torch.long)).item() == 1.0  # no object anywhere


def test_per_image_metrics_match_a_hand_computation():
    # Image 0: classes {0, 1} in the target; image 1: {0} only, with a spurious 2 predicted; image 2: void.
    target = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 0]], [[IGNORE] * 4]])
    pred = torch.tensor([[[0, 1, 1, 1]], [[0, 0, 0, 2]], [[0, 0, 0, 0]]])
    metric = StreamingMeanIoU(3, per_image=True)
    metric.update_masks(pred[:2], target[:2])
    metric.update_masks(pred[2:], target[2:])
    scores = metric.compute()
    image0 = (1 / 2 + 2 / 3) / 2  # IoU_0 = 1/2, IoU_1 = 2/3
    image1 = 3 / 4  # IoU_0 = 3/4; class 2 is not in the target: no term of its own
    assert scores["image_miou"] == pytest.approx((image0 + image1) / 2)  # the void image does not count
    assert scores["class_miou"] == pytest.approx(((1 / 2 + 3 / 4) / 2 + 2 / 3) / 2)
    assert scores["image_miou_worst10"] == pytest.approx(min(image0, image1))
    assert scores["mean_iou"] == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)  # pooled: IoU 4/6, 2/3, and 0 for class 2


def test_boundary_and_object_metrics_are_means_over_images_and_pooled_counts():
    pred, target = random_masks(n=4, seed=3)
    metric = StreamingMeanIoU(3, boundary_tolerances=["1px"], thing_classes=["1"], ignore_index=IGNORE)
    for i in range(0, 4, 2):
        metric.update_masks(pred[i : i + 2], target[i : i + 2])
    scores = metric.compute()
    assert scores["boundary_f_1px"] == pytest.approx(
        sum(brute_boundary_f(p, t, 3, 1.0) for p, t in zip(pred, target)) / 4
    )
    counts = object_counts(pred, target, [1], IGNORE).sum(0).tolist()
    assert scores["object_recall"] == pytest.approx(counts[2] / counts[0])
    assert scores["object_precision"] == pytest.approx(counts[2] / counts[1])
    with pytest.raises(ValueError, match=r"thing_classes \['bus'\]"):
        StreamingMeanIoU(3, thing_classes=["bus"])


def test_every_worst_fraction_takes_at_least_one_image():
    metric = StreamingMeanIoU(2, per_image=True)
    for a, b in itertools.product([0, 1], repeat=2):
        metric.update_masks(torch.tensor([[[a, b]]]), torch.tensor([[[0, 1]]]))
    scores = metric.compute()
    # predictions [0, 0], [0, 1], [1, 0], [1, 1] against [0, 1]: per-image mIoU 1/4, 1, 0, 1/4
    assert scores["image_miou_worst10"] == 0.0 and scores["image_miou"] == pytest.approx(1.5 / 4)


def test_object_f1_has_one_definition_for_the_metric_and_the_reward():
    """No object in either mask: 1 for both. With objects: the metric is object_f1 of the counts summed over the
    split, the reward is object_f1 of each image's counts."""
    from hf_reward.mask_scores import get_mask_reward
    from hf_reward.metrics import StreamingMeanIoU

    empty = torch.zeros(1, 6, 6, dtype=torch.long)
    reward = get_mask_reward("object_f1", 2, thing_ids=[1])
    metric = StreamingMeanIoU(2, {0: "road", 1: "car"}, thing_classes=["car"])
    metric.update_masks(empty, empty)
    assert metric.compute()["object_f1"] == 1.0 == reward(empty, empty).item()
    target = empty.clone()
    target[0, :2, :2] = 1  # one car, missed
    metric.update_masks(empty, target)
    pooled = object_counts(torch.cat([empty, empty]), torch.cat([empty, target]), [1]).sum(0)
    assert metric.compute()["object_f1"] == object_f1(pooled).item() == 0.0  # (2 * 0) / (1 + 0)
    assert reward(torch.cat([empty, empty]), torch.cat([empty, target])).tolist() == [1.0, 0.0]
