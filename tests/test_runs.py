"""The streaming pipeline through transformers.Trainer: training with max_steps and a shuffle
buffer, then evaluation with batch_eval_metrics and the streaming mIoU."""

import math

import numpy as np
import torch
from conftest import BlobsDataset, tiny_segformer
from transformers import Trainer, TrainingArguments

from hf_reward.data import collate_segmentation, eval_transform, load_toy_streets, train_transform
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import check_id2label


class CountingMetric(StreamingMeanIoU):
    """Records what Trainer passes per call, to check that nothing accumulates but the matrix."""

    calls: list

    def __call__(self, eval_pred, compute_result=False):
        self.calls = getattr(self, "calls", []) + [(tuple(eval_pred.predictions.shape), compute_result)]
        return super().__call__(eval_pred, compute_result)


def test_streaming_train_with_max_steps_and_batch_eval_metrics(tmp_path):
    train, id2label = load_toy_streets(
        "train", num_images=6, size=48, transform=train_transform(32, seed=0), shuffle_buffer=4
    )
    evaluation, _ = load_toy_streets("validation", num_images=5, size=32, transform=eval_transform())
    model = tiny_segformer(id2label=id2label)
    check_id2label(model.config.id2label, id2label)
    metric = CountingMetric(len(id2label), id2label)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        batch_eval_metrics=True,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collate_segmentation,
        compute_metrics=metric,
    )
    trainer.train()
    assert trainer.state.global_step == 4  # 6 images / batch 2 = 3 steps per pass: the stream restarts

    metrics = trainer.evaluate()
    # 5 images in batches of 2: three calls, logits (B, C, h, w), the last asks for the result.
    assert metric.calls == [((2, 9, 8, 8), False), ((2, 9, 8, 8), False), ((1, 9, 8, 8), True)]
    assert metric.confusion is None  # reset for the next evaluation
    assert {"eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_iou_pole", "eval_iou_sign"} <= set(
        metrics
    )
    assert 0 <= metrics["eval_mean_iou"] <= 1 and math.isfinite(metrics["eval_loss"])

    # The same numbers outside Trainer.
    outside = StreamingMeanIoU(len(id2label), id2label)
    model.eval()
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(evaluation, batch_size=2, collate_fn=collate_segmentation):
            outside.update(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    np.testing.assert_allclose(outside.compute()["mean_iou"], metrics["eval_mean_iou"], rtol=1e-6)


def test_pretrain_is_reused_with_the_same_settings_and_retrained_after_any_change(tmp_path):
    from hf_reward.cli.runs import PretrainConfig, pretrain

    made = []

    def make():
        made.append(1)
        return tiny_segformer(), BlobsDataset(n=8), None, {i: f"class{i}" for i in range(4)}

    def args(**changes):
        return PretrainConfig(
            output_dir=str(tmp_path),
            max_steps=1,
            per_device_train_batch_size=4,
            use_cpu=True,
            disable_tqdm=True,
            **changes,
        )

    settings = {"model": "tiny", "data": "blobs"}
    assert pretrain(args(), settings, make) == tmp_path and len(made) == 1
    pretrain(args(logging_steps=5, save_strategy="no"), settings, make)  # where and how loudly: the same run
    assert len(made) == 1
    pretrain(args(learning_rate=1e-4), settings, make)  # another learning rate: trained again
    pretrain(args(learning_rate=1e-4), {**settings, "data": "other"}, make)  # other data: trained again
    assert len(made) == 3
