"""Cross-entropy stage: the model that reward tuning starts from.

    accelerate launch scripts/pretrain.py                                        # toy streets, built model
    accelerate launch scripts/pretrain.py --config configs/camvid_pretrain.yaml
    accelerate launch scripts/pretrain.py --model_name_or_path nvidia/mit-b0 --new_head --dataset camvid ...

Saves the model (safetensors) and its evaluation to ``--output_dir``; tune it with
``scripts/tune.py --model_name_or_path <output_dir>``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hf_reward.cli import DataArguments, ModelArguments, parse_config
from hf_reward.cli.data import load_data
from hf_reward.cli.models import image_processor, load_model, model_classes
from hf_reward.cli.runs import PretrainConfig, prepare_output_dir, segmentation_trainer


@dataclass
class PretrainArguments:
    """the cross-entropy stage's own option"""

    new_head: bool = field(
        default=False,
        metadata={
            "help": "Re-initialise the classifier of --model_name_or_path for this dataset's classes "
            "(a backbone such as nvidia/mit-b0, or a model trained on other classes)."
        },
    )


ARGUMENTS = (ModelArguments, DataArguments, PretrainArguments, PretrainConfig)
# What --help lists first (--help_all: every option).
BRIEF = ("model_name_or_path", "new_head", "dataset", "data_path", "output_dir", "max_steps", "learning_rate", "seed")


def main(argv: list[str] | None = None):
    model_args, data_args, pretrain_args, args = parse_config(
        ARGUMENTS, argv, description=__doc__.split("\n\n")[0], brief=BRIEF
    )
    run = {
        "model": dataclasses.asdict(model_args),
        "data": data_args.settings("train"),
        "new_head": pretrain_args.new_head,
    }
    resume = prepare_output_dir(args, run)
    splits = load_data(
        data_args,
        seed=args.seed,
        ignore_index=args.ignore_index,
        id2label=None if pretrain_args.new_head else model_classes(model_args),
    )
    model = load_model(model_args, splits.id2label, seed=args.seed, new_head=pretrain_args.new_head)
    trainer = segmentation_trainer(
        model, args, splits.train, splits.eval, splits.id2label, processing_class=image_processor(data_args)
    )
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"\nValidation mIoU after {trainer.state.global_step} steps: {100 * metrics['eval_mean_iou']:.1f}%")
        Path(args.output_dir, "eval_results.json").write_text(json.dumps(metrics, indent=2))
    if args.push_to_hub:
        trainer.push_to_hub(commit_message="Cross-entropy training with hf-reward")
    return trainer
