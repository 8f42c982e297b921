import math

import pytest
import torch
from conftest import BlobsDataset, tiny_segformer

from hf_reward import RewardSegConfig, RewardSegTrainer


def make_config(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                    logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    return RewardSegConfig(**{**defaults, **kwargs})


def train(tmp_path, dataset, model=None, reward_fn=None, **kwargs):
    model = model or tiny_segformer()
    trainer = RewardSegTrainer(model=model, args=make_config(tmp_path, **kwargs), train_dataset=dataset,
                               eval_dataset=dataset, reward_fn=reward_fn)
    trainer.train()
    return trainer


TRAIN_METRICS = {"reward", "reward_std", "greedy_reward", "advantage_std", "frac_zero_advantage", "entropy"}


@pytest.mark.parametrize(
    "knobs",
    [dict(), dict(baseline="sample", num_samples=2), dict(baseline="greedy", num_samples=2, sample_resolution="labels"),
     dict(baseline="ema", mle_weight=0.5), dict(estimator="local", num_samples=1, kl_coef=0.1),
     dict(estimator="local", reward_scope="dataset", temperature=0.5, reward="dice")],
)
def test_training_changes_every_parameter_and_logs_metrics(tmp_path, blobs, knobs):
    model = tiny_segformer()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = train(tmp_path, blobs, model=model, **knobs)
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 3
    expected = (TRAIN_METRICS | ({"mle_loss"} if knobs.get("mle_weight") else set())
                | ({"kl"} if knobs.get("kl_coef") else set()) | ({"scope_reward"} if knobs.get("reward_scope") else set()))
    assert expected <= set(logs[0])
    for entry in logs:
        assert 0.0 <= entry["reward"] <= 1.0 and 0.0 <= entry["greedy_reward"] <= 1.0
        assert all(math.isfinite(entry[key]) for key in expected)
    assert "kl" not in logs[0] or logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference


def test_evaluation_returns_cross_entropy(tmp_path, blobs):
    trainer = train(tmp_path, blobs, max_steps=1)
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    with torch.no_grad():
        batch = torch.utils.data.default_collate([blobs[i] for i in range(len(blobs))])
        expected = model(**batch).loss  # SegFormer's own cross-entropy, ignore_index 255
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """Local pixel-accuracy gradient + cross-entropy is deterministic: GA=2 x 2 must equal 1 x 4."""
    data = BlobsDataset(n=8, ignore_fraction=0.0)
    runs = []
    for batch, accumulation in [(4, 1), (2, 2)]:
        model = tiny_segformer()
        model.decode_head.batch_norm = torch.nn.Identity()  # batch statistics differ between 2 and 4 images
        trainer = train(tmp_path / f"{batch}", data, model=model, estimator="local", num_samples=1,
                        reward="pixel_accuracy", mle_weight=1.0, per_device_train_batch_size=batch,
                        gradient_accumulation_steps=accumulation, max_steps=2, learning_rate=1e-3)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    assert runs[0][0][0] > 0.5  # the cross-entropy scale, not divided by the accumulation steps
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-6)


def test_custom_reward_fn(tmp_path, blobs):
    calls = []

    def foreground_recall(pred, target):
        calls.append(pred.shape)
        hit = ((pred == target) & (target > 0)).sum((1, 2)).float()
        return hit / ((target > 0) & (target != 255)).sum((1, 2)).clamp(min=1)

    trainer = train(tmp_path, blobs, reward_fn=foreground_recall, max_steps=2)
    assert calls and calls[0][0] == 4 * 4  # K * B masks in one call
    assert all(0 <= entry["reward"] <= 1 for entry in trainer.state.log_history if "reward" in entry)
    with pytest.raises(ValueError, match="closed-form"):
        RewardSegTrainer(model=tiny_segformer(), args=make_config(tmp_path, estimator="local"), reward_fn=foreground_recall)


class NaNAtStep:
    """Forward hook that turns the logits into NaN on its `step`-th training call."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, module, inputs, output):
        if module.training:
            self.calls += 1
            if self.calls == self.step:
                output.logits = output.logits * float("nan")
        return output


def test_nonfinite_loss_stops_with_the_step(tmp_path, blobs):
    model = tiny_segformer()
    model.register_forward_hook(NaNAtStep(2))
    with pytest.raises(FloatingPointError, match="training step 2"):
        train(tmp_path, blobs, model=model, save_strategy="steps", save_steps=1)
    assert (tmp_path / "checkpoint-1").exists() and not (tmp_path / "checkpoint-2").exists()


def test_nonfinite_steps_skipped_when_asked(tmp_path, blobs):
    model = tiny_segformer()
    model.register_forward_hook(NaNAtStep(2))
    trainer = train(tmp_path, blobs, model=model, skip_nonfinite_steps=True)
    assert [e["nonfinite_steps"] for e in trainer.state.log_history if "reward" in e] == [0, 1, 1]
    assert all(p.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize(
    "knobs,message",
    [(dict(num_samples=1), "needs num_samples >= 2"), (dict(reward="hausdorff"), "reward must be one of"),
     (dict(baseline="sample", num_samples=3), "must be even"), (dict(reward_scope="batch"), "needs estimator='local'"),
     (dict(estimator="pathwise"), "estimator must be one of"), (dict(temperature=0.0), "temperature must be > 0"),
     (dict(sample_resolution="full"), "sample_resolution"), (dict(ema_decay=1.0), "ema_decay")],
)
def test_config_rejects_impossible_settings(tmp_path, knobs, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **knobs)


def test_config_defaults_and_help():
    from dataclasses import fields

    config = RewardSegConfig(output_dir="unused")
    assert config.remove_unused_columns is False and config.baseline == "loo" and config.estimator == "score"
    own = {f.name for f in fields(RewardSegConfig)} - {f.name for f in fields(__import__("transformers").TrainingArguments)}
    assert own and all(f.metadata.get("help") for f in fields(RewardSegConfig) if f.name in own)
