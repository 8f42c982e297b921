"""Calibration (:mod:`hf_reward.calibrate`) on CPU: the fit on a pixel sample against the exact fit; time and memory.

    python scripts/bench_calibrate.py --threads 2                 # the pixel-sample table (~1 h), see below
    python scripts/bench_calibrate.py --table exact --threads 2   # time and memory of the exact fit (~25 min)
    python scripts/bench_calibrate.py --device cuda               # the fits on a GPU

**The pixel-sample table** (``--table sampled``, the default) fits offsets for dataset mIoU and for
mIoU^I (``miou_gt``, per image) exactly and on a seeded sample of ``N`` pixels per image
(``fit_offsets(pixels_per_image=N)``), and scores every fit's offsets on the full-resolution split:

1. ``camvid``: the CamVid quick start's pretrained model (``outputs/camvid_quick/pretrained``, made by
   the README's CamVid command) on CamVid train, images at 120 x 160 and labels at 360 x 480 as the
   quick start fits them; the offsets are scored on train and on validation.
2. ``synthetic``: 50 Cityscapes-sized images (:mod:`hf_reward.data.synthetic`, logits 19 x 256 x 512
   in an fp16 disk cache, labels 1024 x 2048), scored on themselves.
3. ``scale``: 500 such images, fitted on the sample of ``--pixels_per_image`` only (the exact fit
   would take about 30 min per sweep): the sampling pass, the seconds per sweep and the peak memory.

"loss" is the exact fit's full-resolution score minus the sample's (points; negative where the
sample's offsets happen to score higher: the exact fit is a coordinate-wise optimum, not a global one).

**The exact table** (``--table exact``): each case runs in its own subprocess, one after the other, so
that its peak RSS (``getrusage``'s ``ru_maxrss``) is its own; torch uses ``--threads`` threads, and the fit
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

Results: docs/benchmarks.md, "Calibration on a pixel sample" and "Calibration: time and memory".
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

from hf_reward.calibrate import (
    DEFAULT_PIXELS_PER_IMAGE,
    LogitCache,
    PixelSample,
    collect_logits,
    fit_offsets,
    fold_offsets,
)
from hf_reward.cli import parse_config, run_script
from hf_reward.data import collate_segmentation, eval_transform, load_camvid
from hf_reward.data.camvid import DEFAULT_ROOT
from hf_reward.data.synthetic import cityscapes_sized_image
from hf_reward.decisions import decide
from hf_reward.metrics import StreamingMeanIoU
from hf_reward.modeling import build_segformer, load_segmentation_model
from hf_reward.rewards import class_counts, confusion_matrix, miou, miou_gt

SCOPES = {"dataset mIoU": dict(reward="miou"), "mIoU^I": dict(reward="miou_gt", per_image=True)}


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


def status_mb(key: str = "VmRSS") -> float:
    """A memory line of /proc/self/status in MB: ``VmRSS`` (resident now) or ``VmHWM`` (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def fit(cache: LogitCache, device: str, **kwargs) -> dict:
    data = CountingReads(cache)
    rss_before = status_mb()
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


def full_resolution_scores(cache: LogitCache, offsets: torch.Tensor) -> dict[str, float]:
    """Dataset mIoU and mIoU^I (points) of argmax(upsample(logits) + offsets) at the labels' full size."""
    total, image_scores = 0, []
    for logits, labels in cache:
        cm = confusion_matrix(decide(logits, tuple(labels.shape[-2:]), offsets), labels.long(), cache.num_classes)
        total = total + cm.sum(0)
        counted = cm.sum((1, 2)) > 0
        image_scores += miou_gt(*class_counts(cm))[counted].tolist()
    return {
        "dataset mIoU": 100 * float(miou(*class_counts(total))),
        "mIoU^I": 100 * sum(image_scores) / len(image_scores),
    }


def timed_fit(data, device: str, **kwargs):
    start = time.perf_counter()
    result = fit_offsets(data, progress=False, device=device, **kwargs)
    return result, time.perf_counter() - start


def sample_losses(name: str, fit_cache: LogitCache, score_caches: dict, args) -> list[dict]:
    """One row per scope and N (exact first): fit seconds, sweeps, full-resolution scores, loss against exact."""
    rows = []
    for scope, kwargs in SCOPES.items():
        reference = {}  # the exact fit's scores, the first row's
        for n in [None, *args.sample_sizes]:
            start = time.perf_counter()
            data = fit_cache if n is None else PixelSample(fit_cache, n, seed=0)
            sample_s = time.perf_counter() - start
            fit, fit_s = timed_fit(data, args.device, **kwargs)
            scores = {split: full_resolution_scores(c, fit.offsets)[scope] for split, c in score_caches.items()}
            reference = reference or scores
            row = dict(case=name, scope=scope, pixels=n or "all", sample_s=sample_s, fit_s=fit_s)
            row |= dict(sweeps=len(fit.history), scores=scores, loss={k: reference[k] - v for k, v in scores.items()})
            rows.append(row)
            print(f"{name} {scope} {n or 'exact'}: {row}", file=sys.stderr, flush=True)
    return rows


def camvid_quick_caches(args) -> dict[str, LogitCache]:
    caches = {}
    for split in ("train", "validation"):
        ds, id2label = load_camvid(
            split, root=args.camvid_root, transform=eval_transform((120, 160), resize_labels=False)
        )
        model = load_segmentation_model(args.camvid_model, id2label)
        loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_segmentation)
        caches[split] = collect_logits(model, loader, progress=False)
    return caches


