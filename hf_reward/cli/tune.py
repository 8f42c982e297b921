"""Reward-tune a SegFormer on its metric, against continued cross-entropy, each raw and calibrated.

    accelerate launch scripts/tune.py                                   # the embedded run (toy streets)
    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml
    accelerate launch scripts/tune.py --config configs/cityscapes_b0.yaml --push_to_hub --hub_model_id me/b0-miou

Without ``--model_name_or_path`` a small SegFormer is built and pretrained by cross-entropy first
(cached in ``<output_dir>/pretrained``). Then, from that start and on the same data:

1. reward tuning for ``max_steps`` (``RewardSegConfig``: by default the local estimator of the
   dataset-scope mIoU plus cross-entropy), saved to ``--output_dir``;
2. with ``--control`` (default), continued cross-entropy for the same steps, the control;
3. with ``--calibrate`` (default), exact per-class logit offsets fitted on training images for the
   start, the tuned model and the control (:mod:`hf_reward.calibrate`); the saved model is the
   tuned one with its offsets folded into the classifier bias.

Prints one table (validation mIoU of each, raw and calibrated) and where every output went:
the model, ``results.md`` (with per-class IoU), ``results.json``, the model card ``README.md``,
``training.png`` and ``overlays.png``, the checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.cli import DataArguments, ModelArguments, UsageError, parse_config, run_script, set_resume_hint
from hf_reward.cli.data import DATASETS, check_data_source, load_data, metric_options
from hf_reward.cli.evaluation import calibrate_model
from hf_reward.cli.models import image_processor, load_model, model_classes, model_config
from hf_reward.cli.runs import (
    PretrainConfig,
    TuneConfig,
    prepare_output_dir,
    pretrain,
    segmentation_trainer,
    unprefixed,
)
from hf_reward.data.cityscapes import HUB_REPO as CITYSCAPES_REPO
from hf_reward.hub import ModelScores, model_card, per_class_table, push_to_hub, score_columns, summary_table

TUNED, CONTROL, START = "reward tuning", "cross-entropy", "start"


@dataclass
class TuneArguments:
    """what scripts/tune.py does around tuning: pretraining a built model, controls, calibration, plots"""

    pretrain_steps: int = field(
        default=600,
        metadata={
            "help": "Without model_name_or_path: steps of cross-entropy pretraining of the built model, cached in "
            "<output_dir>/pretrained and reused while its settings stay the same."
        },
    )
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of that pretraining."})
    control: bool = field(
        default=True,
        metadata={"help": "Also run continued cross-entropy for the same steps from the same start, as the control."},
    )
    calibrate: bool = field(
        default=True,
        metadata={
            "help": "Fit exact per-class logit offsets on the training split for the start, the tuned model "
            "and the control, and report each calibrated; the saved model is the tuned one, calibrated."
        },
    )
    calibration_images: int = field(
        default=256, metadata={"help": "Training images the offsets are fitted on (streamed, without augmentation)."}
    )
    num_overlays: int = field(default=4, metadata={"help": "Evaluation images drawn in the overlays (0: no plots)."})


ARGUMENTS = (ModelArguments, DataArguments, TuneArguments, TuneConfig)


def pretrained_start(
    model_args: ModelArguments, data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig
) -> str:
    """``<output_dir>/pretrained``: the built model trained by cross-entropy, or reused from an earlier run."""
    inherited = (
        "seed",
        "use_cpu",
        "bf16",
        "disable_tqdm",
        "ignore_index",
        "dataloader_num_workers",
        "per_device_train_batch_size",
    )
    config = PretrainConfig(
        output_dir=str(Path(args.output_dir) / "pretrained"),
        max_steps=tune_args.pretrain_steps,
        learning_rate=tune_args.pretrain_learning_rate,
        logging_steps=max(tune_args.pretrain_steps // 10, 1),
        **{name: getattr(args, name) for name in inherited},
    )

    def make():
        # A stream of its own: reading the tuning stream would advance its shuffle and augmentation, and
        # tuning after a fresh pretraining would then differ from tuning from the cached model.
        splits = load_data(data_args, seed=args.seed, ignore_index=args.ignore_index)
        return load_model(model_args, splits.id2label, seed=args.seed), splits.train, None, splits.id2label

    settings = {"model": dataclasses.asdict(model_args), "data": data_args.settings("train")}
    return str(pretrain(config, settings, make))


def headline(args: TuneConfig) -> tuple[str, str]:
    """The metric the run tunes, as its summary reports it: ``(metrics key, label)``."""
    if args.reward == "boundary_f":
        return f"boundary_f_{args.boundary_tolerance}", f"boundary F ({args.boundary_tolerance})"
    if args.reward == "object_f1":
        return "object_f1", "object F1"
    if args.reward_scope == "image":
        return "image_reward", "mIoU^I" if args.reward == "miou_gt" else f"mean per-image {args.reward}"
    if args.reward == "miou" and not args.reward_class_weights:
        return "mean_iou", "mIoU"
    return "reward", args.reward


def run_metric_options(data_args: DataArguments, args: TuneConfig) -> dict:
    """The data's metric options, with the tuned reward's own boundary tolerance or thing classes."""
    options = metric_options(data_args)
    if args.reward == "boundary_f" and args.boundary_tolerance not in options["boundary_tolerances"]:
        options["boundary_tolerances"] = [*options["boundary_tolerances"], args.boundary_tolerance]
    if args.reward == "object_f1":
        options["thing_classes"] = args.reward_thing_classes
    return options


def calibrate(model, data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig, id2label):
    """Offsets fitted on the first ``calibration_images`` training images (no augmentation), folded into ``model``:
    for the tuned reward of the counts and its scope (per image, or the whole split), else for mIoU."""
    splits = load_data(data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=id2label, augment=False)
    reward = args.count_reward()
    return calibrate_model(
        model,
        splits.train.take(tune_args.calibration_images),
        reward or "miou",
        per_image=reward is not None and args.reward_scope == "image",
        split=f"{data_args.train_split}, first images",
        num_images=tune_args.calibration_images,
        batch_size=args.per_device_eval_batch_size,
        ignore_index=args.ignore_index,
        progress=not args.disable_tqdm,
    )


def run_control(start_args: ModelArguments, data_args: DataArguments, args: TuneConfig, val, id2label, options):
    """Continued cross-entropy from the same start, on the same data, for the same steps."""
    control_args = dataclasses.replace(
        args,
        reward_weight=0.0,
        ce_weight=1.0,
        lovasz_weight=0.0,
        kl_coef=0.0,
        output_dir=str(Path(args.output_dir) / "control"),
        save_strategy="no",
        push_to_hub=False,
        resume_from_checkpoint=None,
    )
    train = load_data(data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=id2label).train
    model = load_model(start_args, id2label)
    control = segmentation_trainer(model, control_args, train, val, id2label, options)
    control.train()
    with contextlib.suppress(OSError):  # Trainer made the directory; nothing of the control is saved in it
        Path(control_args.output_dir).rmdir()
    return control


def check_request(model_args: ModelArguments, data_args: DataArguments, args: TuneConfig) -> None:
    """Refuse, in one line, what would fail only after data loading or pretraining: a dataset path or model that
    does not exist, an auxiliary reward for a model without an auxiliary head."""
    check_data_source(data_args)
    config = model_config(model_args)  # checks the model's source first
    architecture = config.model_type if config is not None else model_args.architecture
    if args.auxiliary_reward and architecture != "upernet":
        raise UsageError(
            f"--auxiliary_reward true: the model is a {architecture}, which has no auxiliary head (UperNet has: "
            "--architecture upernet)"
        )


def main(argv: list[str] | None = None):
    model_args, data_args, tune_args, args = parse_config(ARGUMENTS, argv, description=__doc__.split("\n\n")[0])
    run = {
        "model": dataclasses.asdict(model_args),
        "data": data_args.settings("train"),
        "tune": dataclasses.asdict(tune_args),
    }
    check_request(model_args, data_args, args)  # before anything is written, loaded or trained
    resume = prepare_output_dir(args, run)
    set_resume_hint(
        f"the same command resumes from the latest checkpoint-* in {args.output_dir} (saved every {args.save_steps:g} "
        "steps; --overwrite_output_dir true starts afresh)"
    )
    classes = model_classes(model_args) if data_args.dataset not in DATASETS else None
    splits = load_data(data_args, seed=args.seed, ignore_index=args.ignore_index, id2label=classes)
    id2label = splits.id2label
    start_path = model_args.model_name_or_path or pretrained_start(model_args, data_args, tune_args, args)
    start_args = dataclasses.replace(model_args, model_name_or_path=start_path)
    model = load_model(start_args, id2label)
    models = {START: copy.deepcopy(model), TUNED: model}
    options, summary_metric = run_metric_options(data_args, args), headline(args)
    trainer = segmentation_trainer(
        model, args, splits.train, splits.eval, id2label, options, processing_class=image_processor(data_args)
    )
    shown = []
    if tune_args.num_overlays and trainer.is_world_process_zero():
        from hf_reward.plots import spread_sample

        shown = spread_sample(splits.eval, tune_args.num_overlays)

    scores = {START: ModelScores(unprefixed(trainer.evaluate()))}
    trainer.train(resume_from_checkpoint=resume)
    scores[TUNED] = ModelScores(unprefixed(trainer.evaluate()), steps=trainer.state.global_step)
    histories = {TUNED: trainer.state.log_history}
    if tune_args.control:
        control = run_control(start_args, data_args, args, splits.eval, id2label, options)
        scores[CONTROL] = ModelScores(unprefixed(control.evaluate()), steps=control.state.global_step)
        models[CONTROL], histories[CONTROL] = control.model, control.state.log_history

    raw_masks = _masks(models, shown)
    calibrated_masks = {}
    if tune_args.calibrate:
        eval_args = dataclasses.replace(args, push_to_hub=False)
        for name, calibrated in models.items():
            scores[name].calibration = calibrate(calibrated, data_args, tune_args, args, id2label)
            evaluator = segmentation_trainer(calibrated, eval_args, None, splits.eval, id2label, options)
            scores[name].calibrated = unprefixed(evaluator.evaluate())
        calibrated_masks = _masks(models, shown)

    model.config.hf_reward_evaluation = data_args.settings("eval")  # evaluate_model.py scores it the same way
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
        scores=scores,
        id2label=id2label,
        calibration=model.config.to_dict().get("calibration"),
        headline=summary_metric,
    )
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        written = write_outputs(out, scores, histories, id2label, card, summary_metric)
        if shown:
            masks = raw_masks, calibrated_masks
            written += _plot(out, shown, scores, histories, *masks, id2label, args, summary_metric[0])
        checkpoints = sorted(Path(args.output_dir).glob("checkpoint-*"))
        if checkpoints:
            written.append(("checkpoints", ", ".join(str(c) for c in checkpoints)))
        print("Wrote:\n" + "\n".join(f"  {what:<24} {where}" for what, where in written))
    if args.push_to_hub:
        push_to_hub(trainer, card)
    return trainer


def _masks(models: dict, shown: list) -> dict:
    """Each model's argmax masks of the overlay examples (none without overlays)."""
    if not shown:
        return {}
    from hf_reward.plots import predict_masks

    return {name: predict_masks(model, shown) for name, model in models.items()}


