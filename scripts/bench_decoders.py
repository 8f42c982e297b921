"""Time and memory of every metric and decoder, on CamVid validation and on a Cityscapes-sized synthetic split.

    python scripts/bench_decoders.py          # ~20 min on 2 CPU cores, after scripts/study.py (its checkpoint)

Each case runs in its own subprocess (its peak RSS, ``getrusage``, is its own):

- ``camvid``: the CamVid study's checkpoint on the 101 validation images, run at 128 x 176 and
  scored against the full 360 x 480 labels, as ``scripts/evaluate_model.py`` scores;
- ``synthetic``: ``--images`` Cityscapes-sized images, logits 19 x 256 x 512 and labels 1024 x 2048
  (``bench_calibrate.py``'s), 10% void.

Per image: the masks (argmax of the upsampled logits) scored by :class:`StreamingMeanIoU` with
nothing but the dataset matrix, then with each extra metric alone (per-image mIoU; boundary F at
2 px; at 0.75% of the diagonal; objects of the thing classes); the decoders' masks (offsets,
RankSEG) from the logits; and the fits of the dataset and per-image offsets (one sweep on the
synthetic split, to convergence on CamVid). Results: docs/results.md.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from hf_reward.calibrate import LogitCache, collect_logits, fit_offsets
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.camvid import DEFAULT_ROOT
from hf_reward.data.camvid import THING_CLASSES as CAMVID_THINGS
from hf_reward.data.cityscapes import cityscapes_id2label, cityscapes_thing_classes
from hf_reward.data.synthetic import cityscapes_sized_image
from hf_reward.decisions import decide
from hf_reward.decoders import decode
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import load_segmentation_model

METRICS = {
    "dataset matrix only": {},
    "+ per-image mIoU family": {"per_image": True},
    "+ boundary F, 2px": {"boundary_tolerances": ["2px"]},
    "+ boundary F, 0.75%": {"boundary_tolerances": ["0.75%"]},
    "+ objects": {"things": True},
}


@dataclass
class DecoderBenchArguments:
    """which case, and its size"""

    case: str | None = field(default=None, metadata={"help": "'camvid' or 'synthetic': run one case here."})
    images: int = field(default=20, metadata={"help": "synthetic: images in the split."})
    checkpoint: str = field(default="runs/study_camvid/pretrain", metadata={"help": "camvid: the model."})
    camvid_root: str = field(default=DEFAULT_ROOT, metadata={"help": "CamVid's directory."})


def camvid_cache(args) -> tuple[LogitCache, dict[int, str], tuple[str, ...]]:
    ds, id2label = load_camvid(
        "validation", root=args.camvid_root, transform=eval_transform((128, 176), resize_labels=False)
    )
    model = load_segmentation_model(args.checkpoint, id2label)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_segmentation)
    return collect_logits(model, loader, progress=False), id2label, CAMVID_THINGS


def synthetic_cache(args) -> tuple[LogitCache, dict[int, str], tuple[str, ...]]:
    cache = LogitCache(19)
    for i in range(args.images):
        cache.append(*cityscapes_sized_image(i))
    return cache, cityscapes_id2label(), cityscapes_thing_classes()


def per_image_ms(cache: LogitCache, work) -> float:
    start = time.perf_counter()
    for logits, labels in cache:
        work(logits, torch.where(labels == cache.num_classes, 255, labels.long()))
    return 1000 * (time.perf_counter() - start) / len(cache)


def run_case(args) -> dict:
    cache, id2label, things = camvid_cache(args) if args.case == "camvid" else synthetic_cache(args)
    c = len(id2label)
    out = {"images": len(cache), "label_size": list(next(iter(cache))[1].shape[-2:])}
    masks, labels_of = [], []

    def argmax(logits, labels):
        masks.append(decide(logits, tuple(labels.shape[-2:])))
        labels_of.append(labels)

    out["argmax masks"] = per_image_ms(cache, argmax)
    for name, options in METRICS.items():
        metric_options = {k: v for k, v in options.items() if k != "things"}
        if options.get("things"):
            metric_options["thing_classes"] = list(things)
        metric = StreamingMeanIoU(c, id2label, **metric_options)
        start = time.perf_counter()
        for mask, labels in zip(masks, labels_of):
            metric.update_masks(mask, labels)
        out[name] = 1000 * (time.perf_counter() - start) / len(masks)
    sweeps = 1 if args.case == "synthetic" else 5
    for name, kwargs in (("offsets fit", {}), ("per-image offsets fit", {"per_image": True})):
        reward = "miou_gt" if kwargs else "miou"
        start = time.perf_counter()
        fitted = fit_offsets(cache, reward, max_sweeps=sweeps, progress=False, **kwargs)
        out[name] = {"seconds": time.perf_counter() - start, "sweeps": len(fitted.history)}
    offsets = {"offsets": fitted.offsets}
    out["offsets masks"] = per_image_ms(cache, lambda z, y: decode("offsets", z, tuple(y.shape[-2:]), offsets))
    out["rankseg masks"] = per_image_ms(cache, lambda z, y: decode("rankseg", z, tuple(y.shape[-2:]), {}))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parse_config([DecoderBenchArguments], argv, description=__doc__.split("\n\n")[0])
    if args.case:
        print(json.dumps(run_case(args)))
        return
    threads = ["--threads", str(torch.get_num_threads())]
    rows = {}
    for case in ("camvid", "synthetic"):
        command = [sys.executable, __file__, "--case", case, "--images", str(args.images), *threads]
        command += ["--checkpoint", args.checkpoint, "--camvid_root", args.camvid_root]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows[case] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| work | CamVid validation (ms / image) | synthetic Cityscapes (ms / image) |\n|---|---|---|")
    for key in ("argmax masks", *METRICS, "offsets masks", "rankseg masks"):
        print(f"| {key} | {rows['camvid'][key]:.1f} | {rows['synthetic'][key]:.1f} |")
    for key in ("offsets fit", "per-image offsets fit"):
        cells = [f"{rows[c][key]['seconds']:.1f} s, {rows[c][key]['sweeps']} sweeps" for c in ("camvid", "synthetic")]
        print(f"| {key} (whole split) | {cells[0]} | {cells[1]} |")
    print(f"| peak RSS (MB) | {rows['camvid']['peak_rss_mb']:.0f} | {rows['synthetic']['peak_rss_mb']:.0f} |")
    print(
        f"\nImages: CamVid {rows['camvid']['images']} at {rows['camvid']['label_size']}, synthetic "
        f"{rows['synthetic']['images']} at {rows['synthetic']['label_size']}."
    )


if __name__ == "__main__":
    run_script(main)
