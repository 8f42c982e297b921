"""What every script shares on the command line: parsing, one-line errors, CPU threads, the shared arguments.

Every script in ``scripts/`` parses a few dataclasses with :func:`parse_config`: ``--config
file.yaml`` sets their values (one flat mapping, keys are field names) and flags on the command
line override the file. Flags must be spelled out (no prefix matching: ``--max_step`` is an
error, not ``--max_steps``), and unknown keys in the file are errors too::

    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml --max_steps 50

Mistakes in what the user asked for (a bad flag, a missing file or model, a model whose classes
are not the dataset's) raise :class:`UsageError`; :func:`run_script` prints its message on one
line and exits with status 2.

CPU threads: torch's default, one per core, is the fastest on an idle machine and collapses
beside any other busy process (its threads spin-wait for each other; ``scripts/bench_threads.py``
measures both). Scripts run one thread fewer than the cores they may use (at least one, shared
among the processes of a launch); ``--threads N`` sets another number.

Example::

    >>> model_args, data_args = parse_config([ModelArguments, DataArguments], ["--dataset", "camvid"])
    >>> data_args.dataset, data_args.settings("eval")["eval_split"]
    ('camvid', 'validation')
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import textwrap
import types
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging as transformers_logging

from ..sources import CAMVID_ROOT as CAMVID_PATH
from ..sources import CITYSCAPES_HUB_REPO as CITYSCAPES_REPO

# transformers draws a bar for every weight load and save, dozens in a run, each of a fraction of a second.
_QUIET_BARS = ("Loading weights", "Writing model shards")


def _quiet_bars(factory, args, kwargs):
    if kwargs.get("desc") in _QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


transformers_logging.set_tqdm_hook(_quiet_bars)


class UsageError(Exception):
    """A mistake in what the user asked for; scripts report it on one line, without a traceback."""


def default_threads() -> int:
    """One thread fewer than the cores this process may use, shared among the launch's local processes; >= 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, (cores - 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option once (``--max_steps``, not also ``--max-steps MAX_STEPS``), its help and default beside it."""

    def _format_action_invocation(self, action):
        return action.option_strings[0] if action.option_strings else super()._format_action_invocation(action)


_TRAINING_ARGUMENTS_DOCS = (
    "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"
)


class _Parser(HfArgumentParser, _OneLineErrors):
    """HfArgumentParser with one-line errors and a short ``--help``: the project's options, the ``TrainingArguments``
    the project sets defaults for, and a pointer to the others (accepted, not listed); ``exclude``d fields are
    not options at all."""

    def __init__(self, dataclass_types, exclude: Collection[str] = (), **kwargs):
        self.exclude = set(exclude)
        super().__init__(dataclass_types, **kwargs)

    def _add_dataclass_arguments(self, dtype):
        hints = get_type_hints(dtype)
        inherited, base = set(), set()
        if issubclass(dtype, TrainingArguments):
            base = {f.name for f in dataclasses.fields(TrainingArguments)}
            # Fields a subclass declares again carry the project's defaults: those are listed.
            redeclared = {
                name
                for cls in dtype.__mro__
                if cls is not TrainingArguments
                for name in vars(cls).get("__annotations__", {})
            }
            inherited = {f.name for f in dataclasses.fields(TrainingArguments)} - redeclared
        title = f"{dtype.__name__} ({(dtype.__doc__ or '').strip().splitlines()[0]})"
        if inherited:
            title += f"; every other transformers.TrainingArguments field is an option too: {_TRAINING_ARGUMENTS_DOCS}"
        own = self.add_argument_group(title)
        # The project's own fields first, then the TrainingArguments it sets defaults for, then the hidden rest.
        ordered = sorted(dataclasses.fields(dtype), key=lambda f: (f.name in base) + (f.name in inherited))
        for f in ordered:
            if f.init and f.name not in self.exclude:
                f = copy.copy(f)
                f.type = hints[f.name]
                # argparse takes the metadata as keyword arguments: only its own.
                metadata = {k: v for k, v in f.metadata.items() if k != "used_by"}
                if f.name in inherited:
                    metadata["help"] = argparse.SUPPRESS
                f.metadata = types.MappingProxyType(metadata)
                self._parse_dataclass_field(own, f)


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict | None = None,
    description: str | None = None,
    exclude: Collection[str] = (),
    brief: Sequence[str] = (),
) -> tuple:
    """Instances of ``dataclass_types`` from ``defaults``, then ``--config <yaml>``, then flags (``argv``).

    ``exclude``: fields that do not apply to the script (neither options nor config keys; they keep
    their defaults). ``--threads`` is accepted here and applied by :func:`run_script`. ``brief``: the
    options ``--help`` lists, one line each, for a newcomer; ``--help_all`` lists every option by group
    (without ``brief``, ``--help`` does).
    """
    parser = _Parser(
        dataclass_types,
        exclude=exclude,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s [--config FILE.yaml] [--option value ...]",
        description=description,
    )
    parser.add_argument("--config", default=None, help="YAML file of argument values; command-line flags override it.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: one fewer than the cores, at least 1: fast beside another busy process).",
    )
    known, _ = _pre_parser().parse_known_args(argv)
    fields = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init} - set(exclude)
    values = dict(defaults or {})
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise UsageError(f"--config {known.config}: no such file")
        from_file = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(from_file) - fields)
        if unknown:
            raise UsageError(
                f"{known.config}: unknown keys {unknown}; every key must be an argument of the script (see --help)"
            )
        values.update(from_file)
    parser.set_defaults(**{k: v for k, v in values.items() if k in fields})
    # Excluded fields are no options, but the parser hands every field of a dataclass to its constructor.
    parser.set_defaults(
        **{f.name: field_default(f) for t in dataclass_types for f in dataclasses.fields(t) if f.name in exclude}
    )
    if brief:  # after the defaults are set: the listing shows those of this config
        parser.add_argument("--help_all", action="help", help="Every option, by group.")
        asked = sys.argv[1:] if argv is None else argv
        if "-h" in asked or "--help" in asked:
            helps = {f.name: f.metadata.get("help", "") for t in dataclass_types for f in dataclasses.fields(t)}
            print(_brief_help(parser, ["config", *brief, "help_all"], helps))
            raise SystemExit(0)
    # Flags first, on argparse alone: building the dataclasses sets up accelerate's state, seconds on a CPU.
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown arguments {unknown}: flags are spelled out in full (see --help)")
    try:
        *parsed, _, unknown = parser.parse_args_into_dataclasses(
            argv, look_for_args_file=False, return_remaining_strings=True
        )
    except ValueError as err:  # a dataclass's __post_init__ refused a value
        raise UsageError(str(err)) from err
    if unknown:
        raise UsageError(f"unknown arguments {unknown}: flags are spelled out in full (see --help)")
    return tuple(parsed)


