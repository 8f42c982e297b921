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

from hf_reward.cli import ModelArguments, UsageError
from hf_reward.cli.models import load_model
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.hub import decision_card, decision_table, per_class_table
from hf_reward.recipes import metric_plan
from hf_reward.selection import Decision

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
def test_tune_pushes_the_shipped_model_that_loads_by_repo_id_offline_and_decodes_as_recorded(tmp_path, hub):
    argv = [
        "--output_dir",
        str(tmp_path / "run"),
        *drop(TINY, "--num_overlays", "--tune"),
        "--num_overlays",
        "0",
        "--metric",
        "miou",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/tiny-miou",
        "--hub_strategy",
        "end",
    ]
    outcome = load_script("tune").main(argv)
    decoder = outcome.decision.winner[1]
    assert hub.uploads[-1] == ("alice/tiny-miou", "Reward tuning with hf-reward")
    snapshot = hub.cache / "models--alice--tiny-miou" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and not list(snapshot.glob("checkpoint-*"))
    card = (snapshot / "README.md").read_text()
    assert f"# mIoU: start + {decoder}, chosen with hf-reward" in card and "| pole |" in card
    assert 'from_pretrained("alice/tiny-miou")' in card and f"hf_reward_decoder: {decoder}" in card
    assert re.search(rf"\| \*\*start \+ {decoder}\*\* \(ships\) \| [\d.]+ \| [\d.]+ \|", card)

    # the scripts' loading path, by repo id, from the cache only; the card's snippet runs as written
    model = load_model(ModelArguments(model_name_or_path="alice/tiny-miou"), TOY_STREETS_ID2LABEL)
    for (name, pushed), shipped in zip(model.state_dict().items(), outcome.model.state_dict().values()):
        assert pushed.equal(shipped), name
    assert model.config.hf_reward_decoder == decoder
    snippet = card.split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(snippet, namespace)
    assert namespace["masks"].shape == (1, 256, 256)
    with pytest.raises(UsageError, match="alice/not-pushed"):
        load_model(ModelArguments(model_name_or_path="alice/not-pushed"), TOY_STREETS_ID2LABEL)


def decision():
    return Decision(
        metric="image_miou",
        baseline="start",
        winner=("start", "image_offsets"),
        decoders={"start": "image_offsets", "recipe, 300 steps": "argmax"},
        dev={"start": {"argmax": 0.5, "image_offsets": 0.55}, "recipe, 300 steps": {"argmax": 0.56}},
        gains={"recipe, 300 steps": (0.01, -0.002, 0.02)},
    )


def test_the_decision_table_marks_each_dev_best_decoder_and_the_winner():
    validation = {
        "start": {"argmax": {"image_miou": 0.49}, "image_offsets": {"image_miou": 0.54}},
        "recipe, 300 steps": {"argmax": {"image_miou": 0.57}},
    }
    assert decision_table(decision(), validation, "mIoU^I").splitlines() == [
        "| candidate | dev mIoU^I | validation mIoU^I | dev gain over start (95% interval) |",
        "|---|---:|---:|---|",
        "| start + argmax | 50.0 | 49.0 |  |",
        "| **start + image_offsets** (ships) | 55.0 | 54.0 |  |",
        "| recipe, 300 steps + argmax (dev-best decoder) | 56.0 | 57.0 | +1.00 [-0.20, +2.00] |",
    ]


def test_the_card_says_how_to_decode_and_names_only_hub_ids():
    """A local path or a description is no Hub id: the Hub would show a broken link for it."""
    id2label = {0: "road", 1: "traffic light"}
    common = dict(
        plan=metric_plan("image_miou"),
        table="| table |",
        decision=decision(),
        validation={"mean_iou": 0.5, "iou_road": 0.9, "iou_traffic_light": float("nan")},
        id2label=id2label,
        location="alice/b0",
    )
    card = decision_card(base_model="nvidia/mit-b0", dataset="Chris1/cityscapes", **common)
    front = card.split("---")[1]
    assert "base_model: nvidia/mit-b0" in front and "- Chris1/cityscapes" in front
    assert "per-class offsets fitted for per-image mIoU folded into its bias" in card
    assert "no tuned model's dev gain over it is certain" in card and "| traffic light | n/a |" in card
    local = decision_card(base_model="a SegFormer built from config (out/pretrained)", dataset="toy_streets", **common)
    front = yaml.safe_load(local.split("---")[1])
    assert "base_model" not in front and "datasets" not in front and front["pipeline_tag"] == "image-segmentation"
    assert "toy_streets" in local  # the text still names them


def test_per_class_rows_follow_the_label_order():
    table = per_class_table(
        {
            "a": {"mean_iou": 0.25, "iou_b": 0.5, "iou_a": 0.0},
            "b": {"mean_iou": 0.5, "iou_b": 0.5, "iou_a": 0.5},
        },
        {0: "b", 1: "a"},
    )
    assert table.splitlines()[2:] == ["| **mIoU** | 25.0 | 50.0 |", "| b | 50.0 | 50.0 |", "| a | 0.0 | 50.0 |"]
