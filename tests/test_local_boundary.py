"""The switched boundary F of the local estimator against recomputing the score with each pixel flipped."""

import pytest
import torch

from hf_reward.local_boundary import disk, shifted, switched_boundary_f
from hf_reward.mask_scores import boundary_f, get_mask_reward

IGNORE = 255


def flipped_one_by_one(pred, target, num_classes, radius):
    """R(pred with pixel i set to c) - R(pred) by recomputing the score for every (i, c): (N, C, H, W) float64."""
    n, h, w = pred.shape
    tolerance = f"{radius}px"
    base = boundary_f(pred, target, num_classes, tolerance)
    out = torch.zeros(n, num_classes, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for c in range(num_classes):
                switched = pred.clone()
                switched[:, i, j] = c
                out[:, c, i, j] = boundary_f(switched, target, num_classes, tolerance) - base
    return out


@pytest.mark.parametrize("radius", [0, 1, 1.5, 2, 2.5, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_switched_boundary_f_equals_flipping_each_pixel(seed, radius):
    g = torch.Generator().manual_seed(seed)
    num_classes = 3 + seed % 2
    target = torch.randint(0, num_classes, (2, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.15] = IGNORE
    pred = torch.randint(0, num_classes, (2, 7, 9), generator=g)
    pred[0, :3] = target[0, :3].clamp(max=num_classes - 1)  # some agreement, so that boundaries match
    fast = switched_boundary_f(pred, target, num_classes, radius, IGNORE)
    slow = flipped_one_by_one(pred, target, num_classes, radius)
    assert fast.dtype == torch.float32 and fast.shape == (2, num_classes, 7, 9)
    assert torch.allclose(fast.double(), slow, atol=1e-6, rtol=0)
    assert fast.gather(1, pred.clamp(max=num_classes - 1).unsqueeze(1)).abs().max() == 0
    assert fast.permute(0, 2, 3, 1)[target == IGNORE].abs().max() == 0  # void pixels are not read


def test_blocks_and_an_all_void_image():
    """Large uniform regions (most switches change nothing far from an edge) and an image with no valid pixel."""
    target = torch.zeros(2, 10, 12, dtype=torch.long)
    target[:, :, 6:] = 1
    target[1] = IGNORE
    pred = target.clone()
    pred[0, :, 5:] = 1  # the edge one pixel to the left
    pred[1] = 0
    fast = switched_boundary_f(pred, target, 2, 1.0, IGNORE)
    assert torch.allclose(fast.double(), flipped_one_by_one(pred, target, 2, 1.0), atol=1e-6, rtol=0)
    assert fast[1].abs().max() == 0


def test_the_reward_object_scores_and_switches_at_its_tolerance():
    reward = get_mask_reward("boundary_f", 3, tolerance="1.5px", ignore_index=IGNORE)
    g = torch.Generator().manual_seed(5)
    target, pred = torch.randint(0, 3, (1, 6, 6), generator=g), torch.randint(0, 3, (1, 6, 6), generator=g)
    assert torch.equal(reward(pred, target), boundary_f(pred, target, 3, "1.5px", IGNORE))
    assert torch.allclose(reward.switched(pred, target).double(), flipped_one_by_one(pred, target, 3, 1.5), atol=1e-6)


def test_helpers():
    x = torch.arange(12).view(1, 3, 4)
    assert shifted(x, 1, 0, -1)[0].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [-1, -1, -1, -1]]
    assert shifted(x, 0, -1, -1)[0, 0].tolist() == [-1, 0, 1, 2]
    assert (shifted(x, 5, 0, -1) == -1).all()
    assert len(disk(0)) == 1 and len(disk(1)) == 5 and len(disk(1.5)) == 9 and len(disk(2)) == 13