def _brief_help(parser: argparse.ArgumentParser, names: Sequence[str], helps: dict[str, str]) -> str:
    """The usage, the description and each option in ``names``: its help's first sentence and its default.

    ``helps``: the fields' own help, for the ``TrainingArguments`` fields whose help the full listing hides.
    """
    actions = {action.dest: action for action in parser._actions}
    lines = [parser.format_usage().strip(), "", parser.description or "", "", "options (--help_all: all of them):"]
    for name in names:
        action = actions[name]
        text = action.help if action.help not in (None, argparse.SUPPRESS) else helps.get(name, "")
        sentence = text.replace("%%", "%").split(". ")[0].rstrip(".")
        if action.default not in (None, argparse.SUPPRESS, False) and name != "help_all":
            sentence += f" [{action.default}]"
        lines += textwrap.wrap(sentence, 119, initial_indent=f"  --{name:<28}", subsequent_indent=" " * 32)
    return "\n".join(lines)


def field_default(f: dataclasses.Field):
    """A dataclass field's declared default (its factory's value)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _pre_parser() -> argparse.ArgumentParser:
    """The options read before the dataclasses: the config file and the threads."""
    pre = _OneLineErrors(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--threads", type=int, default=None)
    return pre


# What Ctrl-C prints after "interrupted: "; a script says more once it knows (set_resume_hint).
_resume_hint = ["nothing was saved that a rerun would not redo"]


def set_resume_hint(text: str) -> None:
    """What Ctrl-C prints from now on: where the run stopped and how to resume it."""
    _resume_hint[0] = text


def run_script(main: Callable[[], object]) -> None:
    """Run a script's ``main`` with its CPU threads set: a :class:`UsageError`, or a
    :class:`~hf_reward.data.DataError` naming a bad sample, prints one line and exits with status 2; Ctrl-C prints
    one line (:func:`set_resume_hint`) and exits with status 130."""
    try:
        threads = _pre_parser().parse_known_args()[0].threads
        if threads is not None and threads < 1:
            raise UsageError(f"--threads {threads}: give at least 1")
        torch.set_num_threads(threads or default_threads())
        main()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_resume_hint[0]}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        from ..data import DataError  # only now: the data package imports `datasets`, which --help does not need

        if not isinstance(err, (UsageError, DataError)):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _arg(default, help: str, *, used_by: str = "both", **kwargs):
    """A dataclass field with its help; ``used_by`` ("train", "eval" or "both") says which split it shapes."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help, "used_by": used_by}, **kwargs)
    return field(default=default, metadata={"help": help, "used_by": used_by}, **kwargs)


