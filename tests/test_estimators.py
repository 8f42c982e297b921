"""Unbiasedness of every estimator against the exact gradient of the objective, computed by enumeration."""

import itertools

import pytest
import torch

from hf_reward import LossSettings, RewardState, reward_loss
from hf_reward.loss import tail_weights
from hf_reward.mask_scores import get_mask_reward
from hf_reward.rewards import (
    REWARDS,
    class_counts,
    confusion_matrix,
    get_reward,
    miou,
    pixel_accuracy,
    reward_of_masks,
)

IGNORE = 255
C = 3
NAMED = {
    **REWARDS,
    "miou_weighted": get_reward("miou", class_weights=[0.5, 2.0, 0.0]),
    "f_beta_2": get_reward("f_beta", beta=2.0),
}
LABELS = torch.tensor([[[0, 1, 1], [2, IGNORE, 1]]])  # 2 x 3 pixels, one ignored: n_valid = 5


def settings(**kwargs) -> LossSettings:
    base = dict(
        reward=miou,
        estimator="score",
        reward_scope="image",
        num_samples=2,
        temperature=1.0,
        baseline="loo",
        sample_resolution="logits",
        ignore_index=IGNORE,
    )
    return LossSettings(**{**base, **kwargs})


def exact_objective(logits, labels, reward=miou, scope="image", running=None, mask_reward=None):
    """E_y[R(y)] by summing over every mask of every image jointly (C ** n_pixels masks)."""
    batch, c, h, w = logits.shape
    log_p = torch.log_softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C)
    masks = torch.tensor(list(itertools.product(range(c), repeat=log_p.shape[0])))  # (M, B*h*w)
    prob = log_p.gather(1, masks.T).sum(0).exp()  # (M,)
    pred = masks.view(-1, batch, h, w)
    if mask_reward is not None:
        r = mask_reward(pred.flatten(0, 1), labels.repeat(len(masks), 1, 1)).view(-1, batch).mean(1)
        return (prob * r).sum()
    cm = confusion_matrix(pred.flatten(0, 1), labels.repeat(len(masks), 1, 1), c, IGNORE).view(-1, batch, c, c)
    if scope == "image":
        r = reward(*class_counts(cm)).mean(1)  # the mean over images
    else:
        cm = cm.sum(1).double()
        r = reward(*class_counts(cm if running is None else cm + running))
    return (prob * r).sum()


def estimate_gradient(theta, labels, draws, loss_settings, **kwargs):
    """Mean over `draws` independent calls' gradients, and the standard error of that mean."""
    grads = []
    for seed in range(draws):
        theta.grad = None
        reward_loss(
            theta, labels, loss_settings, generator=torch.Generator().manual_seed(seed), **kwargs
        ).loss.backward()
        grads.append(theta.grad.clone())
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / draws**0.5


def check_unbiased(mean, se, target, slack, min_cosine):
    assert torch.all((mean - target).abs() <= 4.5 * se + slack), (mean - target).abs().max()
    cosine = torch.nn.functional.cosine_similarity(mean.flatten(), target.flatten(), dim=0)
    assert cosine > min_cosine


def image_scope_gradient(loss_settings, draws=40, copies=512):
    torch.manual_seed(0)
    theta = (1.5 * torch.randn(1, C, 2, 3)).requires_grad_()
    objective = exact_objective(theta, LABELS, loss_settings.reward, mask_reward=loss_settings.mask_reward)
    exact = torch.autograd.grad(objective, theta)[0]
    # Many copies of the image in one call: the loss averages over the batch, so each call is many draws.
    batch_theta = theta.detach().expand(copies, -1, -1, -1).clone().requires_grad_()
    mean, se = estimate_gradient(batch_theta, LABELS.expand(copies, -1, -1), draws, loss_settings)
    return mean.sum(0, keepdim=True), se.pow(2).sum(0, keepdim=True).sqrt(), -exact  # back to d / d theta


@pytest.mark.parametrize(
    "estimator,baseline,k",
    [
        ("score", "loo", 2),
        ("score", "loo", 8),
        ("score", "sample", 2),
        ("score", "none", 4),
        ("score", "greedy", 2),
        ("score", "batch_mean", 2),
        ("score", "ema", 2),
        ("local", "none", 1),
        ("local", "none", 4),
    ],
)
def test_unbiased_image_scope(estimator, baseline, k):
    mean, se, target = image_scope_gradient(settings(estimator=estimator, baseline=baseline, num_samples=k))
    check_unbiased(mean, se, target, 1e-4 * 5, 0.97)
    assert mean[0, :, 1, 1].abs().max() == 0  # the ignored pixel gets no gradient


