import math
from dataclasses import fields

import pytest
import torch
from conftest import BlobsDataset, tiny_segformer
from transformers import TrainerCallback, TrainingArguments

from hf_reward import REWARDS, RewardSegConfig, RewardSegTrainer
from hf_reward.metrics import StreamingMeanIoU


def make_config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        ce_weight=0.0,  # the reward alone, unless a test adds terms
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return RewardSegConfig(**{**defaults, **kwargs})


def train(tmp_path, dataset, model=None, reward_fn=None, mask_reward_fn=None, **kwargs):
    model = model or tiny_segformer()
    trainer = RewardSegTrainer(
        model=model,
        args=make_config(tmp_path, **kwargs),
        train_dataset=dataset,
        eval_dataset=dataset,
        reward_fn=reward_fn,
        mask_reward_fn=mask_reward_fn,
    )
    trainer.train()
    return trainer


def train_logs(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]


REWARD_METRICS = {"reward", "greedy_reward", "entropy"}


@pytest.mark.parametrize(
    "knobs,extra",
    [
        (dict(), {"scope_reward"}),
        (dict(ce_weight=1.0), {"scope_reward", "ce_loss"}),  # the default recipe
        (dict(estimator="score", reward_scope="image", num_samples=4), {"advantage_std", "frac_zero_advantage"}),
        (
            dict(
                estimator="score", reward_scope="image", baseline="sample", num_samples=2, sample_resolution="labels"
            ),
            {"advantage_std"},
        ),
        (dict(estimator="score", reward_scope="image", baseline="ema", num_samples=1, ce_weight=0.5), {"ce_loss"}),
        (dict(reward_scope="image", kl_coef=0.1, reward="dice"), {"kl"}),
        (dict(reward_scope="batch", reward="cohen_kappa", lovasz_weight=0.5), {"scope_reward", "lovasz_loss"}),
        (dict(reward="miou", reward_class_weights=[1.0, 2.0, 0.0, 1.0]), {"scope_reward"}),
        (dict(reward="miou_gt", reward_scope="image"), set()),
        (
            dict(
                reward="boundary_f", estimator="score", reward_scope="image", num_samples=4, sample_resolution="labels"
            ),
            {"advantage_std"},
        ),
        (dict(reward="boundary_f", reward_scope="image", sample_resolution="labels"), {"weight_abs"}),
        (
            dict(reward="boundary_f", reward_scope="image", switch_around="decoded", tail_fraction=0.5),
            {"weight_abs", "tail_threshold"},
        ),
        (dict(reward="miou_gt", reward_scope="image", tail_fraction=0.1, tail_window=4), {"tail_threshold"}),
        (
            dict(
                reward="object_f1",
                reward_thing_classes=["class1", "class2"],
                estimator="score",
                reward_scope="image",
                num_samples=4,
            ),
            {"advantage_std"},
        ),
    ],
)
def test_training_changes_every_parameter_and_logs_metrics(tmp_path, blobs, knobs, extra):
    model = tiny_segformer()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = train(tmp_path, blobs, model=model, **knobs)
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged
    logs = train_logs(trainer)
    assert len(logs) == 3
    assert REWARD_METRICS | extra <= set(logs[0])
    for entry in logs:
        assert -1.0 <= entry["reward"] <= 1.0 and -1.0 <= entry["greedy_reward"] <= 1.0  # kappa can be < 0
        assert all(math.isfinite(entry[key]) for key in REWARD_METRICS | extra)
    assert "kl" not in logs[0] or logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference


@pytest.mark.parametrize("reward", sorted(REWARDS))
def test_every_named_reward_trains_every_parameter(tmp_path, blobs, reward):
    model = tiny_segformer()
    before = [p.detach().clone() for p in model.parameters()]
    logs = train_logs(train(tmp_path, blobs, model=model, reward=reward, max_steps=2))
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(math.isfinite(e["scope_reward"]) for e in logs)


def test_a_custom_reward_of_whole_masks_trains(tmp_path, blobs):
    def share_of_class_zero(pred, target):  # any function of the sampled masks, per image
        return ((pred == 0) & (target != 255)).double().mean((-2, -1))

    model = tiny_segformer()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = train(
        tmp_path,
        blobs,
        model=model,
        mask_reward_fn=share_of_class_zero,
        estimator="score",
        reward_scope="image",
        num_samples=2,
    )
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(0 <= e["reward"] <= 1 for e in train_logs(trainer))


