"""UperNet next to SegFormer: building, loading, the auxiliary head's loss in the trainer, and calibration."""

import pytest
import torch
from conftest import BlobsDataset
from test_trainer import make_config
from transformers import BeitConfig

from hf_reward import RewardSegTrainer
from hf_reward.calibrate import Calibration, fold_offsets
from hf_reward.cli import ModelArguments, UsageError
from hf_reward.cli.models import load_model
from hf_reward.modeling import build_model, build_upernet, captured_outputs, load_segmentation_model

ID2LABEL = {i: f"class{i}" for i in range(4)}


def tiny_upernet(seed: int = 0):
    return build_upernet(
        ID2LABEL, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16, seed=seed
    )


@pytest.fixture
def blobs():
    return BlobsDataset(n=8, size=32, num_labels=4)


def test_build_and_load_back_an_upernet(tmp_path):
    model = build_model(ID2LABEL, "upernet", hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16)
    assert model.config.model_type == "upernet" and model.auxiliary_head is not None
    model.save_pretrained(tmp_path)
    loaded = load_segmentation_model(str(tmp_path), ID2LABEL)
    assert type(loaded) is type(model)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="classes differ"):
        load_segmentation_model(str(tmp_path), {**ID2LABEL, 3: "other"})


def test_a_new_head_resets_both_classifiers(tmp_path):
    model = tiny_upernet()
    model.save_pretrained(tmp_path)
    other = {i: f"thing{i}" for i in range(4)}  # same count: ignore_mismatched_sizes alone would keep the heads
    loaded = load_segmentation_model(str(tmp_path), other, new_head=True)
    assert loaded.config.id2label == other
    for head in ("decode_head", "auxiliary_head"):
        assert not torch.equal(getattr(loaded, head).classifier.weight, getattr(model, head).classifier.weight), head
    assert torch.equal(loaded.decode_head.fpn_bottleneck.conv.weight, model.decode_head.fpn_bottleneck.conv.weight)


