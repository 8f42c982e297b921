"""The scripts end to end on tiny settings, their argument parsing, and every shipped config."""

import dataclasses
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BlobsDataset, tiny_segformer

from hf_reward import RewardSegTrainer, reinforce_loss
from hf_reward.cli import TuneConfig, parse_config
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.modeling import build_segformer, check_id2label, load_segformer

ROOT = Path(__file__).resolve().parents[1]
TUNE = runpy.run_path(str(ROOT / "scripts" / "tune.py"), run_name="tune")
PRETRAIN = runpy.run_path(str(ROOT / "scripts" / "pretrain.py"), run_name="pretrain")
SCRIPTS = {"scripts/tune.py": TUNE, "scripts/pretrain.py": PRETRAIN}

# A run of seconds: 32x32 toy streets, a 30k-parameter SegFormer, 2 pretraining and 2 tuning steps.
TINY = ("--hidden_sizes 8 16 32 64 --decoder_hidden_size 16 --toy_size 32 --crop_size 32 32 --toy_train_images 64 "
        "--toy_eval_images 4 --shuffle_buffer 8 --pretrain_steps 2 --max_steps 2 --per_device_train_batch_size 4 "
        "--per_device_eval_batch_size 4 --eval_steps 1 --logging_steps 1 --save_steps 2 --num_overlays 2 --use_cpu "
        "--disable_tqdm true --seed 0").split()


def as_dicts(parsed):
    return [a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a) for a in parsed]


def test_default_yaml_is_the_scripts_defaults():
    no_args = as_dicts(parse_config(TUNE["ARGUMENTS"], []))
    with_file = as_dicts(parse_config(TUNE["ARGUMENTS"], ["--config", str(ROOT / "configs/default.yaml")]))
    assert no_args == with_file
    # and the file sets the tuning settings the embedded run is documented with
    values = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    assert {k: values[k] for k in ("estimator", "reward_scope", "temperature", "num_samples", "learning_rate")} == dict(
        estimator="local", reward_scope="dataset", temperature=0.5, num_samples=1, learning_rate=1e-4)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_is_headed_by_its_command_and_parses_into_its_scripts_arguments(path):
    text = path.read_text()
    assert text.startswith("#")
    header = text.split("\n\n")[0]
    script = re.search(r"(scripts/\w+\.py) --config configs/" + re.escape(path.name), header).group(1)
    if script not in SCRIPTS:  # another script's config (a study, an evaluation): its own tests parse it
        return
    assert "accelerate launch" in header and "Expect" in header
    # --use_cpu: TrainingArguments refuses bf16 on a machine without a GPU unless told to use the CPU.
    parsed = parse_config(SCRIPTS[script]["ARGUMENTS"], ["--config", str(path), "--use_cpu", "true"])
    flat = {k: v for d in as_dicts(parsed) for k, v in d.items()}
    for key, value in yaml.safe_load(text).items():
        assert flat[key] == value or str(flat[key]) == str(value) or flat[key] == pytest.approx(value), key