def first_pixel_and_class_one(pred, target):
    """A reward of whole masks no count matrix holds: the top-left pixel right, plus the share of class 1 among
    the non-void pixels (void pixels get no gradient, so a reward must not read the prediction there)."""
    return (pred[:, 0, 0] == target[:, 0, 0]).double() + ((pred == 1) & (target != IGNORE)).double().mean((-2, -1))


MASK_REWARD_FNS = {
    "boundary_f": get_mask_reward("boundary_f", C, tolerance="1px", ignore_index=IGNORE),
    "boundary_f_0px": get_mask_reward("boundary_f", C, tolerance="0px", ignore_index=IGNORE),
    "object_f1": get_mask_reward("object_f1", C, thing_ids=[1, 2], ignore_index=IGNORE),
    "custom": first_pixel_and_class_one,
}


@pytest.mark.parametrize("baseline,k", [("loo", 4), ("greedy", 2), ("none", 2)])
@pytest.mark.parametrize("name", sorted(MASK_REWARD_FNS))
def test_score_unbiased_for_rewards_of_whole_masks(name, baseline, k):
    loss_settings = settings(reward=None, mask_reward=MASK_REWARD_FNS[name], baseline=baseline, num_samples=k)
    mean, se, target = image_scope_gradient(loss_settings, draws=20, copies=512)
    check_unbiased(mean, se, target, 1e-4 * 5, 0.95)
    assert mean[0, :, 1, 1].abs().max() == 0  # the ignored pixel gets no gradient


@pytest.mark.parametrize("name", ["boundary_f", "boundary_f_0px"])
def test_local_unbiased_for_boundary_f(name):
    loss_settings = settings(reward=None, mask_reward=MASK_REWARD_FNS[name], estimator="local", num_samples=2)
    mean, se, target = image_scope_gradient(loss_settings, draws=10, copies=128)
    check_unbiased(mean, se, target, 1e-5, 0.97)
    assert mean[0, :, 1, 1].abs().max() == 0  # the ignored pixel gets no gradient


def test_local_boundary_f_has_lower_variance_than_score():
    """The spread of one call's gradient (one image, fresh samples): local K=1 against REINFORCE K=4 with loo."""
    torch.manual_seed(0)
    theta = (1.5 * torch.randn(1, C, 2, 3)).requires_grad_()
    reward = MASK_REWARD_FNS["boundary_f"]

    def spread(**kwargs):
        _, se = estimate_gradient(theta, LABELS, 200, settings(reward=None, mask_reward=reward, **kwargs))
        return float(se.pow(2).sum())

    assert spread(estimator="local", num_samples=1) * 4 < spread(estimator="score", num_samples=4, baseline="loo")


def test_rewards_of_whole_masks_need_the_score_estimator_per_image():
    reward = MASK_REWARD_FNS["custom"]
    with pytest.raises(ValueError, match="needs estimator='score' and reward_scope='image'"):
        settings(reward=None, mask_reward=reward, estimator="local")
    with pytest.raises(ValueError, match="needs estimator='score' and reward_scope='image'"):
        settings(reward=None, mask_reward=MASK_REWARD_FNS["boundary_f"], estimator="local", reward_scope="batch")
    with pytest.raises(ValueError, match="either reward"):
        settings(mask_reward=reward)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_local_unbiased_for_every_reward_per_image(name):
    mean, se, target = image_scope_gradient(
        settings(reward=NAMED[name], estimator="local", num_samples=2), draws=10, copies=128
    )
    check_unbiased(mean, se, target, 1e-5, 0.97)


