"""Make a segmentation model better at the metric you report: decode, tune where your dev split shows it pays, ship the
winner with its decoder.

    accelerate launch scripts/tune.py                                    # the embedded demonstration (toy streets)
    accelerate launch scripts/tune.py --config configs/camvid_quick.yaml --metric boundary_f
    accelerate launch scripts/tune.py --model_name_or_path nvidia/segformer-b0-finetuned-cityscapes-512-1024 \
        --dataset cityscapes --metric image_miou --push_to_hub --hub_model_id me/b0-image-miou

``--metric`` names what you report (``miou``, ``image_miou``, ``image_miou_worst10``, ``boundary_f``,
``object_f1``, ``object_recall``, or any reward of the counts); :mod:`hf_reward.recipes` gives its
candidate decoders and tuning recipe. A dev split is held out of the training split (``--dev_split``,
or ``--dev_fraction`` of it in blocks of consecutive images). Without ``--model_name_or_path`` a small
SegFormer is built and pretrained by cross-entropy first (cached in ``<output_dir>/pretrained``). Then:

1. with tuning on (``--tune true``, or the metric's recipe where the evidence says it pays: none does
   today), the recipe (``RewardSegConfig``, the table's fields under your flags) and continued
   cross-entropy, the control, train for ``max_steps`` each from the start;
2. every model (the start, and those) is decoded by each candidate decoder, fitted on the training
   images, and scored on dev and validation for the metric;
3. :func:`hf_reward.selection.choose` picks each model's dev-best decoder and ships a tuned model only
   where its dev gain over the decoded start has a 95% paired bootstrap interval above 0.

The shipped model (offsets folded into its bias, the decoder in ``config.json``, which
``hf_reward.segment`` and ``scripts/evaluate_model.py`` follow) goes to ``--output_dir`` with
``results.md`` (every candidate on dev and validation, the winner marked), ``results.json``, the
model card ``README.md``, ``candidates.png`` (every candidate; the training curves when tuning ran)
and ``overlays.png``.

With no arguments at all, the demonstration: ``--metric image_miou --tune true`` on toy streets, so
that the table shows the recipe and the control beside the decoders.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..recipes import metric_plan
from .arguments import DataArguments, ModelArguments, UsageError, parse_config
from .runs import TuneConfig

# The embedded demonstration (no arguments): tuning on, so that its table shows the recipe and the control.
DEMONSTRATION = ["--tune", "true"]


@dataclass
class TuneArguments:
    """what to optimise, how the winner is chosen, and scripts/tune.py's pretraining and pictures"""

    metric: str = field(
        default="image_miou",
        metadata={
            "help": "The metric you report: miou, image_miou, image_miou_worst10, boundary_f (at "
            "--boundary_tolerance), object_f1, object_recall, or any reward of the counts. Sets the candidate "
            "decoders and the tuning recipe (hf_reward.recipes); flags override the recipe's fields."
        },
    )
    tune: bool | None = field(
        default=None,
        metadata={
            "help": "Train the recipe and the control and let the dev split decide. Default: only where the evidence "
            "says the metric's recipe pays (none does today: decode only, no training)."
        },
    )
    dev_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of the training split held out as dev, in blocks of 16 consecutive images."},
    )
    dev_split: str | None = field(
        default=None, metadata={"help": "A split of the dataset to use as dev instead (nothing is held out of train)."}
    )
    max_dev_samples: int | None = field(
        default=None,
        metadata={"help": "Decide on the first N dev images only (RankSEG costs seconds per large image)."},
    )
    fit_images: int = field(
        default=256,
        metadata={"help": "Training images (no augmentation) each decoder's offsets are fitted on."},
    )
    pixels_per_image: int | None = field(
        default=None,
        metadata={
            "help": "Fit the offsets on a seeded sample of N label pixels per image (0: every pixel). Default: every "
            "pixel, or a sample where the fit split is large (hf_reward.calibrate.default_pixel_sample)."
        },
    )
    pretrain_steps: int = field(
        default=600,
        metadata={
            "help": "Without model_name_or_path: steps of cross-entropy pretraining of the built model, cached in "
            "<output_dir>/pretrained and reused while its settings stay the same."
        },
    )
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of that pretraining."})
    num_overlays: int = field(default=4, metadata={"help": "Evaluation images drawn in the overlays (0: no plots)."})

    def __post_init__(self):
        if not 0 < self.dev_fraction < 1:
            raise UsageError(f"--dev_fraction {self.dev_fraction}: give a share in (0, 1)")
        if self.fit_images < 1:
            raise UsageError(f"--fit_images {self.fit_images}: give at least 1")
        if self.pixels_per_image is not None and self.pixels_per_image < 0:
            raise UsageError(f"--pixels_per_image {self.pixels_per_image}: give N >= 1, or 0 for every pixel")


ARGUMENTS = (ModelArguments, DataArguments, TuneArguments, TuneConfig)
# What --help lists first (--help_all: every option).
BRIEF = (
    "model_name_or_path",
    "dataset",
    "data_path",
    "metric",
    "tune",
    "dev_fraction",
    "dev_split",
    "output_dir",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "seed",
    "push_to_hub",
    "hub_model_id",
    "threads",
)


def parse(argv: list[str] | None):
    """The arguments, with the metric's recipe as the defaults of the tuning fields (flags override them), and the
    metric's plan; no arguments at all: the demonstration."""
    argv = list(sys.argv[1:] if argv is None else argv) or DEMONSTRATION
    description = __doc__.split("\n\n")[0]
    try:
        recipe = metric_plan(_named_metric(argv)).recipe  # the recipe's fields are the defaults flags override
    except ValueError as err:
        raise UsageError(f"--metric: {err}") from err
    if recipe.get("reward") == "object_f1":  # scored on the dataset's thing classes, unless flags name others
        _, data_args, _, _ = parse_config(ARGUMENTS, argv, defaults={}, description=description, brief=BRIEF)
        from .data import metric_options

        recipe = {**recipe, "reward_thing_classes": list(metric_options(data_args)["thing_classes"]) or None}
    model_args, data_args, tune_args, args = parse_config(
        ARGUMENTS, argv, defaults=recipe, description=description, brief=BRIEF
    )
    return model_args, data_args, tune_args, args, metric_plan(tune_args.metric, args.boundary_tolerance)


def _named_metric(argv: list[str]) -> str:
    """The metric ``argv`` names, by flag or in its --config file, before the whole parse."""
    known, _ = _METRIC.parse_known_args(argv)
    if known.metric:
        return known.metric
    if known.config and Path(known.config).is_file():
        return (yaml.safe_load(Path(known.config).read_text()) or {}).get("metric", TuneArguments.metric)
    return TuneArguments.metric


_METRIC = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
_METRIC.add_argument("--metric")
_METRIC.add_argument("--config")


def main(argv: list[str] | None = None):
    """``hf-reward tune``: parse (the metric's recipe as the defaults), then run the job (:mod:`.tune_job`)."""
    model_args, data_args, tune_args, args, plan = parse(argv)
    from .tune_job import run  # here: --help and mistakes in the flags need none of what the job imports

    return run(model_args, data_args, tune_args, args, plan)
