"""The stages the scripts chain: maximum-likelihood pretraining (cached), evaluation, predictions.

Example::

    >>> trainer = mle_trainer(model, PretrainConfig(output_dir="out", max_steps=100), train, val, id2label)
    >>> trainer.train(); trainer.evaluate()["eval_mean_iou"]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch
from transformers import Trainer, TrainingArguments

from .cli import DataArguments, ModelArguments, PretrainConfig, TuneArguments, load_model, load_splits
from .config import RewardSegConfig
from .data import collate_segmentation
from .metrics import StreamingMeanIoU, upsample_logits
from .modeling import load_checkpoint_weights

# Data settings that change what pretraining sees; the eval ones do not.
_TRAIN_DATA_FIELDS = ("dataset", "data_path", "train_split", "crop_size", "scale_range", "shuffle_buffer", "toy_size",
                      "toy_train_images")


class MLETrainer(Trainer):
    """``Trainer`` whose resume loads SegFormer checkpoints correctly (see :func:`load_checkpoint_weights`)."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


def mle_trainer(model, args: TrainingArguments, train, val, id2label: dict[int, str], ignore_index: int = 255,
                processing_class=None) -> Trainer:
    """A plain ``Trainer`` on SegFormer's own loss: pixel cross-entropy on logits upsampled to the labels."""
    model.config.semantic_loss_ignore_index = ignore_index
    return MLETrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate_segmentation,
        compute_metrics=StreamingMeanIoU(len(id2label), id2label, ignore_index),
        processing_class=processing_class,
    )


def pretrained_start(
    model_args: ModelArguments, data_args: DataArguments, tune_args: TuneArguments, args: RewardSegConfig
) -> str:
    """Directory of the maximum-likelihood model that a run without ``model_name_or_path`` tunes.

    ``<output_dir>/pretrained`` is reused when it was trained with the same model, data and
    pretraining settings (recorded in ``pretrain_settings.json``); otherwise it is trained now.
    """
    directory = Path(args.output_dir) / "pretrained"
    config = PretrainConfig(
        output_dir=str(directory),
        max_steps=tune_args.pretrain_steps,
        learning_rate=tune_args.pretrain_learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        seed=args.seed,
        use_cpu=args.use_cpu,
        bf16=args.bf16,
        disable_tqdm=args.disable_tqdm,
        dataloader_num_workers=args.dataloader_num_workers,
        logging_steps=max(tune_args.pretrain_steps // 10, 1),
    )
    settings = {
        "model": dataclasses.asdict(model_args),
        "data": {name: getattr(data_args, name) for name in _TRAIN_DATA_FIELDS},
        "pretrain": {"max_steps": config.max_steps, "learning_rate": config.learning_rate, "seed": config.seed,
                     "per_device_train_batch_size": config.per_device_train_batch_size, "bf16": config.bf16,
                     "ignore_index": args.ignore_index},
    }
    settings = json.loads(json.dumps(settings))
    marker = directory / "pretrain_settings.json"
    say = print if args.process_index == 0 else (lambda *_: None)
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        say(f"Reusing the pretrained model in {directory} (same settings).")
        return str(directory)

    say(f"Maximum-likelihood pretraining for {config.max_steps} steps, saved to {directory}.")
    # A stream of its own: reading the tuning stream would advance its shuffle and augmentation, and
    # tuning after a fresh pretraining would then differ from tuning from the cached model.
    train, _, id2label = load_splits(data_args, seed=args.seed, ignore_index=args.ignore_index)
    model = load_model(model_args, id2label, seed=args.seed)
    trainer = mle_trainer(model, config, train, None, id2label, args.ignore_index)
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        marker.write_text(json.dumps(settings, indent=2))
    trainer.accelerator.wait_for_everyone()  # every process loads the saved model next
    return str(directory)


@torch.no_grad()
def predict_masks(model, examples: Sequence[dict]) -> torch.Tensor:
    """Argmax masks ``(N, H, W)`` at the label size of ``examples`` (dicts of ``pixel_values``, ``labels``)."""
    batch = collate_segmentation(examples)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float()
    model.train(was_training)
    return upsample_logits(logits, tuple(batch["labels"].shape[-2:])).argmax(1).cpu()
