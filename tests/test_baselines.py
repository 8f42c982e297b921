import pytest
import torch

from hf_reward.baselines import advantages, check_baseline, gradient_samples, update_ema


def test_loo():
    r = torch.tensor([[0.2, 0.5], [0.6, 0.5], [0.1, 0.8]])
    expected = torch.tensor([[0.2 - 0.35, 0.5 - 0.65], [0.6 - 0.15, 0.5 - 0.65], [0.1 - 0.4, 0.8 - 0.5]])
    torch.testing.assert_close(advantages(r, "loo"), expected)


def test_sample_pairs_first_half_with_second_half():
    r = torch.tensor([[0.2, 0.5], [0.3, 0.1], [0.6, 0.4], [0.9, 0.0]])
    adv = advantages(r, "sample")
    torch.testing.assert_close(adv, torch.tensor([[0.2 - 0.6, 0.5 - 0.4], [0.3 - 0.9, 0.1 - 0.0], [0, 0], [0, 0]]))
    assert gradient_samples("sample", 4).tolist() == [True, True, False, False]
    assert gradient_samples("loo", 3).tolist() == [True, True, True]


def test_greedy_batch_mean_ema_none():
    r = torch.tensor([[0.2, 0.5], [0.6, 0.3]])
    greedy = torch.tensor([0.4, 0.1])
    torch.testing.assert_close(advantages(r, "greedy", greedy_rewards=greedy), r - greedy)
    # batch_mean leaves each sample's own reward out: for 0.2 the others are 0.5, 0.6, 0.3.
    expected = torch.tensor([[0.2 - 1.4 / 3, 0.5 - 1.1 / 3], [0.6 - 1.0 / 3, 0.3 - 1.3 / 3]])
    torch.testing.assert_close(advantages(r, "batch_mean"), expected)
    torch.testing.assert_close(advantages(r, "ema", ema_value=torch.tensor(0.25)), r - 0.25)
    torch.testing.assert_close(advantages(r, "none"), r)
    with pytest.raises(ValueError, match="greedy_rewards"):
        advantages(r, "greedy")
    with pytest.raises(ValueError, match="baseline must be one of"):
        advantages(r, "mean")


def test_void_images_get_zero_advantage_and_are_left_out_of_means():
    r = torch.tensor([[0.2, 0.0], [0.6, 0.0]])
    valid = torch.tensor([True, False])
    for name in ("loo", "batch_mean", "none", "sample", "greedy"):
        adv = advantages(r, name, valid=valid, greedy_rewards=torch.tensor([0.1, 0.0]))
        assert (adv[:, 1] == 0).all()
    torch.testing.assert_close(advantages(r, "batch_mean", valid=valid)[:, 0], torch.tensor([0.2 - 0.6, 0.6 - 0.2]))
    # ema with no value yet (NaN) falls back to the batch mean
    torch.testing.assert_close(
        advantages(r, "ema", valid=valid, ema_value=torch.tensor(float("nan"))),
        advantages(r, "batch_mean", valid=valid),
    )


def test_check_baseline():
    check_baseline("loo", 2)
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        check_baseline("loo", 1)
    with pytest.raises(ValueError, match="must be even"):
        check_baseline("sample", 3)
    with pytest.raises(ValueError, match="baseline must be one of"):
        check_baseline("mean", 2)


def test_update_ema():
    valid = torch.tensor([True, False])
    ema = update_ema(None, torch.tensor([[0.2, 0.9]]), valid, 0.9)
    assert ema.item() == pytest.approx(0.2)  # the void image's reward is left out
    ema = update_ema(ema, torch.tensor([[0.4, 0.6]]), torch.tensor([True, True]), 0.9)
    assert ema.item() == pytest.approx(0.9 * 0.2 + 0.1 * 0.5)
    assert update_ema(ema, torch.tensor([[0.7]]), torch.tensor([False]), 0.9).item() == pytest.approx(ema.item())
    assert update_ema(None, torch.tensor([[0.7]]), torch.tensor([False]), 0.9).isnan()
