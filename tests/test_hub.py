"""Model card content, and a push through Trainer whose result loads by repo id, offline.

The Hub is replaced by a fake ``HfApi`` that writes each upload as a snapshot of a temporary HF
cache (``models--<user>--<repo>/snapshots/<commit>/``, ``refs/main``), the layout
``from_pretrained`` reads when ``HF_HUB_OFFLINE=1``.
"""

import fnmatch
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import transformers.trainer
import yaml
from conftest import TINY, drop, load_script

from hf_reward import RewardSegConfig
from hf_reward.cli import ModelArguments, UsageError
from hf_reward.cli.models import load_model
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.hub import ModelScores, model_card, per_class_table, summary_table

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """create_repo and upload_folder of ``HfApi``, writing into an HF cache directory."""

    def __init__(self, cache: Path):
        self.cache, self.uploads = cache, []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / COMMIT
        for path in Path(folder_path).rglob("*"):
            relative = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(
                fnmatch.fnmatch(part, p) for p in ignore_patterns for part in relative.split("/")
            ):
                (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / relative)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        self.uploads.append((repo_id, kwargs.get("commit_message")))
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/{COMMIT}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hf_cache")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake.cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: nothing may reach the network
    return fake


@pytest.mark.slow
def test_tune_pushes_a_calibrated_model_that_loads_by_repo_id_offline(tmp_path, hub):
    argv = [
        "--output_dir",
        str(tmp_path / "run"),
        *drop(TINY, "--num_overlays"),
        "--num_overlays",
        "0",
        "--control",
        "false",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/tiny-miou",
        "--hub_strategy",
        "end",
    ]
    trainer = load_script("tune").main(argv)
    assert hub.uploads[-1] == ("alice/tiny-miou", "Reward tuning with hf-reward")
    snapshot = hub.cache / "models--alice--tiny-miou" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and not list(snapshot.glob("checkpoint-*"))
    card = (snapshot / "README.md").read_text()
    assert "| reward | miou |" in card and "| estimator | local |" in card and "| steps | 2 |" in card
    assert re.search(r"\| reward tuning, 2 steps \| [\d.]+ \| [\d.]+ \|", card) and "| pole |" in card
    assert "## Calibration" in card and "folded into the classifier bias" in card

    # the scripts' loading path, by repo id, from the cache only
    model = load_model(ModelArguments(model_name_or_path="alice/tiny-miou"), TOY_STREETS_ID2LABEL)
    for (name, pushed), tuned in zip(model.state_dict().items(), trainer.model.state_dict().values()):
        assert pushed.equal(tuned), name
    assert model.config.calibration["reward"] == "miou"
    with pytest.raises(UsageError, match="alice/not-pushed"):
        load_model(ModelArguments(model_name_or_path="alice/not-pushed"), TOY_STREETS_ID2LABEL)


def test_model_card_records_settings_results_and_calibration():
    args = RewardSegConfig(
        output_dir="unused",
        estimator="score",
        reward_scope="image",
        baseline="loo",
        num_samples=4,
        sample_resolution="labels",
        learning_rate=1e-5,
        max_steps=300,
    )
    id2label = {0: "road", 1: "traffic light", 2: "rider"}
    scores = {
        "start": ModelScores(
            {"mean_iou": 0.5, "iou_road": 0.9, "iou_traffic_light": 0.1, "iou_rider": float("nan")},
        ),
        "reward tuning": ModelScores(
            {"mean_iou": 0.55, "iou_road": 0.9, "iou_traffic_light": 0.2, "iou_rider": float("nan")},
            calibrated={"mean_iou": 0.6},
            steps=300,
        ),
    }
    calibration = {
        "offsets": {"road": -0.5, "traffic light": 1.25, "rider": 0.0},
        "split": "train",
        "reward": "miou",
        "metric_before": 0.4,
        "metric_after": 0.45,
    }
    card = model_card(
        base_model="nvidia/segformer-b0-finetuned-cityscapes-1024-1024",
        dataset="Chris1/cityscapes",
        args=args,
        scores=scores,
        id2label=id2label,
        calibration=calibration,
    )
    front = card.split("---")[1]
    assert "base_model: nvidia/segformer-b0-finetuned-cityscapes-1024-1024" in front and "- Chris1/cityscapes" in front
    assert "REINFORCE with the 'loo' baseline of the per-image miou" in card
    for row in (
        "| reward | miou |",
        "| estimator | score |",
        "| baseline | loo |",
        "| samples per image (K) | 4 |",
        "| sampling resolution | labels |",
        "| learning rate | 1e-05 (constant schedule) |",
        "| steps | 300 |",
        "| start | 50.0 | — |",
        "| reward tuning, 300 steps | 55.0 | 60.0 |",
        "| traffic light | 10.0 | 20.0 | n/a |",
        "| rider | n/a | n/a | n/a |",
        "road -0.50, traffic light +1.25, rider +0.00",
        "(40.0 -> 45.0 there)",
    ):
        assert row in card, row


def test_card_metadata_names_only_hub_ids():
    """A local path or a description is no Hub id: the Hub would show a broken link for it."""
    args = RewardSegConfig(output_dir="x")
    scores = {"start": ModelScores({"mean_iou": 0.5})}
    card = model_card(
        base_model="a SegFormer built from config, pretrained by cross-entropy here (outputs/default/pretrained)",
        dataset="toy_streets",
        args=args,
        scores=scores,
        id2label={0: "road"},
    )
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front and "datasets" not in front and front["pipeline_tag"] == "image-segmentation"
    assert "toy_streets" in card  # the text still names them


def test_per_class_rows_follow_the_label_order():
    table = per_class_table(
        {
            "a": {"mean_iou": 0.25, "iou_b": 0.5, "iou_a": 0.0},
            "b": {"mean_iou": 0.5, "iou_b": 0.5, "iou_a": 0.5},
        },
        {0: "b", 1: "a"},
    )
    assert table.splitlines()[2:] == ["| **mIoU** | 25.0 | 50.0 |", "| b | 50.0 | 50.0 |", "| a | 0.0 | 50.0 |"]


def test_summary_table_of_another_metric():
    table = summary_table(
        {"start": ModelScores({"mean_accuracy": 0.5}, calibrated={"mean_accuracy": 0.7})},
        metric="mean_accuracy",
        label="mean accuracy",
    )
    assert table.splitlines() == [
        "| model | mean accuracy (%) | calibrated |",
        "|---|---:|---:|",
        "| start | 50.0 | 70.0 |",
    ]
