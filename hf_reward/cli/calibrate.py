"""Calibrate any SegFormer: exact per-class logit offsets that maximise a dataset-level metric, no training.

    python scripts/calibrate.py --model_name_or_path outputs/camvid_pretrain --dataset camvid --eval_size 180 240 \
        --output_dir outputs/camvid_calibrated
    python scripts/calibrate.py --config configs/calibrate_camvid.yaml
    python scripts/calibrate.py --model_name_or_path <Hub id> --dataset cityscapes --max_calibration_images 500 \
        --cache_dir /scratch --push_to_hub --hub_model_id <user>/<name>-calibrated

The offsets are fitted on ``--calibration_split`` (the training split by default: offsets fitted
on the split you report are tuned to its own labels, and its score is then optimistic) with the
images as evaluation sees them (no augmentation), then folded into ``decode_head.classifier.bias``:
the result is a plain ``SegformerForSemanticSegmentation`` that ``from_pretrained`` loads with no
project code, its ``config.json`` recording the offsets, the split and the metric before and
after. Prints a per-class table of the evaluation split before and after; with
``--push_to_hub`` pushes the model with a card. See :mod:`hf_reward.calibrate` for the algorithm.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.calibrate import DEFAULT_PIXELS_PER_IMAGE, EXACT_MAX_PIXELS
from hf_reward.cli import DataArguments, ModelArguments, UsageError, parse_config
from hf_reward.cli.data import load_data, metric_options
from hf_reward.cli.evaluation import calibrate_model, evaluate
from hf_reward.cli.models import image_processor, load_model, model_classes, pick_device
from hf_reward.hub import calibration_card, per_class_table
from hf_reward.modeling import share_files
from hf_reward.rewards import REWARDS, get_reward


@dataclass
class CalibrateArguments:
    """what to fit the offsets on and for, and where the calibrated model goes"""

    output_dir: str = field(default="outputs/calibrated", metadata={"help": "Where the calibrated model is saved."})
    calibration_split: str = field(default="train", metadata={"help": "Split the offsets are fitted on."})
    max_calibration_images: int | None = field(default=None, metadata={"help": "Fit on its first N images only."})
    reward: str = field(default="miou", metadata={"help": f"Metric to maximise, one of {tuple(REWARDS)}."})
    per_image: bool = field(
        default=False,
        metadata={
            "help": "Maximise the mean over images of each image's reward (with --reward miou_gt: mIoU^I) instead of "
            "the reward of the whole split's confusion matrix."
        },
    )
    reward_beta: float = field(
        default=1.0, metadata={"help": "reward='f_beta': recall weighs beta^2 times precision."}
    )
    reward_class_weights: list[float] | None = field(
        default=None, metadata={"help": "reward 'miou' or 'f_beta': one weight per class (0 drops a class)."}
    )
    step: float = field(default=0.05, metadata={"help": "Grid step of the offsets."})
    max_offset: float = field(default=5.0, metadata={"help": "Offsets are searched in [-max_offset, max_offset]."})
    max_sweeps: int = field(default=5, metadata={"help": "Most sweeps over the classes (it stops when none moves)."})
    pixels_per_image: int | None = field(
        default=None,
        metadata={
            "help": "Fit on a seeded sample of N label pixels per image (0: every pixel). Default: every pixel, "
            f"or {DEFAULT_PIXELS_PER_IMAGE} where the split holds over {EXACT_MAX_PIXELS // 10**6}M label pixels "
            "(Cityscapes val: 1G), which lost at most 0.05 points in docs/benchmarks.md."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Keep the logits in files here instead of RAM (large splits)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per forward pass."})
    ignore_index: int = field(default=255, metadata={"help": "Label value of void pixels."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, ... ; auto picks cuda when available."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the calibrated model and its card to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The Hub repo to push to (<user>/<name>)."})


ARGUMENTS = (ModelArguments, DataArguments, CalibrateArguments)
# Options that do not apply here: a built model's sizes, the training split's augmentation (the offsets are fitted
# on --calibration_split as evaluation sees it).
EXCLUDED = (*ModelArguments.BUILT_MODEL_FIELDS, "train_split", "crop_size", "scale_range", "shuffle_buffer")
# What --help lists first (--help_all: every option).
BRIEF = ("model_name_or_path", "dataset", "data_path", "reward", "per_image", "calibration_split", "output_dir")


def main(argv: list[str] | None = None):
    model_args, data_args, args = parse_config(
        ARGUMENTS, argv, description=__doc__.split("\n\n")[0], exclude=EXCLUDED, brief=BRIEF
    )
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required: a local directory or a Hub repo id")
    if args.pixels_per_image is not None and args.pixels_per_image < 0:
        raise UsageError(f"--pixels_per_image {args.pixels_per_image}: give N >= 1, or 0 for every pixel")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id <user>/<name>")
    reward = get_reward(args.reward, beta=args.reward_beta, class_weights=args.reward_class_weights)
    fit_data = dataclasses.replace(data_args, train_split=args.calibration_split)
    splits = load_data(fit_data, ignore_index=args.ignore_index, id2label=model_classes(model_args), augment=False)
    fit_split, id2label = splits.train, splits.id2label
    if args.max_calibration_images is not None:
        fit_split = fit_split.take(args.max_calibration_images)
    device = pick_device(args.device)
    model = load_model(model_args, id2label).to(device)

    scoring = dict(
        batch_size=args.batch_size,
        ignore_index=args.ignore_index,
        reward=reward,
        metric_options=metric_options(data_args),
    )
    before = evaluate(model, splits.eval, id2label, desc=f"{data_args.eval_split}, before", **scoring).compute()
    calibration = calibrate_model(
        model,
        fit_split,
        reward,
        split=args.calibration_split,
        batch_size=args.batch_size,
        ignore_index=args.ignore_index,
        cache_dir=args.cache_dir,
        num_images=args.max_calibration_images,
        per_image=args.per_image,
        step=args.step,
        max_offset=args.max_offset,
        max_sweeps=args.max_sweeps,
        pixels_per_image=args.pixels_per_image,
    )
    after = evaluate(model, splits.eval, id2label, desc=f"{data_args.eval_split}, after", **scoring).compute()

    model.config.hf_reward_evaluation = data_args.settings("eval")  # evaluate_model.py scores it the same way
    out = Path(args.output_dir)
    model.save_pretrained(out)
    image_processor(data_args).save_pretrained(out)
    share_files(out)
    columns = {"uncalibrated": before, "calibrated": after}
    card = calibration_card(
        base_model=model_args.model_name_or_path,
        dataset=data_args.dataset,
        columns=columns,
        id2label=id2label,
        calibration=model.config.calibration,
    )
    (out / "README.md").write_text(card)
    (out / "calibration.json").write_text(json.dumps({"calibration": model.config.calibration, **columns}, indent=2))
    offsets = ", ".join(f"{name} {value:+.2f}" for name, value in model.config.calibration["offsets"].items())
    print(f"\nOffsets ({len(calibration.history)} sweeps): {offsets}")
    print(
        f"\nValidation IoU (%) on {data_args.eval_split}, before and after:\n\n{per_class_table(columns, id2label)}\n"
    )
    key, scope = ("image_reward", "mean over images") if args.per_image else ("reward", "split")
    print(
        f"{args.reward} ({scope}) on {data_args.eval_split}: {100 * before[key]:.1f} -> {100 * after[key]:.1f}. "
        f"Wrote {out} (model, README.md, calibration.json)."
    )
    if args.push_to_hub:
        model.push_to_hub(args.hub_model_id, commit_message="Calibration with hf-reward")
        image_processor(data_args).push_to_hub(args.hub_model_id)
        from huggingface_hub import upload_file

        upload_file(path_or_fileobj=str(out / "README.md"), path_in_repo="README.md", repo_id=args.hub_model_id)
    return model, columns
