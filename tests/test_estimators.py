"""Unbiasedness of every estimator against the exact gradient of E[R], computed by enumeration."""

import itertools

import pytest
import torch

from hf_reward import miou, reinforce_loss
from hf_reward.rewards import FROM_CONFUSION, confusion_matrix

IGNORE = 255
C = 3
LABELS = torch.tensor([[[0, 1, 1], [2, IGNORE, 1]]])  # 2 x 3 pixels, one ignored: n_valid = 5


def exact_objective(logits, labels, reward="miou", scope="image", running=None):
    """E_y[R(y)] by summing over every mask of every image jointly (C ** n_pixels masks)."""
    batch, c, h, w = logits.shape
    log_p = torch.log_softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C)
    masks = torch.tensor(list(itertools.product(range(c), repeat=log_p.shape[0])))  # (M, B*h*w)
    prob = log_p.gather(1, masks.T).sum(0).exp()  # (M,)
    pred = masks.view(-1, batch, h, w)
    cm = confusion_matrix(pred.flatten(0, 1), labels.repeat(len(masks), 1, 1), c, IGNORE).view(-1, batch, c, c)
    if scope == "image":
        r = FROM_CONFUSION[reward](cm).nan_to_num().sum(1)  # sum over images, like the batch-summed loss
    else:
        cm = cm.sum(1).double()
        r = FROM_CONFUSION[reward](cm if running is None else cm + running)
    return (prob * r).sum()


def estimate_gradient(theta, labels, draws, **kwargs):
    """Mean over `draws` independent calls' gradients, and the standard error of that mean."""
    grads = []
    for seed in range(draws):
        theta.grad = None
        reinforce_loss(theta, labels, generator=torch.Generator().manual_seed(seed), **kwargs).loss.backward()
        grads.append(theta.grad.clone())
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / draws**0.5


@pytest.mark.parametrize(
    "estimator,baseline,k",
    [("score", "loo", 2), ("score", "loo", 8), ("score", "sample", 2), ("score", "none", 4),
     ("score", "greedy", 2), ("score", "batch_mean", 2), ("local", "none", 1), ("local", "none", 4)],
)
def test_unbiased_image_scope(estimator, baseline, k):
    torch.manual_seed(0)
    theta = (1.5 * torch.randn(1, C, 2, 3)).requires_grad_()
    exact = torch.autograd.grad(exact_objective(theta, LABELS), theta)[0]
    # Many images in one call: the loss averages over the batch, so each call is many draws.
    copies = 512
    batch_theta = theta.detach().expand(copies, -1, -1, -1).clone().requires_grad_()
    mean, se = estimate_gradient(
        batch_theta, LABELS.expand(copies, -1, -1), 40,
        reward_fn="miou", num_samples=k, baseline=baseline, estimator=estimator,
    )
    mean = mean.sum(0, keepdim=True)  # back to d/d theta, times `copies` / copies
    se = se.pow(2).sum(0, keepdim=True).sqrt()
    target = -exact / 5  # -grad E[R] / n_valid
    assert torch.all((mean - target).abs() <= 4.5 * se + 1e-4), (mean - target).abs().max()
    assert mean[0, :, 1, 1].abs().max() == 0  # the ignored pixel gets no gradient
    cosine = torch.nn.functional.cosine_similarity(mean.flatten(), target.flatten(), dim=0)
    assert cosine > 0.97


@pytest.mark.parametrize("scope", ["batch", "dataset"])
@pytest.mark.parametrize("reward", ["miou", "dice", "pixel_accuracy"])
def test_local_unbiased_for_wider_scopes(scope, reward):
    torch.manual_seed(1)
    labels = torch.tensor([[[0, 1, 1]], [[2, IGNORE, 0]]])  # two 1 x 3 images, n_valid = 5
    theta = torch.randn(2, C, 1, 3).requires_grad_()
    running = torch.tensor([[4.0, 1.0, 0.5], [0.5, 3.0, 0.0], [1.0, 0.0, 2.5]]) if scope == "dataset" else None
    exact = torch.autograd.grad(exact_objective(theta, labels, reward, scope, running.double() if running is not None else None), theta)[0]
    mean, se = estimate_gradient(
        theta, labels, 20, reward_fn=reward, num_samples=256, baseline="none", estimator="local",
        reward_scope=scope, running_confusion=running,
    )
    scale = (running.sum() + 5) / 5 if scope == "dataset" else 1.0
    target = -exact * scale / 5
    assert torch.all((mean - target).abs() <= 4.5 * se + 1e-5), (mean - target).abs().max()
    cosine = torch.nn.functional.cosine_similarity(mean.flatten(), target.flatten(), dim=0)
    assert cosine > 0.98


