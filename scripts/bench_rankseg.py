"""RankSEG's settings on CamVid validation: decoding time per image against the mIoU^I given up.

    python scripts/bench_rankseg.py --checkpoint outputs/camvid_quick/pretrained   # after the README's CamVid command

The model runs once over the 101 validation images at ``--eval_size`` (its logits cached); each
setting then decodes every image with ``rankseg.functional.rankseg`` (metric IoU, solver RMA, the
only solver it allows for IoU) and is scored against the full 360 x 480 labels:

- ``pruning_prob``: classes whose largest probability in the image is at most this are skipped;
- ``scale``: the probabilities are decoded at this fraction of the labels' size (bilinear resize of
  the logits, then softmax), and the mask is resized to the labels' size by nearest neighbour.

The first setting (scale 1, pruning 0.5: the package's defaults) is the reference; the library decodes
with scale 0.25 and pruning 0 (:func:`hf_reward.decoders.rankseg_masks`), the fastest setting within 0.1
point of the best here; the table gives each setting's time per image (one thread) and its mIoU^I, dataset
mIoU and boundary F at 2 px minus the reference's, in points. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_reward.calibrate import collect_logits
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.camvid import DEFAULT_ROOT
from hf_reward.decisions import upsample_logits
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import load_segmentation_model

# (scale of the labels' size, pruning_prob); the first is the reference.
SETTINGS = (
    (1.0, 0.5),
    (1.0, 0.7),
    (1.0, 0.3),
    (1.0, 0.1),
    (1.0, 0.0),
    (0.5, 0.5),
    (0.5, 0.0),
    (0.25, 0.5),
    (0.25, 0.0),
)


@dataclass
class RanksegBenchArguments:
    """the model and the data"""

    checkpoint: str = field(default="outputs/camvid_quick/pretrained", metadata={"help": "The model (a directory)."})
    camvid_root: str = field(default=DEFAULT_ROOT, metadata={"help": "CamVid's directory."})
    eval_size: list[int] = field(default_factory=lambda: [120, 160], metadata={"help": "Model input (H, W)."})
    max_images: int | None = field(default=None, metadata={"help": "The first N validation images only."})


def decode(logits: torch.Tensor, size: tuple[int, int], scale: float, pruning: float) -> torch.Tensor:
    """RankSEG's masks ``(B, H, W)`` of logits ``(B, C, h, w)``, decoded at ``scale`` of ``size``."""
    from rankseg.functional import rankseg

    small = (round(size[0] * scale), round(size[1] * scale))
    probs = upsample_logits(logits.float(), small).softmax(1)
    masks = rankseg(probs, metric="IoU", output_mode="multiclass", solver="RMA", pruning_prob=pruning)
    if small != tuple(size):
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return masks


def main(argv: list[str] | None = None):
    (args,) = parse_config([RanksegBenchArguments], argv, description=__doc__.split("\n\n")[0])
    val, id2label = load_camvid(
        "validation", root=args.camvid_root, transform=eval_transform(tuple(args.eval_size), resize_labels=False)
    )
    model = load_segmentation_model(args.checkpoint, id2label)
    if args.max_images is not None:
        val = val.take(args.max_images)
    cache = collect_logits(model, torch.utils.data.DataLoader(val, batch_size=8, collate_fn=collate_segmentation))
    rows, reference = [], None
    for scale, pruning in SETTINGS:
        metric = StreamingMeanIoU(len(id2label), id2label, per_image=True, boundary_tolerances=["2px"])
        seconds, images = 0.0, 0
        for logits, labels in cache:
            labels = torch.where(labels == len(id2label), 255, labels.long())  # the cache's void is C
            started = time.perf_counter()
            masks = decode(logits, tuple(labels.shape[-2:]), scale, pruning)
            seconds += time.perf_counter() - started
            images += len(labels)
            metric.update_masks(masks, labels)
        scores = metric.compute()
        reference = reference or scores
        rows.append(
            f"| {scale:g} | {pruning:g} | {seconds / images:.3f} | {100 * scores['image_miou']:.2f} "
            f"({100 * (scores['image_miou'] - reference['image_miou']):+.2f}) | {100 * scores['mean_iou']:.2f} "
            f"({100 * (scores['mean_iou'] - reference['mean_iou']):+.2f}) | {100 * scores['boundary_f_2px']:.2f} "
            f"({100 * (scores['boundary_f_2px'] - reference['boundary_f_2px']):+.2f}) |"
        )
        print(rows[-1], flush=True)
    header = (
        "| scale | pruning_prob | s / image | mIoU^I (Δ) | dataset mIoU (Δ) | boundary F 2px (Δ) |\n"
        "|---|---|---|---|---|---|"
    )
    threads = torch.get_num_threads()
    print(f"\nRankSEG on CamVid validation ({images} images, labels 360 x 480, {threads} thread(s)):\n")
    print(header + "\n" + "\n".join(rows))
    return rows


if __name__ == "__main__":
    run_script(main)
