"""Does reward tuning beat continued cross-entropy on CamVid? A cached, resumable study.

    python scripts/study.py --config configs/study_camvid.yaml                  # every arm, every seed
    python scripts/study.py --config configs/study_camvid.yaml --arms ce,local_dataset_t05 --seeds 0

Stages, each cached under ``output_dir`` so that a rerun only computes what is missing:

1. data: CamVid train / validation (``data_root``) resized to ``size`` (image bilinear, labels
   nearest), held in memory as uint8; training adds a random horizontal flip.
2. pretrain: a SegFormer from random init, trained by its own pixel cross-entropy to
   convergence (warmup + cosine to 0). Saved as safetensors in ``pretrain/``.
3. arms: every arm x seed starts from that checkpoint and runs ``tune.max_steps`` AdamW steps at a
   constant learning rate, evaluating dataset-level validation mIoU every ``tune.eval_steps``.
   The arm ``mle: true`` is the control (continued cross-entropy through the model's own loss);
   every other arm is a :class:`hf_reward.RewardSegConfig` with the arm's fields.
   ``train_only: <prefix>`` freezes every parameter whose name does not start with it
   (``decode_head`` trains the decoder alone); ``control: <arm>`` pairs the arm with another
   control than the config's (e.g. cross-entropy at the same learning rate).
   One JSON per run in ``runs/``: final metrics, eval curve, training log, seconds per step.
4. report: ``results.md``, one row per arm: validation mIoU per seed, mean and sd, and the
   paired difference to the control arm (same seed) with its sd; ``curves.png``, validation
   mIoU and training reward against steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer, TrainingArguments

from hf_reward import RewardSegConfig, RewardSegTrainer
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hf_reward.metrics import StreamingMeanIoU


class InMemorySegmentation(torch.utils.data.Dataset):
    """uint8 images ``(N, 3, H, W)`` and labels ``(N, H, W)``, normalised on access, optional flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flip: bool):
        self.images, self.labels, self.flip = images, labels, flip
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image, labels = self.images[i].float() / 255, self.labels[i].long()
        if self.flip and torch.rand(()) < 0.5:
            image, labels = image.flip(-1), labels.flip(-1)
        return {"pixel_values": (image - self.mean) / self.std, "labels": labels}


def load_data(cfg: dict, out: Path) -> tuple[dict[str, InMemorySegmentation], dict[int, str]]:
    cache = out / "data.safetensors"
    if not cache.exists():
        tensors = {}
        for split in ("train", "validation"):
            ds, id2label = load_camvid(split, root=cfg["data_root"], streaming=False,
                                       transform=eval_transform(tuple(cfg["size"]), mean=(0, 0, 0), std=(1, 1, 1)))
            examples = [ex for ex in ds]
            tensors[f"{split}_images"] = torch.stack([(ex["pixel_values"] * 255).round().to(torch.uint8) for ex in examples])
            tensors[f"{split}_labels"] = torch.stack([ex["labels"].to(torch.uint8) for ex in examples])
        save_file(tensors, cache, metadata={"id2label": json.dumps(id2label)})
    with safe_open(cache, "pt") as f:
        id2label = {int(k): v for k, v in json.loads(f.metadata()["id2label"]).items()}
        t = {name: f.get_tensor(name) for name in f.keys()}
    data = {
        "train": InMemorySegmentation(t["train_images"], t["train_labels"], flip=True),
        "validation": InMemorySegmentation(t["validation_images"], t["validation_labels"], flip=False),
    }
    return data, id2label


def common_args(out: Path, seed: int, batch_size: int, max_steps: int, **kwargs) -> dict:
    return dict(output_dir=str(out), seed=seed, per_device_train_batch_size=batch_size, per_device_eval_batch_size=16,
                max_steps=max_steps, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                dataloader_num_workers=0, logging_steps=10, batch_eval_metrics=True, eval_strategy="steps",
                disable_tqdm=False, **kwargs)


