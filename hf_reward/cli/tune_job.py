"""The job of ``hf-reward tune`` (:mod:`hf_reward.cli.tune` parses its arguments): decode the start, train the
candidates where asked, choose on dev, ship the winner with its decoder, and write what it did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..calibrate import fold_offsets
from ..data.cityscapes import HUB_REPO as CITYSCAPES_REPO
from ..decoders import record_decoder, recorded_decoder, score_decoders, segment
from ..hub import decision_card, decision_table, describe_recipe, push_to_hub
from ..recipes import MetricPlan
from ..rewards import get_reward
from ..selection import Decision, choose
from ..trainer import RewardSegTrainer
from .arguments import DataArguments, ModelArguments, UsageError, set_resume_hint
from .data import DATASETS, check_data_source, load_data, metric_options
from .evaluation import evaluate
from .models import image_processor, load_model, model_classes, model_config
from .runs import PretrainConfig, TuneConfig, prepare_output_dir, pretrain, segmentation_trainer
from .tune import TuneArguments

START, RECIPE, CONTROL = "start", "recipe", "cross-entropy"


@dataclass
class Outcome:
    """What a run of :func:`main` chose and shipped, and the trainers of the models it trained (by candidate)."""

    decision: Decision
    model: PreTrainedModel  # the winner, its decoder folded in and recorded
    trainers: dict[str, RewardSegTrainer]  # RECIPE, CONTROL; empty without tuning


def pretrained_start(
    model_args: ModelArguments, data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig
) -> str:
    """``<output_dir>/pretrained``: the built model trained by cross-entropy (not on dev), or reused from an earlier
    run."""
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
        splits = load_splits(data_args, tune_args, args)
        return load_model(model_args, splits.id2label, seed=args.seed), splits.train, None, splits.id2label

    settings = {"model": dataclasses.asdict(model_args), "data": data_args.settings("train"), "dev": dev_of(tune_args)}
    return str(pretrain(config, settings, make))


def dev_of(tune_args: TuneArguments) -> dict:
    """What decides the dev split (and so what training leaves out)."""
    if tune_args.dev_split:
        return {"dev_split": tune_args.dev_split}
    return {"dev_fraction": tune_args.dev_fraction}


def load_splits(data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig, id2label=None, **kwargs):
    """:func:`load_data` with this run's dev split held out of training."""
    return load_data(
        data_args,
        seed=args.seed,
        ignore_index=args.ignore_index,
        id2label=id2label,
        dev_fraction=None if tune_args.dev_split else tune_args.dev_fraction,
        dev_split=tune_args.dev_split,
        **kwargs,
    )


def run_metric_options(data_args: DataArguments, args: TuneConfig, key: str) -> dict:
    """The data's metric options, with the boundary tolerance the metric names and the recipe's thing classes."""
    options = metric_options(data_args)
    tolerance = key.removeprefix("boundary_f_")
    if key.startswith("boundary_f_") and tolerance not in options["boundary_tolerances"]:
        options["boundary_tolerances"] = [*options["boundary_tolerances"], tolerance]
    if args.reward == "object_f1" and args.reward_thing_classes:
        options["thing_classes"] = args.reward_thing_classes
    return options


def train_candidates(start_args, data_args, tune_args, args: TuneConfig, splits, options, resume):
    """The recipe (into ``output_dir``, with checkpoints) and continued cross-entropy, the control (nothing saved),
    each from the start for ``max_steps`` on the training split without dev: the trainers by name."""
    id2label, trainers = splits.id2label, {}
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
    for name, run_args, train in (
        (RECIPE, args, splits.train),
        # The control reads a stream of its own: the same images, shuffled and augmented alike.
        (CONTROL, control_args, load_splits(data_args, tune_args, args, id2label, roles=("train",)).train),
    ):
        trainer = segmentation_trainer(
            load_model(start_args, id2label), run_args, train, splits.eval, id2label, options
        )
        trainer.train(resume_from_checkpoint=resume if run_args is args else None)
        trainers[name] = trainer
    with contextlib.suppress(OSError):  # Trainer made the directory; nothing of the control is saved in it
        Path(control_args.output_dir).rmdir()
    return trainers


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