def synthetic_cache(images: int, directory: str) -> LogitCache:
    cache = LogitCache(19, directory)
    for i in range(images):
        cache.append(*cityscapes_sized_image(i))
    return cache


def sampled_scale(args) -> dict:
    """The sampled fit of ``--scale_images`` synthetic images: sampling, seconds per sweep, peak memory."""
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as directory:
        start = time.perf_counter()
        cache = synthetic_cache(args.scale_images, directory)
        collect_s = time.perf_counter() - start
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
        rss_before = status_mb()
        start = time.perf_counter()
        sample = PixelSample(cache, args.pixels_per_image, seed=0)
        sample_s = time.perf_counter() - start
        out = dict(images=args.scale_images, pixels=args.pixels_per_image, collect_s=collect_s, sample_s=sample_s)
        for scope, kwargs in SCOPES.items():
            fit, fit_s = timed_fit(sample, args.device, max_sweeps=1, **kwargs)
            out[scope] = dict(sweep_s=fit_s, before=100 * fit.metric_before, after=100 * fit.metric_after)
        out["rss_growth_mb"] = status_mb("VmHWM") - rss_before
        del cache
    return out


def sampled_table(args) -> None:
    rows = []
    if "camvid" in args.cases:
        if not (Path(args.camvid_model) / "config.json").exists():
            raise SystemExit(
                f"{args.camvid_model} holds no model: run the README's CamVid command first "
                "(accelerate launch scripts/tune.py --config configs/camvid_quick.yaml), or pass --camvid_model"
            )
        caches = camvid_quick_caches(args)
        rows += sample_losses("CamVid train, 360 x 480", caches["train"], caches, args)
    if "synthetic" in args.cases:
        with tempfile.TemporaryDirectory(dir=args.cache_dir) as directory:
            cache = synthetic_cache(args.images, directory)
            rows += sample_losses(f"{args.images} synthetic Cityscapes", cache, {"fit split": cache}, args)
            del cache
    print(f"torch threads: {args.threads}, fit on: {args.device}\n")
    print(
        "| fitted on | metric | pixels per image | sample (s) | fit (s) | sweeps | full-resolution score "
        "| loss (points) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["scores"].items())
        loss = ", ".join(f"{k} {v:+.2f}" for k, v in r["loss"].items())
        print(
            f"| {r['case']} | {r['scope']} | {r['pixels']} | {r['sample_s']:.1f} | {r['fit_s']:.1f} | {r['sweeps']} "
            f"| {scores} | {loss} |"
        )
    if "scale" in args.cases:
        out = sampled_scale(args)
        print(
            f"\n{out['images']} synthetic Cityscapes images, {out['pixels']} pixels each: making the disk cache "
            f"{out['collect_s']:.0f} s, sampling {out['sample_s']:.0f} s, "
            f"peak memory growth {out['rss_growth_mb']:.0f} MB"
        )
        for scope in SCOPES:
            r = out[scope]
            print(f"- {scope}: one sweep {r['sweep_s']:.0f} s ({r['before']:.2f} -> {r['after']:.2f} on the sample)")


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
    """which table, and which cases of it"""

    table: str = field(default="sampled", metadata={"help": "'sampled' (the pixel-sample table) or 'exact'."})
    cases: list[str] = field(
        default_factory=lambda: ["camvid", "synthetic", "scale"], metadata={"help": "sampled: the cases to run."}
    )
    sample_sizes: list[int] = field(
        default_factory=lambda: [4096, 16384, 65536, 262144], metadata={"help": "sampled: the N to compare."}
    )
    pixels_per_image: int = field(
        default=DEFAULT_PIXELS_PER_IMAGE, metadata={"help": "sampled, scale: N for the 500-image fit (the default's)."}
    )
    scale_images: int = field(default=500, metadata={"help": "sampled, scale: synthetic images."})
    camvid_model: str = field(
        default="outputs/camvid_quick/pretrained", metadata={"help": "sampled, camvid: the model (see above)."}
    )
    case: str | None = field(default=None, metadata={"help": "exact: 'camvid' or 'synthetic', run here."})
    images: int = field(default=50, metadata={"help": "synthetic: images in the split."})
    camvid_root: str = field(default=DEFAULT_ROOT, metadata={"help": "CamVid's directory."})
    device: str = field(default="cpu", metadata={"help": "Where the fit computes: cpu, cuda, ..."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "synthetic: the disk cache's place (default: the temp dir)."}
    )


def main(argv: list[str] | None = None):
    (args,) = parse_config([BenchArguments], argv, description=__doc__.split("\n\n")[0])
    args.threads = torch.get_num_threads()
    if args.table == "sampled":
        sampled_table(args)
        return
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
