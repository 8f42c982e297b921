"""Reward-tune a SegFormer on mean IoU, evaluate it before and after, optionally push it to the Hub.

    accelerate launch scripts/tune.py                                   # the embedded run (toy streets)
    accelerate launch scripts/tune.py --config configs/camvid_tune.yaml
    accelerate launch scripts/tune.py --config configs/cityscapes_b0.yaml --push_to_hub --hub_model_id me/b0-miou

Without ``--model_name_or_path`` a small SegFormer is built and pretrained by maximum
likelihood first (cached in ``<output_dir>/pretrained``). Writes the tuned model,
``results.md``, ``training.png`` and ``overlays.png`` to ``--output_dir``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from hf_reward import RewardSegTrainer
from hf_reward.cli import DataArguments, ModelArguments, TuneArguments, TuneConfig, image_processor, load_splits, parse_config
from hf_reward.data import collate_segmentation
from hf_reward.hub import model_card, push_to_hub, results_table
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import load_segformer
from hf_reward.stages import predict_masks, pretrained_start

ARGUMENTS = (ModelArguments, DataArguments, TuneArguments, TuneConfig)


def main(argv: list[str] | None = None) -> RewardSegTrainer:
    model_args, data_args, tune_args, args = parse_config(ARGUMENTS, argv)
    train, val, id2label = load_splits(data_args, seed=args.seed, ignore_index=args.ignore_index)
    start = model_args.model_name_or_path or pretrained_start(model_args, data_args, tune_args, args)
    model = load_segformer(start, id2label, revision=model_args.revision)
    trainer = RewardSegTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate_segmentation,
        compute_metrics=StreamingMeanIoU(len(id2label), id2label, args.ignore_index),
        processing_class=image_processor(data_args),
    )
    shown = list(itertools.islice(val, tune_args.num_overlays))
    masks_before = predict_masks(model, shown) if shown else None

    before = trainer.evaluate()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    after = trainer.evaluate()
    trainer.save_model()

    base = model_args.model_name_or_path or f"a SegFormer built from config, MLE-pretrained by this script ({start})"
    dataset = data_args.data_path or {"cityscapes": "Chris1/cityscapes"}.get(data_args.dataset, data_args.dataset)
    card = model_card(base_model=base, dataset=dataset, args=args, before=before, after=after, id2label=id2label)
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        table = results_table(before, after, id2label)
        print(f"\nValidation IoU (%), before and after {trainer.state.global_step} reward-tuning steps:\n\n{table}\n")
        (out / "results.md").write_text(table + "\n")
        (out / "results.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
        (out / "README.md").write_text(card)
        if shown:
            from hf_reward.plots import plot_overlays, plot_training

            # train() starts a fresh log history: the evaluation before it is the curve's step 0.
            plot_training([{**before, "step": 0}, *trainer.state.log_history], out / "training.png")
            plot_overlays(shown, masks_before, predict_masks(trainer.model, shown), id2label, out / "overlays.png",
                          ignore_index=args.ignore_index)
            print(f"Plots: {out / 'training.png'}, {out / 'overlays.png'}")
    if args.push_to_hub:
        push_to_hub(trainer, card)
    return trainer


if __name__ == "__main__":
    main()