def test_local_has_far_lower_variance_than_score():
    """Same batch, same parameters, fresh samples: the spread of the gradient estimates."""
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[:, :4] = IGNORE
    theta = torch.randn(2, 5, 16, 16).requires_grad_()

    def variance(**kwargs):
        mean, se = estimate_gradient(theta, labels, 30, reward_fn="miou", num_samples=4, **kwargs)
        return (se**2 * 30).sum() / mean.pow(2).sum()  # trace(cov) / |mean|^2: inverse squared SNR

    score = variance(baseline="loo", estimator="score")
    local = variance(baseline="none", estimator="local")
    assert local * 50 < score, (local, score)


def test_all_ignore_image_gives_finite_loss_and_zero_gradient():
    logits = torch.randn(2, C, 4, 4, requires_grad=True)
    labels = torch.randint(0, C, (2, 4, 4))
    labels[1] = IGNORE
    for estimator, scope in [("score", "image"), ("local", "image"), ("local", "batch"), ("local", "dataset")]:
        logits.grad = None
        out = reinforce_loss(logits, labels, reward_fn="miou", num_samples=2, baseline="loo", estimator=estimator,
                             reward_scope=scope, running_confusion=torch.zeros(C, C))
        out.loss.backward()
        assert out.loss.isfinite() and logits.grad.isfinite().all()
        assert logits.grad[1].abs().max() == 0
        assert (out.advantages[:, 1] == 0).all() and out.rewards[:, 1].isnan().all()


@pytest.mark.parametrize("resolution", ["logits", "labels"])
def test_shapes_rewards_in_range_and_greedy(resolution):
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (3, 32, 32))
    out = reinforce_loss(logits, labels, reward_fn="miou", num_samples=5, sample_resolution=resolution)
    assert out.rewards.shape == (5, 3) and out.advantages.shape == (5, 3) and out.greedy_rewards.shape == (3,)
    assert ((out.rewards >= 0) & (out.rewards <= 1)).all()
    small = labels[:, 2::4, 2::4]  # the centre of each 4 x 4 cell, where bilinear upsampling puts the logit
    big = torch.nn.functional.interpolate(logits.detach(), size=(32, 32), mode="bilinear", align_corners=False)
    expected = miou(logits.argmax(1), small, 4) if resolution == "logits" else miou(big.argmax(1), labels, 4)
    torch.testing.assert_close(out.greedy_rewards, expected)


def test_temperature_sharpens_samples_toward_argmax():
    logits = torch.randn(4, 5, 16, 16)
    labels = logits.argmax(1)
    cold = reinforce_loss(logits, labels, reward_fn="pixel_accuracy", num_samples=4, temperature=0.05)
    warm = reinforce_loss(logits, labels, reward_fn="pixel_accuracy", num_samples=4, temperature=1.0)
    assert cold.rewards.mean() > 0.9 > 0.7 > warm.rewards.mean()
    assert cold.entropy.mean() < warm.entropy.mean()


def test_custom_reward_fn_and_local_rejects_it():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    ones = lambda pred, target: torch.ones(pred.shape[0])  # noqa: E731
    out = reinforce_loss(logits, labels, reward_fn=ones, num_samples=2, baseline="loo")
    assert (out.rewards == 1).all() and (out.advantages == 0).all()
    with pytest.raises(ValueError, match="closed-form"):
        reinforce_loss(logits, labels, reward_fn=ones, num_samples=2, estimator="local")
    with pytest.raises(ValueError, match="needs estimator='local'"):
        reinforce_loss(logits, labels, reward_fn="miou", num_samples=2, reward_scope="batch")


@pytest.mark.parametrize("scope", ["batch", "dataset"])
def test_scope_rewards_are_the_scope_matrix_metric(scope):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 6, 6), generator=g)
    labels = torch.randint(0, 4, (3, 6, 6), generator=g)
    logits = 60.0 * torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()  # samples == pred
    running = torch.rand(4, 4, generator=g) * 50 if scope == "dataset" else None
    out = reinforce_loss(logits, labels, reward_fn="miou", num_samples=2, estimator="local", reward_scope=scope,
                         running_confusion=running)
    batch_cm = confusion_matrix(pred, labels, 4).sum(0).double()
    expected = FROM_CONFUSION["miou"](batch_cm + (running.double() if running is not None else 0))
    torch.testing.assert_close(out.scope_rewards, expected.expand(2).float())
    torch.testing.assert_close(out.sample_confusion, batch_cm.float())
    assert reinforce_loss(logits, labels, reward_fn="miou", num_samples=2, estimator="local").scope_rewards is None