def run(
    model_args: ModelArguments, data_args: DataArguments, tune_args: TuneArguments, args: TuneConfig, plan: MetricPlan
) -> Outcome:
    """The job of :func:`hf_reward.cli.tune.main` on parsed arguments and the metric's plan."""
    tune = not plan.decode_only if tune_args.tune is None else tune_args.tune
    settings = {
        "model": dataclasses.asdict(model_args),
        "data": data_args.settings("train"),
        "tune": {**dataclasses.asdict(tune_args), "tune": tune},
    }
    check_request(model_args, data_args, args)  # before anything is written, loaded or trained
    resume = prepare_output_dir(args, settings)
    set_resume_hint(
        f"the same command resumes from the latest checkpoint-* in {args.output_dir} (saved every {args.save_steps:g} "
        "steps; --overwrite_output_dir true starts afresh)"
    )
    classes = model_classes(model_args) if data_args.dataset not in DATASETS else None
    splits = load_splits(data_args, tune_args, args, classes, roles=("train", "dev", "eval"))
    if tune_args.max_dev_samples is not None:
        splits.dev = splits.dev.take(tune_args.max_dev_samples)
    id2label = splits.id2label
    options = run_metric_options(data_args, args, plan.key)
    start_path = model_args.model_name_or_path or pretrained_start(model_args, data_args, tune_args, args)
    start_args = dataclasses.replace(model_args, model_name_or_path=start_path)
    fit = load_splits(data_args, tune_args, args, id2label, augment=False, roles=("train",)).train
    reward = get_reward(plan.offsets_reward)

    def decoded(name, model):
        print(f"Decoding {name} on dev and {data_args.eval_split}: {', '.join(plan.decoders)} ...", flush=True)
        return score_decoders(
            model,
            fit.take(tune_args.fit_images),
            {"dev": splits.dev, "validation": splits.eval},
            plan.decoders,
            reward,
            id2label,
            batch_size=args.per_device_eval_batch_size,
            ignore_index=args.ignore_index,
            image_records=True,
            progress=not args.disable_tqdm,
            pixels_per_image=tune_args.pixels_per_image,
            **options,
        )

    models, histories, trainers = {START: load_model(start_args, id2label)}, {}, {}
    scores = {START: decoded(START, models[START])}  # first: a dev split with no image stops the run before training
    if not len(scores[START]["images"]["dev"]["argmax"]["counted"]):
        where = (
            f"--dev_split {tune_args.dev_split}" if tune_args.dev_split else f"--dev_fraction {tune_args.dev_fraction}"
        )
        raise UsageError(
            f"{where}: the dev split holds no image (the held-out share is taken in blocks of 16 training images): "
            "give a larger --dev_fraction, or a split of the dataset as --dev_split"
        )
    if tune:
        trainers = train_candidates(start_args, data_args, tune_args, args, splits, options, resume)
        for name, trainer in trainers.items():
            models[f"{name}, {trainer.state.global_step} steps"] = trainer.model
            histories[f"{name}, {trainer.state.global_step} steps"] = trainer.state.log_history
            scores[f"{name}, {trainer.state.global_step} steps"] = decoded(name, trainer.model)
    decision = choose(
        {name: s["images"]["dev"] for name, s in scores.items()},
        plan.key,
        reward=reward if plan.key == "reward" else None,
        seed=args.seed,
    )
    validation = {name: s["validation"] for name, s in scores.items()}
    table = decision_table(decision, validation, plan.label)
    shown, start_masks = [], None
    if tune_args.num_overlays and args.process_index == 0:
        from ..plots import predict_masks, spread_sample

        shown = spread_sample(splits.eval, tune_args.num_overlays)
        start_masks = predict_masks(models[START], shown)
    shipped = ship(models, decision, scores, data_args, tune_args)
    base = (
        model_args.model_name_or_path
        or f"a SegFormer built from config, pretrained by cross-entropy here ({start_path})"
    )
    dataset = data_args.data_path or {"cityscapes": CITYSCAPES_REPO}.get(data_args.dataset, data_args.dataset)
    # Scored again as evaluate_model.py and segment() see it: in fp32 (the candidates' table decodes fp16 logits).
    shipped_scores = evaluate(
        shipped,
        splits.eval,
        id2label,
        batch_size=args.per_device_eval_batch_size,
        ignore_index=args.ignore_index,
        metric_options=options,
        decoder=recorded_decoder(shipped.config),
        desc="shipped model",
        progress=not args.disable_tqdm,
    ).compute()
    recipe = f"{RECIPE}: {describe_recipe(args)}, learning rate {args.learning_rate:g}" if tune else ""
    card = decision_card(
        base_model=base,
        dataset=dataset,
        plan=plan,
        table=table,
        decision=decision,
        validation=shipped_scores,
        id2label=id2label,
        location=args.hub_model_id if args.push_to_hub and args.hub_model_id else args.output_dir,
        candidates=recipe,
    )
    saver_args = dataclasses.replace(args, eval_strategy="no", resume_from_checkpoint=None)
    saver = segmentation_trainer(
        shipped, saver_args, None, None, id2label, processing_class=image_processor(data_args)
    )
    if args.process_index == 0:
        saver.save_model()
        out = Path(args.output_dir)
        table += f"\n\n{recipe}" if recipe else ""
        written = write_outputs(out, plan, table, decision, scores, shipped_scores, card)
        if shown:
            written += _plot(out, shown, start_masks, shipped, decision, histories, validation, plan, id2label, args)
        checkpoints = sorted(out.glob("checkpoint-*"))
        if checkpoints:
            written.append(("checkpoints", ", ".join(str(c) for c in checkpoints)))
        print("Wrote:\n" + "\n".join(f"  {what:<24} {where}" for what, where in written))
    if args.push_to_hub:
        push_to_hub(saver, card)
    return Outcome(decision, shipped, trainers)


