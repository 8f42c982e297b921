"""Every Python block of README.md runs, in order and in one namespace, as a reader would paste them.

The blocks load what the README's CamVid command writes (``outputs/camvid_quick`` and its
``pretrained`` start); here a tiny SegFormer with CamVid's classes stands in for each, saved where the
README says, and CamVid is read from ``../shared/datasets/camvid`` as on the project's machines. The
only edits are the lengths in :data:`SHRINK`, each of which must appear in the README as written.
"""

import re

import pytest
import torch
from conftest import CAMVID, ROOT

from hf_reward.calibrate import fold_offsets
from hf_reward.data.camvid import camvid_id2label
from hf_reward.decoders import record_decoder
from hf_reward.modeling import build_segformer

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# The README's lengths, and the test's: the same code on fewer steps and images.
SHRINK = {"max_steps=400": "max_steps=2", ".take(128)": ".take(4)"}


def stand_ins(work):
    """A tiny shipped model at outputs/camvid_quick (per-image offsets folded, recorded) and its start."""
    id2label, _ = camvid_id2label(CAMVID)
    torch.manual_seed(0)
    model = build_segformer(id2label, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16)
    model.save_pretrained(work / "outputs" / "camvid_quick" / "pretrained")
    fold_offsets(model, torch.linspace(-1, 1, len(id2label)), split="train, first 256 images", method="image_offsets")
    record_decoder(model, "image_offsets")
    model.save_pretrained(work / "outputs" / "camvid_quick")


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    assert len(BLOCKS) >= 3
    for written in SHRINK:
        assert any(written in block for block in BLOCKS), written
    work = tmp_path / "hf-reward"
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    (tmp_path / "shared" / "datasets" / "camvid").symlink_to(CAMVID)
    stand_ins(work)
    monkeypatch.chdir(work)
    namespace = {}
    for i, block in enumerate(BLOCKS):
        for written, shrunk in SHRINK.items():
            block = block.replace(written, shrunk)
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["masks"].shape == (1, 360, 480)
    assert (work / "segformer-miou" / "model.safetensors").is_file()
    assert (work / "segformer-calibrated" / "config.json").is_file()
