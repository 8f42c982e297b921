"""Runs scripts/tune.py in one process of a multi-process launch, recording what that process saw.

    torchrun --nproc_per_node 2 tests/dist_probe.py OUT_JSON_PREFIX [tune.py arguments...]

Writes ``OUT_JSON_PREFIX<rank>.json``: a fingerprint of every training image, the local
(this process's) reward of every step, the final parameters' hash, and the logged history.
Used by tests/test_distributed.py.
"""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from hf_reward import RewardSegTrainer

seen, local_rewards = [], []
compute_loss, record = RewardSegTrainer.compute_loss, RewardSegTrainer._record


def recording_compute_loss(self, model, inputs, *args, **kwargs):
    if model.training:
        seen.extend(hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in inputs["pixel_values"].float())
    return compute_loss(self, model, inputs, *args, **kwargs)


def recording_record(metrics, out, carries):
    record(metrics, out, carries)
    local_rewards.append(float(metrics["reward"][-1]))  # before log() averages over processes


RewardSegTrainer.compute_loss = recording_compute_loss
RewardSegTrainer._record = staticmethod(recording_record)

prefix, argv = sys.argv[1], sys.argv[2:]
trainer = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "tune.py"), run_name="tune")["main"](argv)
params = b"".join(p.detach().cpu().numpy().tobytes() for p in trainer.model.parameters())
Path(f"{prefix}{os.environ['RANK']}.json").write_text(json.dumps({
    "world_size": trainer.args.world_size,
    "seen": seen,
    "local_rewards": local_rewards,
    "params": hashlib.sha1(params).hexdigest(),
    "log_history": trainer.state.log_history,
}))