def test_object_reward_names_unknown_thing_classes(tmp_path, blobs):
    with pytest.raises(ValueError, match=r"reward_thing_classes \['bus'\] are not classes of the model"):
        train(
            tmp_path,
            blobs,
            reward="object_f1",
            reward_thing_classes=["bus"],
            estimator="score",
            reward_scope="image",
            num_samples=2,
        )


@pytest.mark.parametrize("surrogate", ["ce_weight", "lovasz_weight"])
def test_reward_weight_zero_is_a_plain_surrogate_fine_tune(tmp_path, blobs, surrogate):
    model = tiny_segformer()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = train(tmp_path, blobs, model=model, reward_weight=0.0, **{surrogate: 1.0})
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    logs = train_logs(trainer)
    name = surrogate.replace("_weight", "_loss")
    assert not REWARD_METRICS & set(logs[0])  # nothing was sampled
    assert [e["loss"] for e in logs] == pytest.approx([e[name] for e in logs], rel=1e-5)


@pytest.mark.parametrize("scope", ["image", "batch"])
def test_the_trainers_gradient_is_the_reward_losss_on_the_models_logits(tmp_path, blobs, scope):
    """The trainer's step gradient equals the gradient of hf_reward.reward_loss called directly on the model's
    logits with the config's settings and the same random draws: the wiring (sampling resolution, temperature,
    scope, weights) adds nothing and drops nothing."""
    from hf_reward import reward_loss
    from hf_reward.data import collate_segmentation

    args = make_config(tmp_path, reward_scope=scope, ce_weight=0.5)
    model = tiny_segformer()
    trainer = RewardSegTrainer(model=model, args=args, train_dataset=blobs)
    batch = collate_segmentation([blobs[i] for i in range(4)])
    torch.manual_seed(7)
    trainer.compute_loss(model, batch).backward()
    through_trainer = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(7)
    logits = model(pixel_values=batch["pixel_values"]).logits
    direct = reward_loss(logits, batch["labels"], trainer.loss_settings).loss
    ce = torch.nn.functional.cross_entropy(
        torch.nn.functional.interpolate(logits, size=batch["labels"].shape[-2:], mode="bilinear"),
        batch["labels"],
        ignore_index=255,
    )
    (direct + 0.5 * ce).backward()
    for got, expected in zip(through_trainer, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_the_local_estimators_diagnostics_are_logged(tmp_path, blobs):
    """weight_abs is 0 and every pixel's weight is 0 when the reward ignores the prediction; with mIoU neither."""
    logs = train_logs(train(tmp_path, blobs, reward_scope="image", reward_fn=lambda tp, gt, pd: gt.sum(-1) * 0 + 1))
    assert all(e["weight_abs"] == 0 and e["frac_zero_weight"] == 1 for e in logs)
    logs = train_logs(train(tmp_path / "miou", blobs, reward_scope="image"))
    assert all(e["weight_abs"] > 0 and 0 <= e["frac_zero_weight"] < 1 for e in logs)


def test_evaluation_returns_cross_entropy(tmp_path, blobs):
    trainer = train(tmp_path, blobs, max_steps=1)
    metrics = trainer.evaluate()
    model = trainer.model.eval()
    with torch.no_grad():
        batch = torch.utils.data.default_collate([blobs[i] for i in range(len(blobs))])
        expected = model(**batch).loss  # SegFormer's own cross-entropy, ignore_index 255
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """Local per-image pixel accuracy + cross-entropy is deterministic: GA = 2 x 2 must equal 1 x 4."""
    data = BlobsDataset(n=8, ignore_fraction=0.0)
    runs = []
    for batch, accumulation in [(4, 1), (2, 2)]:
        model = tiny_segformer()
        model.decode_head.batch_norm = torch.nn.Identity()  # batch statistics differ between 2 and 4 images
        trainer = train(
            tmp_path / f"{batch}",
            data,
            model=model,
            reward_scope="image",
            reward="pixel_accuracy",
            ce_weight=1.0,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            learning_rate=1e-3,
        )
        runs.append(
            ([e["loss"] for e in train_logs(trainer)], torch.cat([p.detach().flatten() for p in model.parameters()]))
        )
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-6)