@pytest.mark.parametrize("scope", ["batch", "dataset"])
@pytest.mark.parametrize("name", sorted(NAMED))
def test_local_unbiased_for_wider_scopes(scope, name):
    torch.manual_seed(1)
    labels = torch.tensor([[[0, 1, 1]], [[2, IGNORE, 0]]])  # two 1 x 3 images, n_valid = 5
    theta = torch.randn(2, C, 1, 3).requires_grad_()
    running = torch.tensor([[4.0, 1.0, 0.5], [0.5, 3.0, 0.0], [1.0, 0.0, 2.5]]) if scope == "dataset" else None
    reward = NAMED[name]
    objective = exact_objective(theta, labels, reward, scope, running.double() if running is not None else None)
    exact = torch.autograd.grad(objective, theta)[0]
    mean, se = estimate_gradient(
        theta,
        labels,
        20,
        settings(reward=reward, estimator="local", reward_scope=scope, num_samples=256, baseline="none"),
        state=RewardState(running=running),
    )
    scale = (running.sum() + 5) / 5 if scope == "dataset" else 1.0  # n_scope / n_batch
    check_unbiased(mean, se, -exact * scale, 1e-5, 0.98)


def test_local_has_far_lower_variance_than_score():
    """Same batch, same parameters, fresh samples: the spread of the gradient estimates."""
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[:, :4] = IGNORE
    theta = torch.randn(2, 5, 16, 16).requires_grad_()

    def variance(**kwargs):
        mean, se = estimate_gradient(theta, labels, 30, settings(num_samples=4, **kwargs))
        return (se**2 * 30).sum() / mean.pow(2).sum()  # trace(cov) / |mean|^2: inverse squared SNR

    score = variance(baseline="loo", estimator="score")
    local = variance(baseline="none", estimator="local")
    assert local * 50 < score, (local, score)


