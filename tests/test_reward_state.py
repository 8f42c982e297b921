"""RewardState: the scopes' counts and the ema baseline between calls, as one object with a state_dict."""

import pytest
import torch

from hf_reward import LossSettings, RewardState, reinforce_loss, reward_loss
from hf_reward.rewards import miou


def settings(scope="dataset", estimator="local", baseline="none", num_samples=1):
    return LossSettings(
        reward=miou,
        estimator=estimator,
        reward_scope=scope,
        num_samples=num_samples,
        temperature=0.5,
        baseline=baseline,
        sample_resolution="logits",
        ignore_index=255,
        dataset_confusion_decay=0.5,
    )


def test_counts_join_the_step_then_decay_into_the_running_matrix():
    state, s = RewardState(), settings()
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    first = reward_loss(logits, labels, s, state=state)
    state.update(first, s, step_ends=False)  # a micro-batch: the step's counts so far
    assert torch.equal(state.context("dataset"), first.sample_confusion) and state.running is None
    assert state.step.dtype == torch.float64
    second = reward_loss(logits, labels, s, state=state)
    state.update(second, s, step_ends=True)  # the step ends: both micro-batches join the running matrix
    torch.testing.assert_close(state.running, first.sample_confusion + second.sample_confusion)
    assert state.step is None and state.context("image") is None
    third = reward_loss(logits, labels, s, state=state)
    state.update(third, s, step_ends=True)
    torch.testing.assert_close(
        state.running, 0.5 * (first.sample_confusion + second.sample_confusion) + third.sample_confusion
    )
    assert state.context("batch") is None  # the batch scope never sees past steps


def test_state_dict_round_trip_restores_the_same_context_and_ema():
    state, s = RewardState(), settings("image", "score", "ema", 2)
    out = reward_loss(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)), s, state=state)
    state.update(out, s, step_ends=True)
    assert state.ema is not None and state.running is None
    restored = RewardState()
    restored.load_state_dict(state.state_dict())
    assert set(state.state_dict()) == {"ema"} and torch.equal(restored.ema, state.ema)


def test_the_old_name_warns_and_computes_the_same_loss():
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    running = torch.rand(3, 3, dtype=torch.float64) * 20
    new = reward_loss(
        logits, labels, settings(), state=RewardState(step=running), generator=torch.Generator().manual_seed(0)
    )
    with pytest.warns(FutureWarning, match="renamed reward_loss"):
        old = reinforce_loss(logits, labels, settings(), context=running, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(old.loss, new.loss) and torch.testing.assert_close(old.scope_rewards, new.scope_rewards)
