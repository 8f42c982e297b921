"""Does the affine rule argmax_c (a_c p_c - b_c) beat logit offsets for dataset mIoU? Fitted on train, judged on dev.

    python scripts/affine_decoder.py                      # the CamVid study's checkpoint and splits (~3 min)

A first-order expansion of mIoU around the optimum gives a rule of that form; exact logit offsets
o_c give only the a_c part (argmax_c z_c + o_c = argmax_c e^{o_c} p_c). Here a = e^{o} from the
exact offsets fitted on the study's training images, then b fitted exactly on the same images
with a held: the scores s_c = a_c p_c (at the labels' size) take the place of the logits in
:func:`hf_reward.calibrate.fit_offsets`, whose offsets -b are then exact on their grid. Each
stage can only raise the training metric; the question is dev (where settings are chosen) and,
for the record, validation. The rule ships as a decoder only if it beats the offsets on dev
(docs/results.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from hf_reward.calibrate import collect_logits, fit_offsets
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation
from hf_reward.decisions import upsample_logits
from hf_reward.experiments.study import StudyConfig, load_study_data
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import load_segmentation_model


@dataclass
class AffineArguments:
    """the checkpoint and the grid of b"""

    checkpoint: str = field(default="runs/study_camvid/pretrain", metadata={"help": "The model to decode."})
    b_step: float = field(default=0.005, metadata={"help": "Grid step of b (probability units)."})
    b_max: float = field(default=0.5, metadata={"help": "b is searched in [-b_max, b_max]."})


def scores_at_labels(cache, a: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(a_c p_c (1, C, H, W), labels (1, H, W))`` per image of a logit cache."""
    return [(upsample_logits(z.float(), tuple(y.shape[-2:])).softmax(1) * a.view(1, -1, 1, 1), y) for z, y in cache]


def miou_of(data, shift: torch.Tensor, num_classes: int) -> float:
    metric = StreamingMeanIoU(num_classes, ignore_index=num_classes)  # the cache's void is C
    for s, y in data:
        metric.update_masks((s + shift.view(1, -1, 1, 1)).argmax(1), y.long())
    return metric.compute()["mean_iou"]


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    args, study = parse_config([AffineArguments, StudyConfig], ["--config", "configs/study_camvid.yaml", *argv])
    data, id2label = load_study_data(study)
    model = load_segmentation_model(args.checkpoint, id2label)
    c = len(id2label)

    def cache(split):
        loader = torch.utils.data.DataLoader(data[split], batch_size=16, collate_fn=collate_segmentation)
        return collect_logits(model, loader, progress=False)

    train, dev, val = cache("train_unflipped"), cache("dev"), cache("validation")
    offsets = fit_offsets(train, "miou", progress=False).offsets
    a = offsets.exp()
    b = -fit_offsets(
        scores_at_labels(train, a), "miou", step=args.b_step, max_offset=args.b_max, progress=False
    ).offsets
    ones, zeros = torch.ones(c), torch.zeros(c)
    rows = [("argmax", ones, zeros), ("logit offsets (a = e^o)", a, zeros), ("affine (a, b)", a, b)]
    print("| decoder | train mIoU | dev mIoU | validation mIoU |\n|---|---|---|---|")
    for name, scale, shift in rows:
        cells = [miou_of(scores_at_labels(split, scale), -shift, c) for split in (train, dev, val)]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    print("\nb: " + ", ".join(f"{id2label[i]} {v:+.3f}" for i, v in enumerate(b.tolist())))


if __name__ == "__main__":
    run_script(main)