def test_other_architectures_are_refused_by_name(tmp_path):
    BeitConfig(id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'beit' model; hf-reward trains and calibrates"):
        load_segmentation_model(str(tmp_path), ID2LABEL)
    with pytest.raises(UsageError, match="--architecture beit"):
        ModelArguments(architecture="beit")


def test_scripts_build_the_architecture_asked_for():
    model = load_model(ModelArguments(architecture="upernet", hidden_sizes=[8, 16, 32, 64]), ID2LABEL)
    assert model.config.model_type == "upernet" and model.config.hidden_size == 64
    assert model.auxiliary_head.classifier.in_channels == 32


def test_captured_outputs_keeps_the_auxiliary_logits_and_removes_its_hook():
    model = tiny_upernet()
    x = torch.randn(2, 3, 64, 96)
    with captured_outputs(model.auxiliary_head) as auxiliary:
        logits = model(pixel_values=x).logits
    assert logits.shape == (2, 4, 64, 96) and auxiliary[0].shape == (2, 4, 4, 6)  # stage 3: 1/16 of the input
    assert auxiliary[0].requires_grad
    model(pixel_values=x)
    assert len(auxiliary) == 1 and not model.auxiliary_head._forward_hooks


def test_cross_entropy_through_the_trainer_is_upernets_own_loss(tmp_path, blobs):
    """Reference: UperNet's forward with labels (cross-entropy + 0.4 x the auxiliary head's, at the input size)."""
    model = tiny_upernet().train()
    trainer = RewardSegTrainer(model=model, args=make_config(tmp_path, reward_weight=0.0, ce_weight=1.0))
    batch = {"pixel_values": blobs.images[:4], "labels": blobs.labels[:4]}
    torch.manual_seed(0)
    ours = trainer.compute_loss(model, batch)
    torch.manual_seed(0)
    theirs = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    torch.testing.assert_close(ours, theirs)
    assert trainer._metrics["auxiliary_loss"]


@pytest.mark.parametrize("auxiliary_reward", [False, True])
def test_training_an_upernet_changes_every_parameter(tmp_path, blobs, auxiliary_reward):
    model = tiny_upernet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = RewardSegTrainer(
        model=model,
        args=make_config(tmp_path, ce_weight=1.0, auxiliary_reward=auxiliary_reward),
        train_dataset=blobs,
    )
    trainer.train()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged, unchanged
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    assert {"reward", "scope_reward", "ce_loss", "auxiliary_loss"} <= set(logs[0])
    assert (trainer.auxiliary_reward_state.running is not None) == auxiliary_reward


def _step_gradients(tmp_path, blobs, **knobs) -> dict[str, torch.Tensor]:
    model = tiny_upernet().train()
    trainer = RewardSegTrainer(model=model, args=make_config(tmp_path, ce_weight=1.0, **knobs))
    torch.manual_seed(0)
    trainer.compute_loss(model, {"pixel_values": blobs.images[:4], "labels": blobs.labels[:4]}).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_auxiliary_reward_changes_only_the_auxiliary_heads_loss(tmp_path, blobs):
    cross_entropy = _step_gradients(tmp_path, blobs)
    reward = _step_gradients(tmp_path, blobs, auxiliary_reward=True)
    for name in cross_entropy:
        if name.startswith("decode_head."):  # the main head sees the main loss only, the same samples first
            torch.testing.assert_close(reward[name], cross_entropy[name], msg=name)
    assert not torch.allclose(
        reward["auxiliary_head.classifier.weight"], cross_entropy["auxiliary_head.classifier.weight"]
    )


def test_the_auxiliary_reward_state_is_checkpointed_and_restored(tmp_path, blobs):
    args = dict(ce_weight=1.0, auxiliary_reward=True, save_strategy="steps", save_steps=2, max_steps=2)
    trainer = RewardSegTrainer(model=tiny_upernet(), args=make_config(tmp_path, **args), train_dataset=blobs)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "auxiliary_reward_state_0.safetensors").is_file()
    resumed = RewardSegTrainer(model=tiny_upernet(), args=make_config(tmp_path, **args), train_dataset=blobs)
    resumed.create_optimizer_and_scheduler(num_training_steps=2)
    resumed._load_optimizer_and_scheduler(str(checkpoint))
    torch.testing.assert_close(resumed.auxiliary_reward_state.running, trainer.auxiliary_reward_state.running)
    assert not torch.equal(resumed.auxiliary_reward_state.running, resumed.reward_state.running)


def test_a_model_without_an_auxiliary_head_refuses_auxiliary_reward(tmp_path):
    from conftest import tiny_segformer

    with pytest.raises(
        ValueError, match="auxiliary_reward=True, but the model \\(SegformerForSemanticSegmentation\\)"
    ):
        RewardSegTrainer(model=tiny_segformer(), args=make_config(tmp_path, auxiliary_reward=True))


def test_calibration_folds_into_the_main_head_and_loads_back(tmp_path):
    model = tiny_upernet().eval()
    x = torch.randn(2, 3, 32, 32)
    offsets = torch.tensor([0.5, -1.0, 0.0, 2.0])
    with torch.no_grad():
        expected = model(pixel_values=x).logits + offsets[:, None, None]
    calibration = Calibration(
        offsets=offsets,
        reward="miou",
        metric_before=0.0,
        metric_after=0.0,
        history=[],
        converged=True,
        confusion_before=torch.zeros(4, 4),
        confusion_after=torch.zeros(4, 4),
        step=0.5,
        max_offset=4.0,
    )
    fold_offsets(model, calibration, "train")
    model.save_pretrained(tmp_path)
    loaded = load_segmentation_model(str(tmp_path), ID2LABEL).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, atol=1e-5, rtol=1e-5)
    assert loaded.config.calibration["offsets"]["class3"] == 2.0