@dataclass
class ModelArguments:
    """which model to start from; without model_name_or_path, a small SegFormer or UperNet of the sizes below"""

    model_name_or_path: str | None = _arg(
        None,
        "Local directory or Hub repo id of a SegFormer or UperNet (safetensors). None: build one of the sizes below.",
    )
    revision: str | None = _arg(None, "Hub revision (branch, tag or commit) to load.")
    architecture: str = _arg(
        "segformer",
        "Built model: 'segformer' (MiT encoder, all-MLP decoder) or 'upernet' (ConvNeXt backbone, UperNet head and "
        "an auxiliary FCN head, whose loss RewardSegConfig.auxiliary_reward sets).",
    )
    hidden_sizes: list[int] = _arg(lambda: [16, 32, 64, 128], "Built model: width of each of the 4 encoder stages.")
    depths: list[int] = _arg(lambda: [1, 1, 1, 1], "Built model: blocks per stage.")
    decoder_hidden_size: int = _arg(64, "Built model: width of the decoder head (UperNet's auxiliary head: half).")

    BUILT_MODEL_FIELDS = ("architecture", "hidden_sizes", "depths", "decoder_hidden_size")  # none where one is loaded

    def __post_init__(self):
        from ..modeling import ARCHITECTURES  # here: the model classes cost seconds to import, --help none

        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"--architecture {self.architecture}: give one of {', '.join(ARCHITECTURES)}")

    def sizes(self) -> dict:
        """The built model's sizes, as :func:`hf_reward.modeling.build_model` takes them."""
        return {
            "hidden_sizes": self.hidden_sizes,
            "depths": self.depths,
            "decoder_hidden_size": self.decoder_hidden_size,
        }


@dataclass
class DataArguments:
    """which dataset, and how it is cropped and scored"""

    dataset: str = _arg(
        "toy_streets",
        "One of 'toy_streets', 'camvid', 'cityscapes', 'gta5', 'mapillary_v1.2', 'mapillary_v2.0', 'easyportrait', "
        "or any image + mask dataset: a Hub repo id, a local directory, or a builder ('parquet', 'imagefolder') "
        "with --data_path as its files.",
    )
    data_path: str | None = _arg(
        None,
        f"camvid: its directory (default {CAMVID_PATH}). cityscapes: a Hub repo id (default {CITYSCAPES_REPO}) "
        "or a directory of <split>-*.parquet files. gta5, mapillary_*, easyportrait: the directory as published "
        "(hf_reward.data.folders). Other datasets: a glob of their files, '{split}' standing "
        "for the split name (e.g. 'data/{split}-*.parquet').",
    )
    class_names: list[str] | None = _arg(
        None,
        "Other datasets: the class names, in the order of the mask values 0, 1, ... (without it, the classes of "
        "--model_name_or_path's id2label).",
    )
    image_column: str = _arg("image", "Other datasets: the image column.")
    label_column: str = _arg("label", "Other datasets: the mask column (class indices).")
    train_split: str = _arg("train", "Split to train on.", used_by="train")
    eval_split: str = _arg("validation", "Split to evaluate on.", used_by="eval")
    crop_size: list[int] = _arg(lambda: [64, 64], "Training crop (height, width).", used_by="train")
    scale_range: list[float] = _arg(
        lambda: [0.75, 1.5], "Training random rescale range (min, max), before the crop.", used_by="train"
    )
    eval_size: list[int] | None = _arg(
        None,
        "Resize evaluation images to (height, width); labels stay at full size. None: full size.",
        used_by="eval",
    )
    max_eval_samples: int | None = _arg(None, "Evaluate on the first N images only.", used_by="eval")
    shuffle_buffer: int = _arg(256, "Streaming shuffle buffer (images) of the training split.", used_by="train")
    toy_size: int = _arg(64, "toy_streets: image side in pixels.")
    toy_train_images: int = _arg(4000, "toy_streets: training images.", used_by="train")
    toy_eval_images: int = _arg(64, "toy_streets: evaluation images.", used_by="eval")
    toy_seed: int = _arg(0, "toy_streets: the seed that draws the scenes.")
    boundary_tolerances: list[str] = _arg(
        lambda: ["2px", "0.75%"],
        "Boundary F-scores reported, at these tolerances: '<pixels>px' or '<percent of the image diagonal>%%'.",
        used_by="eval",
    )
    thing_classes: list[str] | None = _arg(
        None,
        "Classes scored as objects (connected components): object recall, precision, F1. None: the named "
        "dataset's own (camvid: car, pedestrian, bicyclist; cityscapes: its classes with instances).",
        used_by="eval",
    )

    @classmethod
    def training_only(cls) -> tuple[str, ...]:
        """The fields that shape only the training split: no option in a script that does not train."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["used_by"] == "train")

    def settings(self, used_by: str) -> dict:
        """The fields that shape the ``"train"`` or ``"eval"`` split.

        The evaluation ones are recorded with a saved model, so that evaluating it later scores the
        same images; the training ones key the cache of pretraining.
        """
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["used_by"] in (used_by, "both")
        }


def no_such_directory(name: str) -> str:
    """``"no such directory"``, and for a relative path the directory it was looked for in."""
    return "no such directory" + ("" if Path(name).expanduser().is_absolute() else f" here ({Path.cwd()})")


def looks_local(name: str) -> bool:
    """A path rather than a Hub repo id: relative to here or absolute, nested, or under a directory that exists."""
    parts = Path(name).parts
    return name.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())
