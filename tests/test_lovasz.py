import numpy as np
import pytest
import torch

from hf_reward.lovasz import lovasz_softmax


def reference_lovasz(probs: np.ndarray, labels: np.ndarray, ignore_index: int) -> float:
    """The paper's definition, one class and one sorted prefix at a time, with Python sets."""
    probs, labels = probs.transpose(1, 0, 2, 3).reshape(probs.shape[1], -1), labels.reshape(-1)
    keep = labels != ignore_index
    probs, labels = probs[:, keep], labels[keep]
    losses = []
    for c in range(probs.shape[0]):
        ground_truth = set(np.flatnonzero(labels == c))
        if not ground_truth:
            continue
        errors = np.abs((labels == c).astype(float) - probs[c])
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        loss, previous, worst = 0.0, 0.0, set()
        for i in order:
            worst.add(i)
            jaccard = len(worst) / len(ground_truth | worst)
            loss += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(loss)
    return float(np.mean(losses))


def test_equals_one_minus_miou_on_hard_masks():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[0, 0] = 255
    pred = torch.randint(0, 4, (2, 6, 7))
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 1e4
    ious = []
    valid = labels != 255
    for c in range(4):
        gt, pr = (labels == c) & valid, (pred == c) & valid
        if gt.any():
            ious.append((gt & pr).sum().item() / (gt | pr).sum().item())
    assert lovasz_softmax(logits, labels).item() == pytest.approx(1 - np.mean(ious), abs=1e-6)


def test_matches_the_definition_with_ignore_pixels_and_absent_classes():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 6))  # classes 3 and 4 never appear in the ground truth
    labels[1, :2] = 255
    expected = reference_lovasz(logits.softmax(1).numpy(), labels.numpy(), 255)
    assert lovasz_softmax(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (1, 3, 4))
    lovasz_softmax(logits, labels).backward()
    eps = 1e-6
    for index in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 1, 1)]:
        bumped = logits.detach().clone()
        bumped[index] += eps
        up = reference_lovasz(bumped.softmax(1).numpy(), labels.numpy(), 255)
        bumped[index] -= 2 * eps
        down = reference_lovasz(bumped.softmax(1).numpy(), labels.numpy(), 255)
        assert logits.grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)


def test_upsamples_low_resolution_logits_and_handles_all_ignored():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 16, 16))
    loss = lovasz_softmax(logits, labels)
    assert 0 < loss.item() < 1
    empty = lovasz_softmax(logits, torch.full((2, 16, 16), 255))
    empty.backward()
    assert empty.item() == 0 and torch.all(logits.grad == 0)
    with pytest.raises(ValueError, match="expected logits"):
        lovasz_softmax(logits[0], labels)
