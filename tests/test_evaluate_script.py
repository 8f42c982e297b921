"""scripts/evaluate.py: safetensors checkpoint, YAML config overridden by flags, per-class table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from hf_reward.data import TOY_STREETS_ID2LABEL

SCRIPT = Path(__file__).parents[1] / "scripts/evaluate.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def save_model(path: Path, id2label: dict) -> str:
    config = SegformerConfig(
        num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 16], decoder_hidden_size=16, num_attention_heads=[1, 1, 1, 1],
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    assert (path / "model.safetensors").exists()
    return str(path)


def test_yaml_config_with_flag_overrides_prints_a_per_class_table(script, tmp_path, capsys):
    model = save_model(tmp_path / "model", TOY_STREETS_ID2LABEL)
    config = tmp_path / "eval.yaml"
    config.write_text(f"model: {model}\ndataset: toy_streets\nnum_images: 5\nimage_size: 32\nbatch_size: 4\n")
    out_json = tmp_path / "metrics.json"

    metrics = script.main(["--config", str(config), "--batch_size", "2", "--max_samples", "3", "--output_json", str(out_json)])

    args = script.parse_args(["--config", str(config), "--batch_size", "2"])
    assert args.batch_size == 2 and args.num_images == 5 and args.model == model  # flag beats YAML, YAML beats default
    table = capsys.readouterr().out
    for name in TOY_STREETS_ID2LABEL.values():
        assert name in table
    assert "mean IoU" in table and f"{metrics['mean_iou'] * 100:7.2f}" in table
    assert json.loads(out_json.read_text())["mean_iou"] == pytest.approx(metrics["mean_iou"], nan_ok=True)
    assert set(metrics) >= {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_pole"}


def test_model_with_wrong_num_labels_is_refused(script, tmp_path):
    model = save_model(tmp_path / "model", {0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="num_labels=3 but the dataset has 9 classes"):
        script.main(["--model", model, "--num_images", "2", "--image_size", "32"])


def test_unknown_yaml_key_and_missing_model_are_refused(script, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("modle: x\n")
    with pytest.raises(ValueError, match=r"unknown keys \['modle'\]"):
        script.parse_args(["--config", str(config)])
    with pytest.raises(SystemExit):
        script.parse_args([])