def write_outputs(
    out: Path, scores: dict[str, ModelScores], histories, id2label, card: str, headline: tuple[str, str]
) -> list:
    """The summary on stdout; ``results.md``, ``results.json`` and the card in ``out``; what was written."""
    (metric, label), per_class = headline, per_class_table(score_columns(scores), id2label)
    summary = summary_table(scores, metric=metric, label=label)
    unconverged = [(n, s.calibration) for n, s in scores.items() if s.calibration and not s.calibration.converged]
    summary += "".join(
        f"\n\nThe calibration of {name} stopped after its {len(c.history)} sweeps with offsets still moving (the "
        f"last sweep gained {100 * (c.history[-1] - ([c.metric_before] + c.history)[-2]):.3f} points on the "
        "calibration images)."
        for name, c in unconverged
    )
    print(f"\nValidation {label} (%), from the same start and on the same data:\n\n{summary}\n")
    (out / "results.md").write_text(f"{summary}\n\nPer-class validation IoU (%):\n\n{per_class}\n")
    (out / "results.json").write_text(
        json.dumps({name: s.to_dict() for name, s in scores.items()}, indent=2, default=lambda v: v.tolist())
    )
    (out / "README.md").write_text(card)
    calibrated = any(s.calibrated is not None for s in scores.values())
    return [
        ("tuned model" + (" (calibrated)" if calibrated else ""), out / "model.safetensors"),
        ("results, per-class IoU", out / "results.md"),
        ("all metrics", out / "results.json"),
        ("model card", out / "README.md"),
    ]


def _plot(out: Path, shown, scores, histories, raw_masks, calibrated_masks, id2label, args, metric: str) -> list:
    from hf_reward.plots import CALIBRATION_CAPTION, plot_overlays, plot_training

    raw = {name: s.raw[metric] for name, s in scores.items()}
    calibrated = {name: s.calibrated[metric] for name, s in scores.items() if s.calibrated is not None}
    plot_training(histories, out / "training.png", start=raw[START], raw=raw, calibrated=calibrated, metric=metric)
    predictions = {}
    for name in raw_masks:
        predictions[name] = raw_masks[name]
        if name in calibrated_masks:
            predictions[f"{name}, calibrated"] = calibrated_masks[name]
    caption = CALIBRATION_CAPTION if calibrated_masks else None
    plot_overlays(shown, predictions, id2label, out / "overlays.png", ignore_index=args.ignore_index, caption=caption)
    return [("curves", out / "training.png"), ("predictions", out / "overlays.png")]


if __name__ == "__main__":
    run_script(main)
