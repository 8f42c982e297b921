"""Time and peak memory of calibration (:mod:`hf_reward.calibrate`) on CPU.

    python scripts/bench_calibrate.py --threads 2 > bench_calibrate.md   # 2 CPU cores, see below
    python scripts/bench_calibrate.py --device cuda                       # the fit on a GPU

Each case runs in its own subprocess, one after the other, so that its peak RSS
(``getrusage``'s ``ru_maxrss``) is its own; torch uses ``--threads`` threads, and the fit
computes on ``--device`` (the logits stay cached on the CPU and each item is moved there).

1. ``camvid``: CamVid train (367 images at 128 x 176, ``--camvid_root``) through a randomly
   initialised SegFormer of the study's size (``configs/study_camvid.yaml``, 2.06M parameters; its
   classifier weights scaled so the logits spread as a trained model's do, not ~1e-4 apart).
   Collects the logits (RAM cache), fits mIoU offsets, folds them into the bias and scores the
   folded model on the same split with ``StreamingMeanIoU``: that must match the fit's metric (the
   fit saw fp16 logits, the model scores with float32 ones).
2. ``synthetic``: Cityscapes-sized images, logits 19 x 256 x 512 (fp16 disk cache) and labels
   1024 x 2048 with 10% ignored, classes drawn with Zipf-like frequencies and logits
   ``2 * one_hot + 1.5 * noise``. One sweep (19 passes over the split) for 50, 100 and 200 images:
   the peak RSS must not grow with the number of images, and the time per image and pass gives the
   cost of a full fit (500 images, C passes per sweep).

Results: docs/benchmarks.md, "Calibration: time and memory".
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_reward.calibrate import LogitCache, collect_logits, fit_offsets, fold_offsets
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.camvid import DEFAULT_ROOT
from hf_reward.data.synthetic import cityscapes_sized_image
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import build_segformer


class CountingReads:
    """The cache, counting the images read from it (fit_offsets reads the first one once more to begin)."""

    def __init__(self, cache: LogitCache):
        self.cache, self.reads = cache, 0

    def __len__(self):
        return len(self.cache)

    def __iter__(self):
        for item in self.cache:
            self.reads += 1
            yield item


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fit(cache: LogitCache, device: str, **kwargs) -> dict:
    data = CountingReads(cache)
    rss_before = rss_mb()
    start = time.perf_counter()
    result = fit_offsets(data, "miou", progress=False, device=device, **kwargs)
    seconds = time.perf_counter() - start
    image_passes = data.reads - 1
    return dict(
        result=result,
        fit_s=seconds,
        sweeps=len(result.history),
        converged=result.converged,
        image_passes=image_passes,
        ms_per_image_pass=1000 * seconds / image_passes,
        rss_before_fit_mb=rss_before,
        metric_before=result.metric_before,
        metric_after=result.metric_after,
    )


def camvid(args) -> dict:
    ds, id2label = load_camvid("train", root=args.camvid_root, transform=eval_transform((128, 176)))
    model = build_segformer(id2label, hidden_sizes=(32, 64, 128, 256), depths=(1, 1, 2, 1), decoder_hidden_size=128)
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(1000.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_segmentation)
    start = time.perf_counter()
    cache = collect_logits(model, loader, progress=False)
    collect_s = time.perf_counter() - start
    out = fit(cache, args.device)
    fold_offsets(model, out.pop("result"), split="train")
    metric = StreamingMeanIoU(len(id2label))
    model.eval()  # collect_logits put it back in training mode, where batch norm uses the batch's statistics
    with torch.inference_mode():
        for batch in loader:
            metric.update(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    folded = metric.compute()["mean_iou"]
    return dict(out, images=len(cache), cache="RAM", collect_s=collect_s, folded_model_miou=folded)


def synthetic(args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as directory:
        cache = LogitCache(19, directory)
        start = time.perf_counter()
        for i in range(args.images):
            cache.append(*cityscapes_sized_image(i))
        collect_s = time.perf_counter() - start
        out = fit(cache, args.device, max_sweeps=1)
        out.pop("result")
        del cache
    return dict(out, images=args.images, cache="disk", collect_s=collect_s)


def run_case(case: str, args, images: int | None = None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--case",
        case,
        "--threads",
        str(args.threads),
        "--camvid_root",
        args.camvid_root,
        "--device",
        args.device,
    ]
    command += ["--images", str(images)] if images else []
    command += ["--cache_dir", args.cache_dir] if args.cache_dir else []
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class BenchArguments:
    """which case to run (the table runs each in a subprocess)"""

    case: str | None = field(default=None, metadata={"help": "'camvid' or 'synthetic': run one case here."})
    images: int = field(default=50, metadata={"help": "synthetic: images in the split."})
    camvid_root: str = field(default=DEFAULT_ROOT, metadata={"help": "CamVid's directory."})
    device: str = field(default="cpu", metadata={"help": "Where the fit computes: cpu, cuda, ..."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "synthetic: the disk cache's place (default: the temp dir)."}
    )


def main(argv: list[str] | None = None):
    (args,) = parse_config([BenchArguments], argv, description=__doc__.split("\n\n")[0])
    args.threads = torch.get_num_threads()
    if args.case:
        out = camvid(args) if args.case == "camvid" else synthetic(args)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    rows = [("CamVid train, 128 x 176, C = 11, random model", run_case("camvid", args))]
    print(f"CamVid done: {rows[0][1]}", file=sys.stderr, flush=True)
    for n in (50, 100, 200):
        rows.append(("synthetic Cityscapes, 1024 x 2048, C = 19, 1 sweep", run_case("synthetic", args, n)))
        print(f"synthetic {n} done: {rows[-1][1]}", file=sys.stderr, flush=True)
    print(f"torch threads: {args.threads}, fit on: {args.device}\n")
    print(
        "| case | images | cache | collect (s) | fit (s) | sweeps | image-passes | ms / image-pass "
        "| RSS before fit (MB) | peak RSS (MB) | mIoU before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['images']} | {r['cache']} | {r['collect_s']:.1f} | {r['fit_s']:.1f} | {r['sweeps']}"
            f"{'' if r['converged'] else ' (cap)'} | {r['image_passes']} | {r['ms_per_image_pass']:.1f} "
            f"| {r['rss_before_fit_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['metric_before']:.4f} -> {r['metric_after']:.4f} |"
        )
    camvid_row = rows[0][1]
    print(
        f"\nCamVid: the folded model scores mIoU {camvid_row['folded_model_miou']:.6f} on train (float32 logits); "
        f"the fit, from the fp16 cache, {camvid_row['metric_after']:.6f}."
    )
    per_pass = rows[-1][1]["ms_per_image_pass"] / 1000
    print(
        f"Synthetic: a full sweep of 500 images at {per_pass:.2f} s per image and pass takes "
        f"{500 * 19 * per_pass / 60:.0f} min on {args.threads} thread(s), {args.device}."
    )


if __name__ == "__main__":
    run_script(main)
