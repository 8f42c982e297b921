import pytest
import torch

from hf_reward.baselines import advantages, gradient_samples, update_ema

NAN = float("nan")


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


def test_nan_images_get_zero_advantage_and_are_left_out_of_means():
    r = torch.tensor([[0.2, NAN], [0.6, NAN]])
    for name in ("loo", "batch_mean", "none", "sample"):
        adv = advantages(r, name, greedy_rewards=torch.tensor([0.1, NAN]))
        assert adv.isfinite().all() and (adv[:, 1] == 0).all()
    torch.testing.assert_close(advantages(r, "batch_mean")[:, 0], torch.tensor([0.2 - 0.6, 0.6 - 0.2]))


def test_normalize_divides_by_std_of_gradient_samples():
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    adv = advantages(r, "loo", normalize=True)
    assert adv.std().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(adv / adv.std(), advantages(r, "loo") / advantages(r, "loo").std())


def test_update_ema():
    ema = update_ema(None, torch.tensor([[0.2, NAN]]), 0.9)
    assert ema.item() == pytest.approx(0.2)
    ema = update_ema(ema, torch.tensor([[0.4, 0.6]]), 0.9)
    assert ema.item() == pytest.approx(0.9 * 0.2 + 0.1 * 0.5)
    assert update_ema(ema, torch.tensor([[NAN]]), 0.9).item() == pytest.approx(ema.item())
