"""Runs scripts/tune.py in one process of a multi-process launch, recording what its recipe's training saw.

    torchrun --nproc_per_node 2 tests/dist_probe.py OUT_JSON_PREFIX [tune.py arguments...]

Writes ``OUT_JSON_PREFIX<rank>.json``: a fingerprint of every training image, this process's own
per-step reward and sampled confusion counts (before they are summed over processes), the final
running confusion matrix, the final parameters' hash and the logged history. Used by
tests/test_distributed.py.
"""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from hf_reward import RewardSegTrainer

seen, local_rewards, local_counts = [], [], []
compute_loss, add_metric, sum_over = (
    RewardSegTrainer.compute_loss,
    RewardSegTrainer._add_metric,
    RewardSegTrainer._sum_over_processes,
)


def recording_compute_loss(self, model, inputs, *args, **kwargs):
    if model.training and self.args.reward_weight > 0:  # the recipe, not the cross-entropy pretraining or control
        seen.extend(hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in inputs["pixel_values"].float())
    return compute_loss(self, model, inputs, *args, **kwargs)


def recording_add_metric(self, name, total, count):
    if name == "reward":  # before log() sums over processes
        local_rewards.append(float(total / count))
    add_metric(self, name, total, count)


def recording_sum_over(self, counts):
    if counts.dim() == 3:  # the sampled counts (K, C, C), not the logged metrics
        local_counts.append(counts.mean(0).tolist())
    return sum_over(self, counts)


if __name__ == "__main__":  # pytest --doctest-modules imports this file; patch nothing then
    RewardSegTrainer.compute_loss = recording_compute_loss
    RewardSegTrainer._add_metric = recording_add_metric
    RewardSegTrainer._sum_over_processes = recording_sum_over

    prefix, argv = sys.argv[1], sys.argv[2:]
    outcome = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "tune.py"), run_name="tune")["main"](argv)
    trainer = outcome.trainers["recipe"]
    params = b"".join(p.detach().cpu().numpy().tobytes() for p in trainer.model.parameters())
    Path(f"{prefix}{os.environ['RANK']}.json").write_text(
        json.dumps(
            {
                "world_size": trainer.args.world_size,
                "seen": seen,
                "local_rewards": local_rewards,
                "local_counts": local_counts,
                "running_confusion": trainer.reward_state.running.tolist(),
                "params": hashlib.sha1(params).hexdigest(),
                "log_history": trainer.state.log_history,
            }
        )
    )
