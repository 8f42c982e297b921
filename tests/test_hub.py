"""Model card content, and a push through Trainer whose result loads by repo id, offline.

The Hub is replaced by a fake ``HfApi`` that writes each upload as a snapshot of a temporary HF
cache (``models--<user>--<repo>/snapshots/<commit>/``, ``refs/main``), the layout
``from_pretrained`` reads when ``HF_HUB_OFFLINE=1``.
"""

import fnmatch
import re
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import transformers.trainer
from test_scripts import TINY, _drop

from hf_reward import RewardSegConfig
from hf_reward.cli import ModelArguments, load_model
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.hub import model_card, results_table

ROOT = Path(__file__).resolve().parents[1]
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
            if path.is_file() and not any(fnmatch.fnmatch(part, p) for p in ignore_patterns for part in relative.split("/")):
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


def test_tune_pushes_a_model_that_loads_by_repo_id_offline(tmp_path, hub):
    tune = runpy.run_path(str(ROOT / "scripts/tune.py"), run_name="tune")
    argv = ["--output_dir", str(tmp_path / "run"), *_drop(TINY, "--num_overlays"), "--num_overlays", "0",
            "--push_to_hub", "true", "--hub_model_id", "alice/tiny-miou", "--hub_strategy", "end"]
    trainer = tune["main"](argv)
    assert hub.uploads[-1] == ("alice/tiny-miou", "Reward tuning with hf-reward")
    snapshot = hub.cache / "models--alice--tiny-miou" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and not list(snapshot.glob("checkpoint-*"))
    card = (snapshot / "README.md").read_text()
    assert "| reward | miou |" in card and "| estimator | local |" in card and "| steps | 2 |" in card
    assert re.search(r"\| \*\*mIoU\*\* \| [\d.]+ \| [\d.]+ \|", card) and "| pole |" in card

    # the scripts' loading path, by repo id, from the cache only
    model = load_model(ModelArguments(model_name_or_path="alice/tiny-miou"), TOY_STREETS_ID2LABEL)
    for (name, pushed), tuned in zip(model.state_dict().items(), trainer.model.state_dict().values()):
        assert pushed.equal(tuned), name
    with pytest.raises(OSError):
        load_model(ModelArguments(model_name_or_path="alice/not-pushed"), TOY_STREETS_ID2LABEL)


def test_model_card_records_settings_and_results():
    args = RewardSegConfig(output_dir="unused", estimator="score", baseline="loo", num_samples=4, reward="miou",
                           sample_resolution="labels", learning_rate=1e-5, max_steps=300)
    id2label = {0: "road", 1: "traffic light", 2: "rider"}
    before = {"eval_mean_iou": 0.5, "eval_iou_road": 0.9, "eval_iou_traffic_light": 0.1, "eval_iou_rider": float("nan")}
    after = {"eval_mean_iou": 0.55, "eval_iou_road": 0.9, "eval_iou_traffic_light": 0.2, "eval_iou_rider": float("nan")}
    card = model_card(base_model="nvidia/segformer-b0-finetuned-cityscapes-1024-1024", dataset="Chris1/cityscapes",
                      args=args, before=before, after=after, id2label=id2label)
    front = card.split("---")[1]
    assert "base_model: nvidia/segformer-b0-finetuned-cityscapes-1024-1024" in front and "- Chris1/cityscapes" in front
    for row in ("| reward | miou |", "| estimator | score |", "| baseline | loo |", "| samples per image (K) | 4 |",
                "| sampling resolution | labels |", "| learning rate | 1e-05 (constant schedule) |", "| steps | 300 |",
                "| **mIoU** | 50.0 | 55.0 | +5.0 |", "| traffic light | 10.0 | 20.0 | +10.0 |", "| rider | n/a | n/a | n/a |"):
        assert row in card, row


def test_results_table_rows_follow_the_label_order():
    table = results_table({"eval_mean_iou": 0.25, "eval_iou_b": 0.5, "eval_iou_a": 0.0},
                          {"eval_mean_iou": 0.5, "eval_iou_b": 0.5, "eval_iou_a": 0.5}, {0: "b", 1: "a"})
    assert table.splitlines()[2:] == ["| **mIoU** | 25.0 | 50.0 | +25.0 |", "| b | 50.0 | 50.0 | +0.0 |", "| a | 0.0 | 50.0 | +50.0 |"]
