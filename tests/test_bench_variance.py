import pytest
import torch
from conftest import load_script

bench_variance = load_script("bench_variance")


def test_gradient_stats_recover_the_snr_of_known_gaussian_draws():
    """Draws g = mu + noise with ||mu|| = 2 and trace Cov = 4 * 100 * 0.01 = 4: SNR 1."""
    torch.manual_seed(0)
    mu = torch.zeros(100)
    mu[:4] = 1.0
    noise_scale = 0.2
    for reference in (mu, None):
        stats = bench_variance.GradientStats(reference)
        for _ in range(4000):
            stats.add(mu + noise_scale * torch.randn(100), seconds=0.0)
        assert stats.trace_cov().item() == pytest.approx(4.0, rel=0.05)
        row = stats.row("x").split("|")
        assert float(row[2]) == pytest.approx(1.0, rel=0.05)  # SNR, from the reference or the debiased mean
        assert float(row[4]) == pytest.approx(0.81 / 0.19, rel=0.15)  # draws for cosine 0.9
        if reference is not None:  # one estimate: signal 2 against noise of norm ~2 in 100 dimensions
            assert float(row[3]) == pytest.approx(2 / (4 + 4) ** 0.5, abs=0.03)


def test_boundary_estimators_run_on_a_small_batch_with_the_settings_they_name():
    from hf_reward import reward_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 12))
    estimators = bench_variance.boundary_estimators(3)
    for name, settings in estimators.items():
        assert settings.estimator == name.split()[0]
        assert settings.num_samples == int(name.split("K=")[1][0])
        assert settings.switch_around == ("decoded" if "decoded" in name else "sample")
        out = reward_loss(logits, labels, settings, generator=torch.Generator().manual_seed(0))
        (grad,) = torch.autograd.grad(out.loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