class GradientNorms(TrainerCallback, list):
    """The global gradient norm of every optimizer step, before the step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())


def test_dataset_scope_gradient_and_decay_do_not_depend_on_how_the_step_is_split(tmp_path):
    """1 x 8 and 2 x 4 images per optimizer step: the same gradient scale, one decay of the running matrix per step."""
    data = BlobsDataset(n=8, ignore_fraction=0.0)
    norms, running = {}, {}
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_segformer()
        model.decode_head.batch_norm = torch.nn.Identity()
        trainer = RewardSegTrainer(
            model=model,
            args=make_config(
                tmp_path / f"{batch}",
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                max_steps=3,
                learning_rate=1e-3,
            ),
            train_dataset=data,
        )
        grads = GradientNorms()
        trainer.add_callback(grads)
        trainer.train()
        norms[batch], running[batch] = grads, trainer.reward_state.running
    ratios = [a / b for a, b in zip(norms[4], norms[8])]
    assert all(0.8 < r < 1.25 for r in ratios), ratios  # it was x2 when the scope was per micro-batch
    # 3 steps of 8 pixels-worth each: decay 0.9 applied twice (not 5 times) to the first step's counts
    pixels = 8 * 8 * 8  # images x (32 / 4) ** 2 logits
    expected_total = pixels * (1 + 0.9 + 0.81)
    for batch in (8, 4):
        assert running[batch].sum().item() == pytest.approx(expected_total, rel=1e-6)


def test_custom_reward_fn_of_counts_with_the_local_estimator(tmp_path, blobs):
    calls = []

    def foreground_recall(tp, gt, pd):
        calls.append(tp.shape)
        return tp[..., 1:].sum(-1) / gt[..., 1:].sum(-1).clamp(min=1)

    trainer = train(tmp_path, blobs, reward_fn=foreground_recall, max_steps=2)
    assert calls and calls[0][-1] == 4
    assert all(0 <= entry["scope_reward"] <= 1 for entry in train_logs(trainer))
    with pytest.raises(ValueError, match="not finite"):
        RewardSegTrainer(
            model=tiny_segformer(), args=make_config(tmp_path), reward_fn=lambda tp, gt, pd: (tp / gt).mean(-1)
        )


class NaNAtStep:
    """Forward hook that makes the logits (or only their gradient) NaN on its `step`-th training call."""

    def __init__(self, step, gradient_only=False):
        self.step, self.calls, self.gradient_only = step, 0, gradient_only

    def __call__(self, module, inputs, output):
        if module.training:
            self.calls += 1
            if self.calls == self.step:
                if self.gradient_only:
                    output.logits.register_hook(lambda grad: grad * float("nan"))
                else:
                    output.logits = output.logits * float("nan")
        return output


@pytest.mark.parametrize("gradient_only,message", [(False, "non-finite loss"), (True, "non-finite gradient")])
def test_nonfinite_step_stops_before_the_update_and_the_checkpoint(tmp_path, blobs, gradient_only, message):
    model = tiny_segformer()
    model.register_forward_hook(NaNAtStep(2, gradient_only))
    with pytest.raises(FloatingPointError, match=f"{message}.* training step 2"):
        train(tmp_path, blobs, model=model, save_strategy="steps", save_steps=1)
    assert (tmp_path / "checkpoint-1").exists() and not (tmp_path / "checkpoint-2").exists()
    assert all(p.isfinite().all() for p in model.parameters())


class LabelsWith(torch.utils.data.Dataset):
    def __init__(self, value, image):
        self.data, self.value, self.image = BlobsDataset(n=4), value, image

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        example = dict(self.data[i])
        if i == self.image:
            example["labels"] = example["labels"].clone()
            example["labels"][0, :3] = self.value
        return example


@pytest.mark.parametrize("value,image", [(57, 1), (260, 0), (300, 3), (-1, 2), (4, 0)])
def test_labels_that_are_neither_a_class_nor_ignore_are_rejected(tmp_path, value, image):
    # one bad image, wherever the sampler put it in the batch
    with pytest.raises(ValueError, match=rf"labels hold \[{value}\] \(training step 1, images \[\d\] of the batch\)"):
        train(tmp_path, LabelsWith(value, image), max_steps=1)


def test_evaluation_rejects_bad_labels_too(tmp_path):
    trainer = RewardSegTrainer(model=tiny_segformer(), args=make_config(tmp_path), eval_dataset=LabelsWith(9, 2))
    with pytest.raises(ValueError, match=r"labels hold \[9\] \(evaluation"):
        trainer.evaluate()


def test_a_model_whose_head_does_not_match_the_metric_fails_at_the_start(tmp_path):
    with pytest.raises(ValueError, match="the model has 5 classes but compute_metrics scores 11"):
        RewardSegTrainer(
            model=tiny_segformer(num_labels=5), args=make_config(tmp_path), compute_metrics=StreamingMeanIoU(11)
        )
    with pytest.raises(ValueError, match="reward_class_weights has 2 weights but the model has 4 classes"):
        RewardSegTrainer(model=tiny_segformer(), args=make_config(tmp_path, reward_class_weights=[1.0, 1.0]))


def test_void_images_are_left_out_of_the_logged_means(tmp_path):
    class HalfVoid(BlobsDataset):
        def __getitem__(self, i):
            example = super().__getitem__(i)
            return {**example, "labels": torch.full_like(example["labels"], 255)} if i % 2 else example

    all_void = train(tmp_path / "void", HalfVoid(n=4, seed=1), max_steps=2, per_device_train_batch_size=1)
    logs = train_logs(all_void)
    assert "greedy_reward" in logs[0] and "reward" not in logs[1]  # step 2 saw only a void image: no value, no NaN
    assert all(math.isfinite(v) for e in logs for v in e.values() if isinstance(v, float))
    # A logging window of a labelled step and a void one: the surrogate's mean is the labelled step's, not halved.
    surrogates = dict(reward_weight=0.0, ce_weight=1.0, lovasz_weight=1.0, kl_coef=0.1, per_device_train_batch_size=1)
    window = train(tmp_path / "window", HalfVoid(n=4, seed=1), max_steps=2, logging_steps=2, **surrogates)
    single = train(tmp_path / "one", HalfVoid(n=4, seed=1), max_steps=1, logging_steps=1, **surrogates)
    (window,), (first,) = train_logs(window), train_logs(single)
    for name in ("ce_loss", "lovasz_loss", "kl"):
        assert window[name] == pytest.approx(first[name], rel=1e-6), name


def test_empty_splits_are_named(tmp_path):
    empty = BlobsDataset(n=0)
    with pytest.raises(ValueError, match="the training dataset is empty"):
        train(tmp_path, empty)
    trainer = RewardSegTrainer(model=tiny_segformer(), args=make_config(tmp_path), eval_dataset=empty)
    with pytest.raises(ValueError, match="the evaluation dataset is empty"):
        trainer.evaluate()


@pytest.mark.parametrize(
    "knobs,message",
    [
        (dict(estimator="score", reward_scope="image"), "needs num_samples >= 2"),
        (dict(reward="hausdorff"), "reward must be one of"),
        (dict(estimator="score", reward_scope="image", baseline="sample", num_samples=3), "must be even"),
        (dict(estimator="score"), "needs estimator='local'"),
        (dict(estimator="pathwise"), "estimator must be one of"),
        (dict(max_steps=0), r"max_steps must be > 0 \(or -1"),
        (dict(learning_rate=-1e-4), "learning_rate must be finite and >= 0"),
        (dict(temperature=0.0), "temperature must be"),
        (dict(temperature=float("nan")), "temperature must be finite"),
        (dict(temperature=float("inf")), "temperature must be finite"),
        (dict(kl_coef=float("nan")), "kl_coef must be finite"),
        (dict(ce_weight=float("inf")), "ce_weight must be finite"),
        (dict(lovasz_weight=-1.0), "lovasz_weight must be >= 0"),
        (dict(reward_weight=0.0), "nothing to train on"),
        (dict(sample_resolution="full"), "sample_resolution"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(reward_class_weights=[1.0, float("nan")]), "reward_class_weights"),
        (dict(reward="pixel_accuracy", reward_class_weights=[1.0, 2.0]), "class_weights apply to"),
        (dict(reward_beta=0.0), "reward_beta"),
    ],
)
def test_config_rejects_impossible_settings(tmp_path, knobs, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **knobs)


def test_config_defaults_are_the_recipe_and_every_field_has_help():
    config = RewardSegConfig(output_dir="unused")
    recipe = dict(
        estimator="local",
        reward="miou",
        reward_scope="dataset",
        temperature=0.5,
        num_samples=1,
        learning_rate=3e-5,
        reward_weight=1.0,
        ce_weight=1.0,
        lovasz_weight=0.0,
        remove_unused_columns=False,
    )
    assert {name: getattr(config, name) for name in recipe} == recipe
    own = {f.name for f in fields(RewardSegConfig)} - {f.name for f in fields(TrainingArguments)}
    assert own and all(f.metadata.get("help") for f in fields(RewardSegConfig) if f.name in own)