def pretrain(cfg: dict, data, id2label, out: Path) -> Path:
    path = out / "pretrain"
    if (path / "model.safetensors").exists():
        return path
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}, **cfg["model"]))
    p = cfg["pretrain"]
    args = TrainingArguments(**common_args(path, 0, p["batch_size"], p["max_steps"], learning_rate=p["learning_rate"],
                                           lr_scheduler_type="cosine", warmup_steps=p["warmup_steps"],
                                           weight_decay=0.01, eval_steps=p["max_steps"]))
    metric = StreamingMeanIoU(len(id2label), id2label)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collate_segmentation, compute_metrics=metric)
    trainer.train()
    trainer.save_model(str(path))
    (path / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return path


def run_arm(cfg: dict, name: str, seed: int, data, id2label, checkpoint: Path, out: Path) -> dict:
    result_path = out / "runs" / f"{name}_seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    arm = dict(cfg["arms"][name])
    mle = arm.pop("mle", False)
    train_only = arm.pop("train_only", "")
    arm.pop("control", None)
    t = cfg["tune"]
    kwargs = common_args(out / "tmp", seed, t["batch_size"], t["max_steps"], eval_steps=t["eval_steps"],
                         weight_decay=t["weight_decay"], lr_scheduler_type="constant", **arm)
    model = SegformerForSemanticSegmentation.from_pretrained(checkpoint, use_safetensors=True)
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.startswith(train_only))
    metric = StreamingMeanIoU(len(id2label), id2label)
    common = dict(model=model, train_dataset=data["train"], eval_dataset=data["validation"],
                  data_collator=collate_segmentation, compute_metrics=metric)
    if mle:
        trainer = Trainer(args=TrainingArguments(**kwargs), **common)
    else:
        trainer = RewardSegTrainer(args=RewardSegConfig(**kwargs), **common)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    evals = [e for e in history if "eval_mean_iou" in e]
    result = {
        "arm": name, "seed": seed, "settings": cfg["arms"][name],
        "final": {k: v for k, v in evals[-1].items() if k.startswith("eval_")},
        "eval_curve": [(e["step"], e["eval_mean_iou"]) for e in evals],
        "train_logs": [e for e in history if "loss" in e and "eval_loss" not in e],
        "seconds_per_step": seconds / t["max_steps"],
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def report(cfg: dict, results: dict[str, dict[int, dict]], start_miou: float, out: Path) -> str:
    lines = [
        f"Starting checkpoint: validation mIoU {start_miou:.4f}. {cfg['tune']['max_steps']} steps per arm, "
        f"batch {cfg['tune']['batch_size']}, AdamW, constant lr.",
        "",
        "| arm | settings | val mIoU per seed | mean ± sd | Δ vs control (paired) | s/step | optimised reward, first → last 50 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        seeds = sorted(runs)
        mious = [runs[s]["final"]["eval_mean_iou"] for s in seeds]
        sd = statistics.stdev(mious) if len(mious) > 1 else float("nan")
        control = cfg["arms"][name].get("control", cfg["control"])
        paired = [runs[s]["final"]["eval_mean_iou"] - results[control][s]["final"]["eval_mean_iou"]
                  for s in seeds if name != control and s in results.get(control, {})]
        delta = (f"{100 * statistics.mean(paired):+.2f} ± {100 * statistics.stdev(paired):.2f} pts"
                 if len(paired) > 1 else (f"{100 * paired[0]:+.2f} pts" if paired else "—"))
        key = "scope_reward" if "scope_reward" in runs[seeds[0]]["train_logs"][0] else "reward"
        rewards = [[e[key] for e in runs[s]["train_logs"] if key in e] for s in seeds]
        trend = (f"{statistics.mean(statistics.mean(r[:5]) for r in rewards):.3f} → "
                 f"{statistics.mean(statistics.mean(r[-5:]) for r in rewards):.3f}" if rewards[0] else "—")
        settings = ", ".join(f"{k}={v}" for k, v in cfg["arms"][name].items())
        step = statistics.mean(runs[s]["seconds_per_step"] for s in seeds)
        lines.append(f"| {name} | {settings} | {' / '.join(f'{m:.4f}' for m in mious)} | "
                     f"{statistics.mean(mious):.4f} ± {sd:.4f} | {delta} | {step:.2f} | {trend} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def plot_curves(results: dict[str, dict[int, dict]], start_miou: float, path: Path) -> None:
    """Validation mIoU against steps (mean over seeds, shaded min-max) and the training reward per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_reward) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        curves = torch.tensor([[start_miou] + [m for _, m in runs[s]["eval_curve"]] for s in sorted(runs)])
        steps = [0] + [step for step, _ in next(iter(runs.values()))["eval_curve"]]
        line = ax_eval.plot(steps, curves.mean(0), marker="o", label=f"{name} ({len(runs)} seeds)")[0]
        ax_eval.fill_between(steps, curves.min(0).values, curves.max(0).values, color=line.get_color(), alpha=0.15)
        key = "scope_reward" if "scope_reward" in next(iter(runs.values()))["train_logs"][0] else "reward"
        logs = [[(e["step"], e[key]) for e in runs[s]["train_logs"] if key in e] for s in sorted(runs)]
        if logs[0]:
            values = torch.tensor([[v for _, v in log] for log in logs]).mean(0)
            ax_reward.plot([step for step, _ in logs[0]], values, color=line.get_color(), label=f"{name}: {key}")
    ax_eval.set(xlabel="tuning step", ylabel="validation mIoU (dataset-level)", title="CamVid validation")
    ax_reward.set(xlabel="tuning step", ylabel="training reward (mean over seeds)", title="Reward being optimised")
    ax_eval.legend(fontsize=7)
    ax_reward.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/study_camvid.yaml")
    parser.add_argument("--arms", help="comma-separated subset of the config's arms")
    parser.add_argument("--seeds", help="comma-separated subset of the config's seeds")
    cli = parser.parse_args()
    cfg = yaml.safe_load(Path(cli.config).read_text())
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    data, id2label = load_data(cfg, out)
    checkpoint = pretrain(cfg, data, id2label, out)
    start = json.loads((checkpoint / "log_history.json").read_text())
    start_miou = [e for e in start if "eval_mean_iou" in e][-1]["eval_mean_iou"]
    arms = cli.arms.split(",") if cli.arms else list(cfg["arms"])
    seeds = [int(s) for s in cli.seeds.split(",")] if cli.seeds else cfg["seeds"]
    results = {name: {seed: run_arm(cfg, name, seed, data, id2label, checkpoint, out) for seed in seeds} for name in arms}
    controls = [c for c in dict.fromkeys([cfg["control"], *(cfg["arms"][a].get("control") for a in arms)]) if c]
    for control in reversed(controls):  # the paired comparisons need the controls' cached runs
        if control not in results:
            results = {control: {s: run_arm(cfg, control, s, data, id2label, checkpoint, out) for s in seeds}, **results}
    print(report(cfg, results, start_miou, out))
    plot_curves(results, start_miou, out / "curves.png")


if __name__ == "__main__":
    main()
