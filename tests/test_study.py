import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BlobsDataset, tiny_segformer
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
    plain_trainer = arm.pop("mle", False) | arm.pop("lovasz", False)
    for lr in arm.pop("learning_rates", CONFIG["tune"]["learning_rates"]):
        config = (TrainingArguments if plain_trainer else RewardSegConfig)(
            output_dir=str(tmp_path), use_cpu=True, learning_rate=lr, **arm)
        assert config.learning_rate == lr
    assert CONFIG["arms"][CONFIG["control"]] == {"mle": True}


def test_report_pairs_each_arm_with_the_control_by_seed(tmp_path):
    def run(miou, rewards=()):
        logs = [{"loss": 0.1, "step": 10 * (i + 1), **({"reward": r} if rewards else {})} for i, r in enumerate(rewards or [0])]
        final = {"eval_mean_iou": miou, "eval_iou_road": miou + 0.1, "eval_iou_sky": miou - 0.1}
        return {"final": final, "train_logs": logs, "seconds_per_step": 1.0, "eval_curve": [(100, miou)]}

    cfg = {"control": "ce", "tune": {"max_steps": 100, "batch_size": 8},
           "arms": {"ce": {"mle": True}, "rl": {"x": 1}}}
    results = {("ce", 1e-4): {0: run(0.40), 1: run(0.42)}, ("ce", 3e-4): {0: run(0.30), 1: run(0.30)},
               ("rl", 1e-4): {0: run(0.41, [0.3] * 2 + [0.5] * 2), 1: run(0.44, [0.3] * 4)},
               ("rl", 3e-4): {0: run(0.43), 1: run(0.44)}}
    text = study.report(cfg, results, 0.39, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| rl | x=1 | 0.0001 "))
    assert "0.4250 ± 0.0212" in row  # mean and sd of 0.41, 0.44
    assert "| +1.50 ± 0.71 | +1.50 ± 0.71 | no |" in row  # paired +1 and +2 points; not > 2 sd
    assert "0.300 → 0.400" in row  # first and last two logged rewards, averaged over seeds
    row = next(line for line in text.splitlines() if line.startswith("| rl | x=1 | 0.0003 "))
    assert "| +13.50 ± 0.71 | +2.50 ± 0.71 | yes |" in row  # against ce at 3e-4, and at its best lr (1e-4)
    assert study.best_arm(cfg, results) == ("rl", 3e-4)
    assert "| ce | 0.0001 | 0.510 | 0.310 |" in text  # per-class IoU of the best control, mean over seeds
    assert "| rl | 0.0003 | 0.535 | 0.335 |" in text  # and of the best reward arm
    assert (tmp_path / "results.md").read_text() == text


def test_runs_each_kind_of_arm_and_caches_it(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    tiny_segformer().save_pretrained(checkpoint)
    data = {"train": BlobsDataset(8), "validation": BlobsDataset(4, seed=1)}
    id2label = {i: f"class{i}" for i in range(4)}
    cfg = {"control": "ce", "tune": {"max_steps": 10, "batch_size": 4, "eval_steps": 10, "weight_decay": 0.0,
                                     "learning_rates": [1e-3]},
           "arms": {"ce": {"mle": True}, "lovasz": {"lovasz": True},
                    "local": {"estimator": "local", "num_samples": 1, "learning_rates": [1e-2]}}}
    results = {}
    for name in cfg["arms"]:
        lr = study.learning_rates(cfg, name)[0]
        results[(name, lr)] = {0: study.run_arm(cfg, name, lr, 0, data, id2label, checkpoint, tmp_path)}
        assert (tmp_path / "runs" / f"{name}_lr{lr:g}_seed0.json").exists()
        final = results[(name, lr)][0]["final"]
        assert 0 <= final["eval_mean_iou"] <= 1 and "eval_iou_class0" in final
        assert torch.isfinite(torch.tensor([e["loss"] for e in results[(name, lr)][0]["train_logs"]])).all()
    assert "reward" in results[("local", 1e-2)][0]["train_logs"][0]
    monkeypatch.setattr(study.Trainer, "train", lambda self: pytest.fail("a cached run was recomputed"))
    assert study.run_arm(cfg, "lovasz", 1e-3, 0, data, id2label, checkpoint, tmp_path) == results[("lovasz", 1e-3)][0]
    study.plot_curves(results, 0.2, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
