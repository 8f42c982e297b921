"""Shared test helpers: tiny random SegFormers, a learnable toy dataset, the scripts, tiny script arguments.

Nothing here reaches the network: ``HF_HUB_OFFLINE=1`` is set before transformers is imported.
Tests marked ``slow`` (subprocesses, several processes, whole script runs) run in CI; a developer
runs the rest with ``python -m pytest -m "not slow"``.
"""

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

from hf_reward.cli import default_threads  # noqa: E402

# The scripts' thread count (one fewer than the cores; scripts/bench_threads.py): the suite stays fast beside other
# work, and a script run in a subprocess computes what the same run computes in this process. OMP_NUM_THREADS
# sets another count.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or default_threads())

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"

# A run of seconds: 32x32 toy streets, a 30k-parameter SegFormer, 2 pretraining and 2 tuning steps.
TINY = (
    "--hidden_sizes 8 16 32 64 --decoder_hidden_size 16 --toy_size 32 --crop_size 32 32 --toy_train_images 64 "
    "--toy_eval_images 4 --shuffle_buffer 8 --pretrain_steps 2 --max_steps 2 --per_device_train_batch_size 4 "
    "--per_device_eval_batch_size 4 --eval_steps 1 --logging_steps 1 --save_steps 2 --num_overlays 2 --use_cpu "
    "--fit_images 8 --disable_tqdm true --seed 0 --tune true"
).split()


def tiny_segformer(
    num_labels: int = 4, seed: int = 0, id2label: dict | None = None
) -> SegformerForSemanticSegmentation:
    """A 7k-parameter random SegFormer (2 stages), deterministic: no dropout, no drop path."""
    id2label = id2label or {i: f"class{i}" for i in range(num_labels)}
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=len(id2label),
        drop_path_rate=0.0,
        classifier_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
    )
    return SegformerForSemanticSegmentation(config)


class BlobsDataset(torch.utils.data.Dataset):
    """Images whose label is a function of pixel colour, so a tiny model can learn them."""

    def __init__(self, n: int = 16, size: int = 32, num_labels: int = 4, ignore_fraction: float = 0.1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        coarse = torch.randint(0, num_labels, (n, 1, size // 8, size // 8), generator=g).float()
        self.labels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
        palette = torch.randn(num_labels, 3, generator=g)
        self.images = palette[self.labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=g)
        self.labels[torch.rand(self.labels.shape, generator=g) < ignore_fraction] = 255

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


# The commands of ``hf-reward`` (scripts/<name>.py runs the same main): their modules.
COMMANDS = {
    "tune": "hf_reward.cli.tune",
    "pretrain": "hf_reward.cli.pretrain",
    "calibrate": "hf_reward.cli.calibrate",
    "evaluate_model": "hf_reward.cli.evaluate",
    "study": "hf_reward.experiments.study_command",
    "adapt": "hf_reward.experiments.adapt_command",
}


def load_script(name: str):
    """The module behind ``scripts/<name>.py``: a command's (:data:`COMMANDS`), or the script itself as a module (its
    dataclasses resolve their annotations through ``sys.modules``)."""
    if name in COMMANDS:
        return importlib.import_module(COMMANDS[name])
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def drop(argv, *flags):
    """``argv`` without ``flags`` and their values."""
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


def quick(start, *flags):
    """TINY from a saved model, without evaluation during training or plots; ``flags`` dropped from TINY (to give
    them other values)."""
    return [
        "--model_name_or_path",
        str(start),
        *drop(TINY, "--num_overlays", *flags),
        "--eval_strategy",
        "no",
        "--num_overlays",
        "0",
    ]


@pytest.fixture
def blobs():
    return BlobsDataset()


@pytest.fixture(scope="session")
def toy_start(tmp_path_factory):
    """A saved toy-streets SegFormer to tune, so that a test skips pretraining."""
    from hf_reward.data import TOY_STREETS_ID2LABEL
    from hf_reward.modeling import build_segformer

    path = tmp_path_factory.mktemp("start")
    build_segformer(
        TOY_STREETS_ID2LABEL, hidden_sizes=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_hidden_size=16
    ).save_pretrained(path)
    return path
