import pytest
import torch

from hf_reward.local import switch_table, switched_reward_deltas
from hf_reward.rewards import REWARDS, class_counts, confusion_matrix, get_reward

IGNORE = 255
NAMED = {
    **REWARDS,
    "miou_weighted": get_reward("miou", class_weights=[0.5, 2.0, 0.0, 1.0]),
    "f_beta_2": get_reward("f_beta", beta=2.0),
}


def brute_force_deltas(pred, target, extra, reward, num_classes):
    """Flip one pixel at a time and recompute the reward from the whole confusion matrix (float64)."""
    groups, pixels = pred.shape
    out = torch.zeros(groups, num_classes, pixels, dtype=torch.float64)

    def score(p):
        cm = confusion_matrix(p.view(groups, 1, pixels), target.view(groups, 1, pixels), num_classes, IGNORE)
        return reward(*class_counts(cm.double() + extra))

    base = score(pred)
    for i in range(pixels):
        for c in range(num_classes):
            flipped = pred.clone()
            flipped[:, i] = c
            out[:, c, i] = torch.where(target[:, i] != IGNORE, score(flipped) - base, 0.0)
    return out


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("with_running", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_switched_rewards_equal_flipping_one_pixel(name, with_running, seed):
    g = torch.Generator().manual_seed(seed)
    num_classes, groups, pixels = 4, 6, 7
    # Few pixels and classes: flips make classes appear and vanish; ~25% ignore, one empty group.
    pred = torch.randint(0, num_classes, (groups, pixels), generator=g)
    target = torch.randint(0, num_classes, (groups, pixels), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.25] = IGNORE
    target[2] = IGNORE
    extra = torch.zeros(groups, num_classes, num_classes, dtype=torch.float64)
    if with_running:
        extra = torch.rand(groups, num_classes, num_classes, generator=g, dtype=torch.float64) * 3
        extra[:, 3] = 0  # class 3 never in the running ground truth
    cm = confusion_matrix(pred.view(groups, 1, pixels), target.view(groups, 1, pixels), num_classes, IGNORE)
    got = switched_reward_deltas(pred, target, switch_table(NAMED[name], cm.double() + extra), IGNORE)
    expected = brute_force_deltas(pred, target, extra, NAMED[name], num_classes)
    assert got.dtype == torch.float32 and got.isfinite().all()
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-4)
    assert (got[2] == 0).all()  # no valid pixel, no delta


def test_keeps_precision_against_a_large_running_matrix():
    """A pixel's effect on a dataset-sized matrix is ~1e-7; float32 arithmetic on rewards would lose it."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (1, 50), generator=g)
    target = torch.randint(0, 5, (1, 50), generator=g)
    extra = (torch.rand(1, 5, 5, generator=g, dtype=torch.float64) + torch.eye(5, dtype=torch.float64) * 5) * 1e6
    cm = confusion_matrix(pred.view(1, 1, 50), target.view(1, 1, 50), 5, IGNORE).double() + extra
    got = switched_reward_deltas(pred, target, switch_table(REWARDS["miou"], cm), IGNORE)

    def miou64(m):
        tp = m.diagonal()
        return (tp / (m.sum(0) + m.sum(1) - tp)).mean()  # every class is present here

    expected = torch.zeros(1, 5, 50, dtype=torch.float64)
    for i in range(50):
        for c in range(5):
            flipped = cm.clone()[0]
            flipped[target[0, i], pred[0, i]] -= 1
            flipped[target[0, i], c] += 1
            expected[0, c, i] = miou64(flipped) - miou64(cm[0])
    assert expected.abs().max() < 1e-6
    torch.testing.assert_close(got.double(), expected, atol=1e-12, rtol=1e-4)


def test_table_is_chunked_without_changing_it(monkeypatch):
    g = torch.Generator().manual_seed(0)
    cm = torch.rand(3, 6, 6, generator=g, dtype=torch.float64) * 10
    whole = switch_table(REWARDS["cohen_kappa"], cm)
    monkeypatch.setattr("hf_reward.local._CHUNK_ELEMENTS", 100)  # several calls of a few rows each
    torch.testing.assert_close(switch_table(REWARDS["cohen_kappa"], cm), whole)
    assert whole.shape == (3, 3, 6, 6) and whole[:, 0].diagonal(dim1=-2, dim2=-1).abs().max() < 1e-12  # a == c