def ship(models: dict, decision, scores: dict, data_args: DataArguments, tune_args: TuneArguments):
    """The winner, its decoder folded into it (offsets into the bias) and recorded in its config."""
    name, decoder = decision.winner
    model = models[name]
    if decoder in ("offsets", "image_offsets"):
        fitted = torch.tensor(scores[name]["fitted"][decoder])
        fold_offsets(
            model, fitted, split=f"{data_args.train_split}, first {tune_args.fit_images} images", method=decoder
        )
    record_decoder(model, decoder)
    model.config.hf_reward_evaluation = data_args.settings("eval")  # evaluate_model.py scores it the same way
    return model


def write_outputs(out: Path, plan, table: str, decision, scores: dict, shipped: dict, card: str) -> list:
    """The table and the decision on stdout; ``results.md``, ``results.json`` and the card in ``out``."""
    text = f"{plan.label} (%) of every candidate, on dev (where it is chosen) and validation:\n\n{table}\n\n" + (
        f"{decision.reason()}\nEvidence for {plan.name} (hf_reward.recipes): {plan.evidence}"
    )
    print(f"\n{text}\n")
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "metric": plan.key,
                "winner": list(decision.winner),
                "decoders": decision.decoders,
                "dev_gains": decision.gains,
                "shipped": shipped,
                "candidates": {name: {k: v for k, v in s.items() if k != "images"} for name, s in scores.items()},
            },
            indent=2,
        )
    )
    (out / "README.md").write_text(card)
    name, decoder = decision.winner
    return [
        (f"model ({name} + {decoder})", out / "model.safetensors"),
        ("every candidate", out / "results.md"),
        ("all metrics", out / "results.json"),
        ("model card", out / "README.md"),
    ]


def _plot(out: Path, shown, start_masks, shipped, decision, histories, validation, plan, id2label, args) -> list:
    from ..plots import plot_candidates, plot_overlays

    written = []
    scores = {name: {d: metrics[plan.key] for d, metrics in decoded.items()} for name, decoded in validation.items()}
    plot_candidates(histories, scores, decision, out / "candidates.png", metric=plan.key, label=plan.label)
    written.append(("candidates and curves", out / "candidates.png"))
    masks = torch.cat([segment(shipped, e["pixel_values"][None], tuple(e["labels"].shape[-2:])) for e in shown]).cpu()
    name, decoder = decision.winner
    predictions = {"start, argmax": start_masks, f"shipped: {name} + {decoder}": masks}
    plot_overlays(shown, predictions, id2label, out / "overlays.png", ignore_index=args.ignore_index)
    return written + [("predictions", out / "overlays.png")]
