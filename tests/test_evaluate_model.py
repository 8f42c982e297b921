"""scripts/evaluate_model.py: the shared data arguments, YAML config overridden by flags, the per-class table."""

import json

import pytest
from conftest import load_script, tiny_segformer

from hf_reward.cli import UsageError
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.metrics import EXTRA_METRICS

EVALUATE = load_script("evaluate_model")


@pytest.fixture
def model_dir(tmp_path):
    tiny_segformer(id2label=TOY_STREETS_ID2LABEL).save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_yaml_config_with_flag_overrides_prints_a_per_class_table(model_dir, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model_name_or_path: {model_dir}\ndataset: toy_streets\ntoy_eval_images: 5\ntoy_size: 32\nbatch_size: 4\n"
    )
    out_json = tmp_path / "metrics.json"
    metrics = EVALUATE.main(["--config", str(config), "--max_eval_samples", "3", "--output_json", str(out_json)])
    _, data_args, eval_args = EVALUATE.parse_config(EVALUATE.ARGUMENTS, ["--config", str(config), "--batch_size", "2"])
    assert eval_args.batch_size == 2 and data_args.toy_eval_images == 5  # flag beats YAML, YAML beats default
    table = capsys.readouterr().out
    for name in TOY_STREETS_ID2LABEL.values():
        assert name in table
    assert "mean IoU" in table and f"{metrics['mean_iou'] * 100:7.2f}" in table
    assert json.loads(out_json.read_text())["mean_iou"] == pytest.approx(metrics["mean_iou"], nan_ok=True)
    assert set(metrics) >= {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_pole", *EXTRA_METRICS}
    # beyond the dataset level: per image, boundaries at both default tolerances, toy streets' things
    shapes = {"image_miou", "class_miou", "image_miou_worst10", "boundary_f_2px", "boundary_f_0.75%", "object_f1"}
    assert shapes <= set(metrics) and all(f"{name.replace('_', ' ')} " in table for name in shapes)


def test_rankseg_decodes_the_model_for_its_own_expected_iou(model_dir, capsys):
    common = ["--model_name_or_path", model_dir, "--toy_eval_images", "3", "--toy_size", "32"]
    argmax = EVALUATE.main(common)
    rankseg = EVALUATE.main([*common, "--decoder", "rankseg"])
    assert set(rankseg) == set(argmax) and all(0 <= rankseg[k] <= 1 for k in ("mean_iou", "image_miou"))
    with pytest.raises(UsageError, match="decoder 'offsets'"):
        EVALUATE.main([*common, "--decoder", "offsets"])


def test_a_model_for_other_classes_is_refused(tmp_path):
    tiny_segformer(id2label={0: "a", 1: "b", 2: "c"}).save_pretrained(tmp_path / "model")
    with pytest.raises(UsageError, match="has 3 classes but the dataset has 9"):
        EVALUATE.main(["--model_name_or_path", str(tmp_path / "model"), "--toy_eval_images", "2", "--toy_size", "32"])


def test_missing_model_and_unknown_yaml_keys_are_refused(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("modle: x\n")
    with pytest.raises(UsageError, match=r"unknown keys \['modle'\]"):
        EVALUATE.main(["--config", str(config)])
    with pytest.raises(UsageError, match="required"):
        EVALUATE.main([])
    with pytest.raises(UsageError, match="does_not_exist"):
        EVALUATE.main(["--model_name_or_path", str(tmp_path / "does_not_exist")])
