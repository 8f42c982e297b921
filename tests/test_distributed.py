"""Two-process data-parallel tuning on CPU (gloo), launched as users launch it: scripts/tune.py under torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY, drop


@pytest.mark.slow
def test_two_processes_split_the_data_share_one_dataset_scope_and_stay_in_sync(tmp_path):
    prefix = tmp_path / "rank"
    argv = [
        "--output_dir",
        str(tmp_path / "run"),
        *drop(TINY, "--max_steps", "--num_overlays"),
        "--max_steps",
        "3",
        "--num_overlays",
        "0",
        "--metric",
        "miou",  # its recipe: the dataset-scope mIoU, one running matrix over both processes
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(ROOT / "tests" / "dist_probe.py"),
        str(prefix),
        *argv,
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    # A crash in one process makes the other fail at its next collective: show the first process's own error.
    first = next((r for r in ("[rank1]", "[rank0]") if f"{r}: Traceback" in run.stderr), None)
    shown = "\n".join(line for line in run.stderr.splitlines() if first and line.startswith(first))
    assert run.returncode == 0, (shown or run.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert all(r["world_size"] == 2 for r in ranks)
    # each process trained on its own images: 3 steps x 4 images, none shared
    assert [len(r["seen"]) for r in ranks] == [12, 12]
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    # DDP averaged the gradients: identical parameters at the end
    assert ranks[0]["params"] == ranks[1]["params"]
    # the logged reward of each step is the mean of the two processes' own rewards
    logged = [e["reward"] for e in ranks[0]["log_history"] if "reward" in e]
    expected = [(a + b) / 2 for a, b in zip(ranks[0]["local_rewards"], ranks[1]["local_rewards"])]
    assert len(logged) == 3 and ranks[0]["local_rewards"] != ranks[1]["local_rewards"]
    assert logged == pytest.approx(expected, rel=1e-5)
    # one dataset scope: both processes hold the running matrix that one process seeing both batches would,
    # 0.9-decayed once per step over the sum of both processes' sampled counts
    counts = [np.array(r["local_counts"]) for r in ranks]
    assert not np.array_equal(counts[0], counts[1])
    one_process = sum(0.9 ** (2 - step) * (counts[0][step] + counts[1][step]) for step in range(3))
    for r in ranks:
        np.testing.assert_allclose(np.array(r["running_confusion"]), one_process, rtol=1e-12)
    assert (tmp_path / "run" / "results.md").is_file()
