"""Reward-tune a SegFormer on its metric, against continued cross-entropy, each raw and calibrated.

    accelerate launch scripts/tune.py                                   # the embedded run (toy streets)
    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml
    accelerate launch scripts/tune.py --config configs/cityscapes_b0.yaml --push_to_hub --hub_model_id me/b0-miou

Without ``--model_name_or_path`` a small SegFormer is built and pretrained by cross-entropy first
(cached in ``<output_dir>/pretrained``). Then, from that start and on the same data:

1. reward tuning for ``max_steps`` (``RewardSegConfig``: by default the local estimator of the
   dataset-scope mIoU), saved to ``--output_dir``;
2. with ``--control`` (default), continued cross-entropy for the same steps, the control;
3. with ``--calibrate`` (default), exact per-class logit offsets fitted on training images for the
   start, the tuned model and the control (:mod:`hf_reward.calibrate`); the saved model is the
   tuned one with its offsets folded into the classifier bias.

Prints one table (validation mIoU of each, raw and calibrated) and where every output went:
the model, ``results.md`` (with per-class IoU), ``results.json``, the model card ``README.md``,
``training.png`` and ``overlays.png``, the checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from hf_reward.app import (
    CITYSCAPES_REPO,
    NAMED_DATASETS,
    DataArguments,
    ModelArguments,
    TuneArguments,
    TuneConfig,
    image_processor,
    load_model,
    load_splits,
    model_classes,
    parse_config,
    pretrained_start,
    run_script,
    segmentation_trainer,
)
from hf_reward.calibrate import collect_logits, fit_offsets, fold_offsets
from hf_reward.data import collate_segmentation
from hf_reward.hub import model_card, per_class_table, push_to_hub, summary_table

ARGUMENTS = (ModelArguments, DataArguments, TuneArguments, TuneConfig)
TUNED, CONTROL, START = "reward tuning", "cross-entropy", "start"


def calibrate(model, data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig, id2label, reward):
    """Fit offsets on the first ``calibration_images`` training images (no augmentation), fold them into ``model``."""
    train, _, _ = load_splits(
        data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=id2label, augment=False
    )
    loader = torch.utils.data.DataLoader(
        train.take(tune_args.calibration_images),
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate_segmentation,
    )
    cache = collect_logits(model, loader, ignore_index=args.ignore_index, progress=not args.disable_tqdm)
    calibration = fit_offsets(cache, reward, ignore_index=args.ignore_index, progress=not args.disable_tqdm)
    fold_offsets(model, calibration, split=f"{data_args.train_split}, first {len(cache)} images")
    return calibration


def main(argv: list[str] | None = None):
    model_args, data_args, tune_args, args = parse_config(ARGUMENTS, argv)
    classes = model_classes(model_args) if data_args.dataset not in NAMED_DATASETS else None
    train, val, id2label = load_splits(data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=classes)
    start_path = model_args.model_name_or_path or pretrained_start(model_args, data_args, tune_args, args)
    start_args = dataclasses.replace(model_args, model_name_or_path=start_path)
    model = load_model(start_args, id2label)
    start_model = copy.deepcopy(model)
    trainer = segmentation_trainer(model, args, train, val, id2label, processing_class=image_processor(data_args))
    reward = trainer.loss_settings.reward
    out = Path(args.output_dir)
    shown = []
    if tune_args.num_overlays and trainer.is_world_process_zero():
        from hf_reward.plots import spread_sample

        shown = spread_sample(val, tune_args.num_overlays)

    results = {START: trainer.evaluate()}
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    results[TUNED] = trainer.evaluate()
    models = {START: start_model, TUNED: model}
    histories = {TUNED: trainer.state.log_history}
    if tune_args.control:
        control_args = dataclasses.replace(
            args,
            reward_weight=0.0,
            ce_weight=1.0,
            lovasz_weight=0.0,
            kl_coef=0.0,
            output_dir=str(out / "control"),
            save_strategy="no",
            push_to_hub=False,
            resume_from_checkpoint=None,
        )
        control_train, _, _ = load_splits(data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=id2label)
        control = segmentation_trainer(load_model(start_args, id2label), control_args, control_train, val, id2label)
        control.train()
        results[CONTROL] = control.evaluate()
        models[CONTROL], histories[CONTROL] = control.model, control.state.log_history

    if shown:
        from hf_reward.plots import predict_masks

        predictions = {name: predict_masks(models[name], shown) for name in (START, TUNED)}
    calibrations = {}
    if tune_args.calibrate:
        for name, calibrated in models.items():
            calibrations[name] = calibrate(calibrated, data_args, tune_args, args, id2label, reward)
            evaluator = segmentation_trainer(
                calibrated, dataclasses.replace(args, push_to_hub=False), None, val, id2label
            )
            results[f"{name}, calibrated"] = evaluator.evaluate()
        if shown:
            predictions.update({f"{name}, calibrated": predict_masks(models[name], shown) for name in (START, TUNED)})
            predictions = {
                name: predictions[name] for name in (START, f"{START}, calibrated", TUNED, f"{TUNED}, calibrated")
            }

    model.config.hf_reward_evaluation = data_args.evaluation_record()  # evaluate_model.py scores it the same way
    trainer.save_model()
    base = (
        model_args.model_name_or_path
        or f"a SegFormer built from config, pretrained by cross-entropy here ({start_path})"
    )
    dataset = data_args.data_path or {"cityscapes": CITYSCAPES_REPO}.get(data_args.dataset, data_args.dataset)
    card = model_card(
        base_model=base,
        dataset=dataset,
        args=args,
        results=results,
        id2label=id2label,
        calibration=model.config.to_dict().get("calibration"),
    )
    if trainer.is_world_process_zero():
        summary = summary_table(results, trainer.state.global_step)
        per_class = per_class_table(results, id2label)
        print(f"\nValidation mIoU (%), from the same start and on the same data:\n\n{summary}\n")
        (out / "results.md").write_text(f"{summary}\n\nPer-class validation IoU (%):\n\n{per_class}\n")
        (out / "results.json").write_text(
            json.dumps(
                {"results": results, "calibration": {k: dataclasses.asdict(v) for k, v in calibrations.items()}},
                indent=2,
                default=lambda value: value.tolist(),
            )
        )
        (out / "README.md").write_text(card)
        written = [
            ("tuned model" + (" (calibrated)" if calibrations else ""), out / "model.safetensors"),
            ("results, per-class IoU", out / "results.md"),
            ("all metrics", out / "results.json"),
            ("model card", out / "README.md"),
        ]
        if shown:
            from hf_reward.plots import plot_overlays, plot_training

            start_miou = results[START]["eval_mean_iou"]
            levels = {
                name.removesuffix(", calibrated"): r["eval_mean_iou"]
                for name, r in results.items()
                if name.endswith("calibrated")
            }
            plot_training(histories, out / "training.png", start=start_miou, calibrated=levels)
            plot_overlays(shown, predictions, id2label, out / "overlays.png", ignore_index=args.ignore_index)
            written += [("curves", out / "training.png"), ("predictions", out / "overlays.png")]
        checkpoints = sorted(out.glob("checkpoint-*"))
        if checkpoints:
            written.append(("checkpoints", ", ".join(str(c) for c in checkpoints)))
        print("Wrote:\n" + "\n".join(f"  {what:<24} {where}" for what, where in written))
    if args.push_to_hub:
        push_to_hub(trainer, card)
    return trainer


if __name__ == "__main__":
    run_script(main)