def test_gradient_scale_does_not_depend_on_resolution_or_batch_size():
    """The loss is the metric's own scale: 4x the pixels or 4x the images leave the gradient's size alone."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)

    def gradient_norm(logits, labels, **kwargs):
        weights = torch.ones(1, 4, 1, 1, requires_grad=True)  # one gradient for every logit map, whatever its size
        loss = sum(
            reward_loss(
                logits * weights,
                labels,
                settings(estimator="local", num_samples=4, temperature=0.5, baseline="none", **kwargs),
                generator=torch.Generator().manual_seed(s),
            ).loss
            for s in range(8)
        )
        return torch.autograd.grad(loss, weights)[0].norm()

    def upsampled(x):
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    for kwargs in (
        dict(reward_scope="image"),
        dict(reward_scope="batch"),
        dict(reward_scope="dataset"),
        dict(reward_scope="image", reward=pixel_accuracy),
    ):
        reference = gradient_norm(base, labels, **kwargs)
        finer = gradient_norm(upsampled(base), upsampled(labels), **kwargs)
        bigger = gradient_norm(base.repeat(4, 1, 1, 1), labels.repeat(4, 1, 1), **kwargs)
        assert 0.7 < finer / reference < 1.4, (kwargs, finer / reference)
        assert 0.7 < bigger / reference < 1.4, (kwargs, bigger / reference)


def test_all_ignore_image_gives_finite_loss_and_zero_gradient():
    logits = torch.randn(2, C, 4, 4, requires_grad=True)
    labels = torch.randint(0, C, (2, 4, 4))
    labels[1] = IGNORE
    for estimator, scope in [("score", "image"), ("local", "image"), ("local", "batch"), ("local", "dataset")]:
        logits.grad = None
        out = reward_loss(
            logits,
            labels,
            settings(estimator=estimator, reward_scope=scope),
            state=RewardState(running=torch.zeros(C, C, dtype=torch.float64) if scope == "dataset" else None),
        )
        out.loss.backward()
        assert out.loss.isfinite() and logits.grad.isfinite().all()
        assert logits.grad[1].abs().max() == 0
        assert out.valid_images.tolist() == [True, False]
        assert out.advantages is None or (out.advantages[:, 1] == 0).all()


@pytest.mark.parametrize("resolution", ["logits", "labels"])
def test_shapes_rewards_in_range_and_greedy(resolution):
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (3, 32, 32))
    out = reward_loss(logits, labels, settings(num_samples=5, sample_resolution=resolution))
    assert out.rewards.shape == (5, 3) and out.advantages.shape == (5, 3) and out.greedy_rewards.shape == (3,)
    assert ((out.rewards >= 0) & (out.rewards <= 1)).all()
    small = labels[:, 2::4, 2::4]  # the centre of each 4 x 4 cell, where bilinear upsampling puts the logit
    big = torch.nn.functional.interpolate(logits.detach(), size=(32, 32), mode="bilinear", align_corners=False)
    expected = (
        reward_of_masks(miou, logits.argmax(1), small, 4)
        if resolution == "logits"
        else reward_of_masks(miou, big.argmax(1), labels, 4)
    )
    torch.testing.assert_close(out.greedy_rewards, expected.float())


def test_loss_value_is_minus_the_objective():
    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (3, 8, 8))
    image = reward_loss(logits, labels, settings(num_samples=4))
    assert image.loss.item() == pytest.approx(-image.rewards.mean().item(), rel=1e-5)
    pooled = reward_loss(logits, labels, settings(estimator="local", reward_scope="batch", num_samples=3))
    assert pooled.loss.item() == pytest.approx(-pooled.scope_rewards.mean().item(), rel=1e-5)


def test_temperature_sharpens_samples_toward_argmax():
    logits = torch.randn(4, 5, 16, 16)
    labels = logits.argmax(1)
    cold = reward_loss(logits, labels, settings(reward=pixel_accuracy, num_samples=4, temperature=0.05))
    warm = reward_loss(logits, labels, settings(reward=pixel_accuracy, num_samples=4, temperature=1.0))
    assert cold.rewards.mean() > 0.9 > 0.7 > warm.rewards.mean()
    assert cold.entropy.mean() < warm.entropy.mean()


def test_custom_reward_works_with_both_estimators():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))

    def constant(tp, gt, pd):
        return torch.ones(tp.shape[:-1], dtype=tp.dtype)

    out = reward_loss(logits, labels, settings(reward=constant))
    assert (out.rewards == 1).all() and (out.advantages == 0).all()
    out = reward_loss(logits, labels, settings(reward=constant, estimator="local", reward_scope="batch"))
    out.loss.backward()
    assert logits.grad.abs().max() == 0  # a constant reward has no gradient


@pytest.mark.parametrize(
    "knobs,message",
    [
        (dict(reward_scope="batch"), "needs estimator='local'"),
        (dict(estimator="pathwise"), "estimator must be one of"),
        (dict(num_samples=1), "needs num_samples >= 2"),
        (dict(baseline="sample", num_samples=3), "must be even"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(sample_resolution="full"), "sample_resolution"),
        (dict(reward="miou"), "function of"),
        (dict(tail_fraction=0.0), "tail_fraction"),
        (dict(tail_fraction=0.5, estimator="local", reward_scope="batch"), "needs reward_scope='image'"),
        (dict(switch_around="argmax"), "switch_around must be"),
        (dict(switch_around="decoded"), "needs estimator='local' and reward_scope='image'"),
    ],
)
def test_settings_reject_impossible_values(knobs, message):
    with pytest.raises(ValueError, match=message):
        settings(**knobs)


@pytest.mark.parametrize("scope", ["batch", "dataset"])
def test_scope_rewards_are_the_scope_matrix_metric(scope):
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 6, 6), generator=g)
    labels = torch.randint(0, 4, (3, 6, 6), generator=g)
    logits = 60.0 * torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()  # samples == pred
    running = torch.rand(4, 4, generator=g) * 50 if scope == "dataset" else None
    out = reward_loss(
        logits, labels, settings(estimator="local", reward_scope=scope), state=RewardState(running=running)
    )
    batch_cm = confusion_matrix(pred, labels, 4).sum(0).double()
    expected = miou(*class_counts(batch_cm + (running.double() if running is not None else 0)))
    torch.testing.assert_close(out.scope_rewards, expected.expand(2).float())
    torch.testing.assert_close(out.sample_confusion, batch_cm)
    assert reward_loss(logits, labels, settings(estimator="local")).scope_rewards is None


def test_counts_are_summed_over_processes_before_they_join_the_scope():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    calls = []

    def twice(counts):  # a stand-in for an all-reduce over two processes holding the same batch
        calls.append(counts.shape)
        return 2 * counts

    out = reward_loss(
        logits,
        labels,
        settings(estimator="local", reward_scope="batch", num_samples=2),
        reduce_counts=twice,
        generator=torch.Generator().manual_seed(0),
    )
    single = reward_loss(
        logits,
        labels,
        settings(estimator="local", reward_scope="batch", num_samples=2),
        generator=torch.Generator().manual_seed(0),
    )
    assert calls == [(2, 3, 3)]
    torch.testing.assert_close(out.sample_confusion, 2 * single.sample_confusion)


TWO_IMAGES = torch.tensor([[[0, 1, 1]], [[2, IGNORE, 0]]])  # two 1 x 3 images


@pytest.mark.parametrize("estimator,baseline,k", [("local", "none", 2), ("score", "loo", 4)])
def test_tail_objective_is_the_mean_over_the_decoded_worst_images(estimator, baseline, k):
    """q = 0.5 of two images: the gradient is that of E[R] of the image whose decoded reward is lower, and 0 for
    the other (the threshold, from many copies of both, is their midpoint)."""
    torch.manual_seed(3)
    theta = torch.randn(2, C, 1, 3)
    greedy = reward_of_masks(miou, theta.argmax(1), TWO_IMAGES, C, IGNORE)
    assert greedy[0] != greedy[1]
    worst = int(greedy.argmin())
    exact = torch.zeros_like(theta)
    one = theta[worst : worst + 1].clone().requires_grad_()
    exact[worst] = torch.autograd.grad(exact_objective(one, TWO_IMAGES[worst : worst + 1]), one)[0][0]
    copies = 128
    batch_theta = theta.repeat(copies, 1, 1, 1).requires_grad_()
    loss_settings = settings(estimator=estimator, baseline=baseline, num_samples=k, tail_fraction=0.5)
    mean, se = estimate_gradient(batch_theta, TWO_IMAGES.repeat(copies, 1, 1), 10, loss_settings)
    mean = mean.view(copies, 2, C, 1, 3).sum(0)
    se = se.view(copies, 2, C, 1, 3).pow(2).sum(0).sqrt()
    # the loss averages over 2 * copies images with weight 1/q = 2 on the tail's: d/dtheta of E[R_worst] / 2 * 2
    check_unbiased(mean, se, -exact, 1e-4, 0.95)
    assert mean[1 - worst].abs().max() == 0


def test_tail_threshold_comes_from_the_recent_window_and_is_kept():
    weights, threshold = tail_weights(
        torch.tensor([0.2, 0.9, 0.5]), torch.tensor([True, True, False]), torch.tensor([0.1, 0.3, 0.6, 0.8]), 0.5
    )
    assert float(threshold) == pytest.approx(0.45)  # the median of 0.1, 0.3, 0.6, 0.8, 0.2, 0.9
    assert weights.tolist() == [2.0, 0.0, 0.0]  # the invalid image never counts
    state, loss_settings = RewardState(), settings(estimator="local", num_samples=1, tail_fraction=0.1, tail_window=5)
    for seed in range(3):
        logits = torch.randn(2, C, 2, 3, generator=torch.Generator().manual_seed(seed))
        out = reward_loss(logits, LABELS.expand(2, -1, -1), loss_settings, state=state)
        state.update(out, loss_settings, step_ends=True)
    assert len(state.tail) == 5 and torch.equal(state.tail[-2:], out.greedy_rewards)
    assert set(state.state_dict()) == {"tail"}
    restored = RewardState()
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.tail, state.tail)


def test_rewards_around_the_decoded_mask_are_exact_for_a_sum_over_pixels_and_need_no_sample():
    """Pixel accuracy is a sum over pixels: the decoded surrogate's gradient is the exact one, whatever is sampled."""
    torch.manual_seed(4)
    theta = (1.5 * torch.randn(1, C, 2, 3)).requires_grad_()
    exact = torch.autograd.grad(exact_objective(theta, LABELS, pixel_accuracy), theta)[0]
    loss_settings = settings(reward=pixel_accuracy, estimator="local", num_samples=1, switch_around="decoded")
    grads = []
    for seed in range(2):
        theta.grad = None
        reward_loss(theta, LABELS, loss_settings, generator=torch.Generator().manual_seed(seed)).loss.backward()
        grads.append(theta.grad.clone())
    assert torch.allclose(grads[0], -exact, atol=1e-6) and torch.equal(grads[0], grads[1])
    boundary = settings(reward=None, mask_reward=MASK_REWARD_FNS["boundary_f"], estimator="local", num_samples=1)
    decoded = LossSettings(**{**boundary.__dict__, "switch_around": "decoded"})
    for s in (boundary, decoded):
        theta.grad = None
        reward_loss(theta, LABELS, s).loss.backward()
        assert theta.grad.isfinite().all() and theta.grad[0, :, 1, 1].abs().max() == 0