@pytest.mark.parametrize("path", sorted((ROOT / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    text = path.read_text()
    assert text.startswith("#") and "accelerate launch --config_file configs/accelerate/" + path.name in text
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1 and config.mixed_precision == "no"


def test_flags_override_the_config_file_and_typos_are_errors(tmp_path):
    *_, args = parse_config(TUNE["ARGUMENTS"], ["--config", str(ROOT / "configs/default.yaml"), "--max_steps", "3"])
    assert args.max_steps == 3 and args.estimator == "local"
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['max_step'\]"):
        parse_config(TUNE["ARGUMENTS"], ["--config", str(bad)])


def test_python_tune_runs_the_whole_job_and_reuses_the_pretrained_model(tmp_path, capsys):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts/tune.py"), "--output_dir", str(out), *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Maximum-likelihood pretraining for 2 steps" in first.stdout
    assert re.search(r"\| \*\*mIoU\*\* \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|", first.stdout)
    assert "| pole |" in first.stdout
    for name in ("model.safetensors", "results.md", "README.md", "training.png", "overlays.png",
                 "pretrained/model.safetensors", "checkpoint-2/model.safetensors"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.bin")) or all(p.name == "training_args.bin" for p in out.rglob("*.bin"))
    for png in ("training.png", "overlays.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["before"]["eval_mean_iou"] <= 1 and 0 <= results["after"]["eval_mean_iou"] <= 1

    capsys.readouterr()
    TUNE["main"](command[2:])  # again, in this process
    printed = capsys.readouterr().out
    assert "Reusing the pretrained model" in printed and "Maximum-likelihood pretraining" not in printed
    # the cached model and the same seed: the same run, before and after tuning
    again = json.loads((out / "results.json").read_text())
    for when in ("before", "after"):
        assert {k: v for k, v in again[when].items() if "iou" in k} == {k: v for k, v in results[when].items() if "iou" in k}


def test_pretrain_script_trains_and_saves(tmp_path):
    argv = ["--output_dir", str(tmp_path), *_drop(TINY, "--pretrain_steps", "--num_overlays", "--eval_steps", "--save_steps")]
    trainer = PRETRAIN["main"](argv)
    assert trainer.state.global_step == 2
    assert (tmp_path / "model.safetensors").is_file()
    assert 0 <= json.loads((tmp_path / "eval_results.json").read_text())["eval_mean_iou"] <= 1


def _drop(argv, *flags):
    out, skip = [], False
    for a in argv:
        if a in flags:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A saved toy-streets SegFormer to tune, so that a test skips pretraining."""
    path = tmp_path_factory.mktemp("start")
    build_segformer(TOY_STREETS_ID2LABEL, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16).save_pretrained(path)
    return path


def quick(start, *flags):
    """TINY from a saved model, without evaluation during training or plots."""
    return ["--model_name_or_path", str(start), *_drop(TINY, "--num_overlays", *flags), "--eval_strategy", "no",
            "--num_overlays", "0"]


def test_resume_reaches_the_parameters_of_an_uninterrupted_run(tmp_path, start):
    """reward_scope='dataset' (the default): the running confusion matrix is restored too."""
    initial = load_segformer(str(start), TOY_STREETS_ID2LABEL)
    common = quick(start, "--max_steps")

    def params(trainer):
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    full = TUNE["main"](["--output_dir", str(tmp_path / "full"), "--max_steps", "4", "--learning_rate", "1e-2", *common])
    TUNE["main"](["--output_dir", str(tmp_path / "cut"), "--max_steps", "2", "--learning_rate", "1e-2", *common])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    assert (checkpoint / "reward_state_0.safetensors").is_file()
    resumed = TUNE["main"](["--output_dir", str(tmp_path / "cut"), "--max_steps", "4", "--learning_rate", "1e-2",
                            "--resume_from_checkpoint", str(checkpoint), *common])
    assert resumed.state.global_step == 4
    assert not torch.equal(params(full), torch.cat([p.flatten() for p in initial.parameters()]))
    torch.testing.assert_close(params(resumed), params(full), rtol=0, atol=0)


def test_bf16_on_cpu_tunes(tmp_path):
    """use_cpu + bf16: autocast to bfloat16 on the CPU, float32 master weights, finite rewards."""
    model = tiny_segformer()
    before = [p.detach().clone() for p in model.parameters()]
    args = TuneConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True, bf16=True,
                      eval_strategy="no", save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = RewardSegTrainer(model=model, args=args, train_dataset=BlobsDataset(n=8))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logs) == 2 and all(0 <= e["reward"] <= 1 and e["entropy"] > 0 for e in logs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_reinforce_loss_samples_and_scores_bf16_logits_in_float32():
    torch.manual_seed(0)
    logits32 = torch.randn(2, 4, 8, 8)
    logits16 = logits32.bfloat16().requires_grad_()
    labels = torch.randint(0, 4, (2, 32, 32))
    kwargs = dict(reward_fn="miou", num_samples=4, baseline="loo", temperature=0.5)
    out16 = reinforce_loss(logits16, labels, generator=torch.Generator().manual_seed(1), **kwargs)
    # the same values in float32 from the start: identical samples, rewards and loss
    out32 = reinforce_loss(logits16.detach().float(), labels, generator=torch.Generator().manual_seed(1), **kwargs)
    assert out16.loss.dtype == torch.float32 and out16.entropy.dtype == torch.float32
    torch.testing.assert_close(out16.rewards, out32.rewards, rtol=0, atol=0)
    torch.testing.assert_close(out16.loss, out32.loss, rtol=0, atol=0)
    out16.loss.backward()
    assert logits16.grad.dtype == torch.bfloat16 and logits16.grad.abs().sum() > 0


ID2LABEL = {0: "road", 1: "car", 2: "traffic light"}


@pytest.mark.parametrize(
    "model_labels, message",
    [({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, "no id2label"),
     ({0: "road", 1: "Road", 2: "car"}, "ambiguous"),
     ({0: "road", 1: "car"}, "has 2 classes but the dataset has 3"),
     ({0: "road", 1: "truck", 2: "traffic light"}, "1: model 'truck' vs dataset 'car'")],
)
def test_label_map_problems_are_errors(model_labels, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_id2label(model_labels, ID2LABEL)


def test_label_names_compare_loosely():
    check_id2label({0: "Road", 1: "car", 2: "traffic_light"}, ID2LABEL)


def test_loading_is_safetensors_only_and_checks_labels(tmp_path):
    model = build_segformer(ID2LABEL, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16)
    model.save_pretrained(tmp_path / "good")
    loaded = load_segformer(str(tmp_path / "good"), ID2LABEL)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="1: model 'car' vs dataset 'bus'"):
        load_segformer(str(tmp_path / "good"), {0: "road", 1: "bus", 2: "traffic light"})
    # a new head for another label set: loads, and the classifier is re-initialised
    other = load_segformer(str(tmp_path / "good"), {0: "sky", 1: "tree", 2: "grass"}, new_head=True)
    assert other.config.id2label[1] == "tree"
    assert not torch.equal(other.decode_head.classifier.weight, model.decode_head.classifier.weight)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_segformer(str(pickled), ID2LABEL)
