import importlib.util
from pathlib import Path

import pytest
import yaml
from transformers import TrainingArguments

from hf_reward import RewardSegConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study", ROOT / "scripts/study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
CONFIG = yaml.safe_load((ROOT / "configs/study_camvid.yaml").read_text())


@pytest.mark.parametrize("name", list(CONFIG["arms"]))
def test_every_study_arm_builds_its_training_config(name, tmp_path):
    arm = dict(CONFIG["arms"][name])
    mle, train_only = arm.pop("mle", False), arm.pop("train_only", "")
    assert arm.pop("control", CONFIG["control"]) in CONFIG["arms"]
    assert train_only in ("", "decode_head", "segformer")
    config_class = TrainingArguments if mle else RewardSegConfig
    config = config_class(output_dir=str(tmp_path), use_cpu=True, **arm)
    assert config.learning_rate == arm["learning_rate"]
    assert CONFIG["control"] in CONFIG["arms"] and CONFIG["arms"][CONFIG["control"]].get("mle")


def test_report_pairs_each_arm_with_the_control_of_the_same_seed(tmp_path):
    def run(miou, rewards=()):
        logs = [{"loss": 0.1, "step": 10 * (i + 1), **({"reward": r} if rewards else {})} for i, r in enumerate(rewards or [0])]
        return {"final": {"eval_mean_iou": miou}, "train_logs": logs, "seconds_per_step": 1.0, "eval_curve": [(100, miou)]}

    cfg = {"control": "ce", "tune": {"max_steps": 100, "batch_size": 8}, "arms": {"ce": {"mle": True}, "rl": {"x": 1}}}
    results = {"ce": {0: run(0.40), 1: run(0.42)}, "rl": {0: run(0.41, [0.3] * 5 + [0.5] * 5), 1: run(0.44, [0.3] * 10)}}
    text = study.report(cfg, results, 0.39, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| rl "))
    assert "0.4250 ± 0.0212" in row  # mean and sd of 0.41, 0.44
    assert "+1.50 ± 0.71 pts" in row  # paired differences +1 and +2 points
    assert "0.300 → 0.400" in row  # first and last five logged rewards, averaged over seeds
    assert (tmp_path / "results.md").read_text() == text
