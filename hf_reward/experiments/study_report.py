"""A study's report: selection on dev, paired differences on validation, per-class IoU, curves.

For every metric of the study (:class:`hf_reward.experiments.study.StudyConfig` ``metrics``), each run is
scored raw (``argmax``) and by every decoder; a setting's decoded score is that of the decoder
with the best mean dev score over its seeds. For every arm and horizon, the learning rate is the
one with the best mean decoded dev score ("chosen"); validation is reported for every setting,
and the verdict uses the chosen ones only. An arm clears the bar when its decoded validation
score beats both

- the best decoder alone (the starting checkpoint, its decoder chosen on dev), and
- the control then its best decoder (the control at the same horizon and its own chosen learning
  rate, paired by seed),

by at least ``bar`` points, each gain larger than two standard deviations (over seeds for the
first, of the paired differences for the second).
"""

from __future__ import annotations

import functools
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..metrics import class_key, resampled_scores
from ..selection import bootstrap_weights, paired_interval
from .harness import mean_sd


def value(scores: dict, split: str, decoder: str, metric: str) -> float:
    return scores[split][decoder][metric]


def _gain(deltas: list[float], bar: float) -> tuple[str, bool]:
    """``"+x.xx ± y.yy"`` in points, and whether the mean is >= ``bar`` and > 2 sd."""
    if not deltas:
        return "—", False
    mean = statistics.mean(deltas)
    if len(deltas) == 1:  # one seed: a gain, but no evidence that it exceeds the noise
        return f"{100 * mean:+.2f}", False
    sd = statistics.stdev(deltas)
    return f"{100 * mean:+.2f} ± {100 * sd:.2f}", mean >= bar and mean > 2 * sd


def group(results: list[dict]) -> dict[tuple[str, str, float], dict[int, dict]]:
    """(arm, horizon, learning rate) -> {seed: run}, in the order of the runs."""
    groups = defaultdict(dict)
    for r in results:
        groups[(r["arm"], r["horizon"], r["learning_rate"])][r["seed"]] = r
    return groups


def best_decoder(runs: list[dict], decoders: list[str], metric: str) -> str:
    """The decoder with the best mean dev score over ``runs`` (the raw argmax if it is the only one)."""
    candidates = [d for d in decoders if d != "argmax"] or ["argmax"]
    return max(candidates, key=lambda d: statistics.mean(value(r["scores"], "dev", d, metric) for r in runs))


def chosen(groups: dict, decoders: list[str], metric: str) -> dict[tuple[str, str], tuple[float, str]]:
    """(arm, horizon) -> (learning rate, decoder) with the best mean decoded dev score."""
    best = {}
    for (arm, horizon, lr), runs in groups.items():
        decoder = best_decoder(list(runs.values()), decoders, metric)
        score = statistics.mean(value(r["scores"], "dev", decoder, metric) for r in runs.values())
        if (arm, horizon) not in best or score > best[(arm, horizon)][2]:
            best[(arm, horizon)] = (lr, decoder, score)
    return {key: (lr, decoder) for key, (lr, decoder, _) in best.items()}


def _verdict(cfg, groups: dict, picks: dict, alone: float, metric: str, key: tuple) -> dict:
    """The validation comparison of one setting ``key`` = (arm, horizon, lr), decoded by its dev-best decoder."""
    arm, horizon, _ = key
    runs = groups[key]
    decoder = best_decoder(list(runs.values()), cfg.decoders, metric)
    val = {s: value(r["scores"], cfg.report_split, decoder, metric) for s, r in runs.items()}
    over_start, ok_start = _gain([v - alone for v in val.values()], cfg.bar / 100)
    lr_c, dec_c = picks.get((cfg.control, horizon), (None, None))
    controls = groups.get((cfg.control, horizon, lr_c), {})
    paired = [val[s] - value(controls[s]["scores"], cfg.report_split, dec_c, metric) for s in val if s in controls]
    over_control, ok_control = _gain(paired, cfg.bar / 100) if arm != cfg.control else ("—", False)
    return {
        "decoder": decoder,
        "val": mean_sd(list(val.values())),
        "over_start": over_start,
        "over_control": over_control,
        "clears": ok_start and ok_control,
    }


def metric_table(cfg, start: dict, results: list[dict], metric: str) -> list[str]:
    """The table of one metric: every setting, raw and decoded, with the verdict on the chosen ones."""
    groups = group(results)
    picks = chosen(groups, cfg.decoders, metric)
    start_decoder = best_decoder([{"scores": start}], cfg.decoders, metric)
    alone = value(start, cfg.report_split, start_decoder, metric)
    lines = [
        f"**{metric}**. Start: dev {value(start, 'dev', 'argmax', metric):.4f} raw, "
        f"{value(start, 'dev', start_decoder, metric):.4f} by {start_decoder} (its best decoder on dev); validation "
        f"{value(start, cfg.report_split, 'argmax', metric):.4f} raw, {alone:.4f} by {start_decoder}.",
        "",
        f"| arm | horizon | lr | chosen on dev | decoder | dev raw | dev decoded | {cfg.report_split} raw | "
        f"{cfg.report_split} decoded | "
        f"Δ vs {start_decoder} alone | Δ vs {cfg.control}, decoded | clears the bar | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arm, horizon, lr), runs in groups.items():
        is_chosen = picks[(arm, horizon)][0] == lr
        row = _verdict(cfg, groups, picks, alone, metric, (arm, horizon, lr))
        verdict = ("yes" if row["clears"] else "no") if is_chosen and arm != cfg.control else ""
        cells = [
            mean_sd([value(r["scores"], split, d, metric) for r in runs.values()])
            for split in ("dev", cfg.report_split)
            for d in ("argmax", row["decoder"])
        ]
        step = statistics.mean(r["seconds_per_step"] for r in runs.values())
        lines.append(
            f"| {arm} | {horizon} | {lr:g} | {'yes' if is_chosen else ''} | {row['decoder']} | {' | '.join(cells)} | "
            f"{row['over_start']} | {row['over_control']} | {verdict} | {step:.2f} |"
        )
    return lines


def _dev_score(groups: dict, picks: dict, metric: str, arm: str, horizon: str) -> float:
    """The mean decoded dev score of an arm's chosen setting at ``horizon``."""
    lr, decoder = picks[(arm, horizon)]
    return statistics.mean(value(r["scores"], "dev", decoder, metric) for r in groups[(arm, horizon, lr)].values())


def verdict_table(cfg, start: dict, results: list[dict]) -> list[str]:
    """One row per metric and horizon: the best decoder alone, the control then its best decoder, and the arm
    (not the control) whose chosen setting has the best decoded dev score, with its verdict."""
    groups = group(results)
    lines = [
        f"| metric | horizon | best decoder alone ({cfg.report_split}) | "
        f"{cfg.control}, decoded ({cfg.report_split}) | best other arm on dev | its {cfg.report_split}, decoded | "
        "Δ vs decoder alone | "
        f"Δ vs {cfg.control}, decoded | clears the bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for metric in cfg.metrics:
        picks = chosen(groups, cfg.decoders, metric)
        start_decoder = best_decoder([{"scores": start}], cfg.decoders, metric)
        alone = value(start, cfg.report_split, start_decoder, metric)
        for horizon in cfg.horizons:
            if (cfg.control, horizon) not in picks:
                continue
            control = _verdict(
                cfg, groups, picks, alone, metric, (cfg.control, horizon, picks[(cfg.control, horizon)][0])
            )

            others = [arm for arm, h in picks if h == horizon and arm != cfg.control]
            if not others:
                continue
            best = max(others, key=lambda arm, h=horizon, p=picks, m=metric: _dev_score(groups, p, m, arm, h))
            row = _verdict(cfg, groups, picks, alone, metric, (best, horizon, picks[(best, horizon)][0]))
            lines.append(
                f"| {metric} | {horizon} | {alone:.4f} ({start_decoder}) | {control['val']} ({control['decoder']}) | "
                f"{best} | {row['val']} ({row['decoder']}) | {row['over_start']} | {row['over_control']} | "
                f"{'yes' if row['clears'] else 'no'} |"
            )
    return lines


def report(cfg, start: dict, results: list[dict], id2label: dict[int, str], out: Path, minutes: float) -> str:
    """``results.md`` (a table per metric, per-class IoU) and, when the runs were evaluated during training,
    ``curves.png`` in ``out``; the text."""
    lines = [
        f"Mean ± sd over seeds {cfg.seeds}; Δ in points. This invocation took {minutes:.0f} min (stages cached by "
        "earlier ones not counted).",
        "",
    ]
    lines += ["Summary: each metric's best decoder alone, the control and the best other arm chosen on dev.", ""]
    lines += verdict_table(cfg, start, results) + [""]
    for metric in cfg.metrics:
        lines += metric_table(cfg, start, results, metric) + [""]
    first = cfg.metrics[0]
    picks = chosen(group(results), cfg.decoders, first)
    start_decoder = best_decoder([{"scores": start}], cfg.decoders, first)
    lines += [
        f"Per-class {cfg.report_split} IoU, mean over seeds, at the settings chosen on dev for {first}, decoded:",
        "",
        "| model | " + " | ".join(id2label[i] for i in sorted(id2label)) + " |",
        "|---" * (len(id2label) + 1) + "|",
        f"| start, {start_decoder} | "
        + " | ".join(
            f"{value(start, cfg.report_split, start_decoder, class_key(id2label[i])):.3f}" for i in sorted(id2label)
        )
        + " |",
    ]
    groups = group(results)
    for (arm, horizon), (lr, decoder) in picks.items():
        runs = groups[(arm, horizon, lr)].values()
        ious = [
            statistics.mean(value(r["scores"], cfg.report_split, decoder, class_key(id2label[i])) for r in runs)
            for i in sorted(id2label)
        ]
        lines.append(f"| {arm}, {horizon}, {decoder} | " + " | ".join(f"{v:.3f}" for v in ious) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    if any(r["eval_curve"] for r in results):  # runs evaluated only at the end have no curve worth a picture
        plot_curves(cfg, groups, picks, start, start_decoder, out / "curves.png")
    return text


def plot_curves(cfg, groups: dict, picks: dict, start: dict, start_decoder: str, path: Path) -> None:
    """One row per horizon: the first metric on validation during training (raw, when the trainer logs it) and,
    dashed, each arm's decoded end point (mean over seeds, chosen settings); the start's decoder alone dotted."""
    from ..plots import pyplot

    metric = cfg.metrics[0]
    plt = pyplot()
    horizons = list(cfg.horizons)
    fig, axes = plt.subplots(len(horizons), 1, figsize=(13, 4 * len(horizons)), squeeze=False)
    arms = list(dict.fromkeys(arm for arm, _ in picks))
    colours = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(arms)}
    key = f"eval_{cfg.report_split}_{metric}"
    for ax, horizon in zip(axes[:, 0], horizons):
        for arm in arms:
            if (arm, horizon) not in picks:
                continue
            lr, decoder = picks[(arm, horizon)]
            runs = list(groups[(arm, horizon, lr)].values())
            curves = [
                [value(start, cfg.report_split, "argmax", metric)] + [e[key] for e in r["eval_curve"] if key in e]
                for r in runs
            ]
            steps = [0] + [e["step"] for e in runs[0]["eval_curve"] if key in e]
            if len(steps) > 1:
                mean = [statistics.mean(v) for v in zip(*curves)]
                ax.plot(steps, mean, "o-", markersize=3, color=colours[arm], label=f"{arm} (lr {lr:g})")
            end = statistics.mean(value(r["scores"], cfg.report_split, decoder, metric) for r in runs)
            ax.axhline(end, color=colours[arm], linestyle="--", linewidth=1, label=f"{arm}, {decoder} at the end")
        ax.axhline(
            value(start, cfg.report_split, start_decoder, metric),
            color="grey",
            linestyle=":",
            label=f"{start_decoder} alone",
        )
        ax.set(
            xlabel="tuning step",
            ylabel=f"{cfg.report_split} {metric}",
            title=f"{horizon} horizon: raw during training, decoded at the end (dashed)",
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: no curve hidden
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


# The cross-sequence protocol (the study's ``folds``): each fold's runs and start judged on its held-out sequence,
# pooled over folds, with paired bootstrap intervals over images and seeds.


def _concat(records: list[dict]) -> dict:
    return {k: torch.cat([r[k] for r in records]) for k in records[0]}


def fold_report(cfg, per_fold: dict[str, tuple[dict, list[dict]]], out: Path, minutes: float) -> str:
    """The cross-sequence report, ``results.md`` in ``out``; the text.

    ``per_fold``: held-out sequence -> (the start's result, the runs' results), as
    :func:`hf_reward.experiments.study.run_all` returns them (``scores`` and the scores file's ``path``). On each
    fold the start is decoded by its dev-best decoder, and every arm by its dev-best learning rate
    and decoder. Every Δ is on the held-out frames, per fold and pooled over the folds' frames, with
    a 95% paired bootstrap interval (:func:`paired_interval`). An arm clears the bar when its
    pooled Δ over both the start and the control is at least ``bar`` with the interval above 0,
    and no fold's Δ is below 0.
    """
    from .study import image_records

    folds = list(per_fold)
    records = functools.lru_cache(maxsize=None)(image_records)
    rng = np.random.default_rng(0)
    sizes = [len(records(per_fold[f][0]["path"])[HELDOUT]["argmax"]["counts"]) for f in folds]
    weights = bootstrap_weights(sizes, cfg.bootstrap_samples, rng)
    ends = np.cumsum([0] + sizes)
    parts = {**{f: weights[:, ends[i] : ends[i + 1]] for i, f in enumerate(folds)}, "pooled": weights}
    tables, summary, decoders = [], [], []
    agree, asked = 0, 0
    for metric in cfg.metrics:
        decoders.append(_decoder_row(cfg, per_fold, records, metric, parts, rng))
        for horizon in cfg.horizons:
            candidates = _candidates(cfg, per_fold, records, metric, horizon)
            if cfg.control not in candidates:
                continue
            for f in folds:  # does dev pick the candidate that is best on the held-out fold?
                by_dev = max(candidates, key=lambda c, f=f: candidates[c][f]["dev"])
                by_heldout = max(candidates, key=lambda c, f=f: candidates[c][f]["heldout"])
                agree, asked = agree + (by_dev == by_heldout), asked + 1
            rows = {name: _gaps(cfg, candidates, name, metric, parts, rng) for name in candidates}
            tables += _fold_table(cfg, metric, horizon, candidates, rows, folds)
            others = [c for c in candidates if c not in ("start", cfg.control)]
            if others:  # the arm whose chosen settings have the best dev score, mean over folds
                best = max(others, key=lambda c: statistics.mean(candidates[c][f]["dev"] for f in folds))
                row = rows[best]
                summary.append(
                    f"| {metric} | {horizon} | {100 * rows['start']['score']:.2f} | "
                    f"{100 * rows[cfg.control]['score']:.2f} | {best} | {100 * row['score']:.2f} | "
                    f"{_points(row[('start', 'pooled')])} | {_points(row[(cfg.control, 'pooled')])} | "
                    + " / ".join(f"{100 * row[('start', f)][0]:+.2f}" for f in folds)
                    + f" | {'yes' if row['clears'] else 'no'} |"
                )
    lines = [
        f"Cross-sequence protocol: {', '.join(f'{f} ({n} images)' for f, n in zip(folds, sizes))} held out in turn; "
        f"training, dev and decoder fitting on the other sequences. Scores in points on the held-out frames, "
        f"pooled over the folds, mean over seeds; Δ with a 95% paired bootstrap interval ({cfg.bootstrap_samples} "
        f"resamples of the images within each fold, and of the seeds). Clears the bar: pooled Δ >= {cfg.bar:g} over "
        "both the start and the control (each decoded by its dev-best decoder) with the interval above 0, and no "
        f"fold below 0. This invocation took {minutes:.0f} min (stages cached by earlier ones not counted).",
        "",
        "The start by each decoder (pooled held-out score), and the gain of its dev-chosen decoder (per fold) over "
        "the argmax:",
        "",
        "| metric | " + " | ".join(cfg.decoders) + " | dev-chosen decoder per fold | Δ vs argmax, pooled |",
        "|---" * (len(cfg.decoders) + 3) + "|",
        *decoders,
        "",
        "Summary: each metric's start and control, each decoded, and the arm best on dev (mean over folds):",
        "",
        f"| metric | horizon | start | {cfg.control} | best arm on dev | its score | Δ vs start | "
        f"Δ vs {cfg.control} | Δ vs start per fold ({' / '.join(folds)}) | clears the bar |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *summary,
        "",
        f"Dev picks the candidate best on the held-out fold (the start or an arm, each decoded) in {agree} of {asked} "
        "(fold, metric, horizon) cases.",
        "",
        *tables,
    ]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


HELDOUT = "heldout"  # a fold's report split (hf_reward.experiments.study.StudyConfig.report_split)


def _candidates(cfg, per_fold: dict, records, metric: str, horizon: str) -> dict[str, dict[str, dict]]:
    """name -> fold -> the start's or an arm's chosen setting on that fold: its ``label``, per-seed held-out
    ``records``, mean ``dev`` and ``heldout`` scores. Only arms with every seed of the horizon on every fold."""
    seeds = cfg.horizons[horizon].get("seeds", cfg.seeds)
    candidates = defaultdict(dict)
    for f, (start, results) in per_fold.items():
        decoder = best_decoder([start], cfg.decoders, metric)
        candidates["start"][f] = {
            "label": decoder,
            "records": [records(start["path"])[HELDOUT][decoder]] * len(seeds),
            "dev": value(start["scores"], "dev", decoder, metric),
            HELDOUT: value(start["scores"], HELDOUT, decoder, metric),
        }
        groups = group(results)
        for (arm, h), (lr, decoder) in chosen(groups, cfg.decoders, metric).items():
            runs = groups[(arm, h, lr)]
            if h == horizon and set(seeds) <= set(runs):
                candidates[arm][f] = {
                    "label": f"{decoder}, lr {lr:g}",
                    "records": [records(runs[s]["path"])[HELDOUT][decoder] for s in seeds],
                    **{
                        sp: statistics.mean(value(runs[s]["scores"], sp, decoder, metric) for s in seeds)
                        for sp in ("dev", HELDOUT)
                    },
                }
    return {name: c for name, c in candidates.items() if set(c) == set(per_fold)}


def _series(candidate: dict[str, dict]) -> dict[str, list[dict]]:
    """fold (and ``pooled``) -> a candidate's per-seed records on that part's images."""
    folds = list(candidate)
    seeds = range(len(candidate[folds[0]]["records"]))
    pooled = [
        {k: torch.cat([candidate[f]["records"][i][k] for f in folds]) for k in candidate[folds[0]]["records"][i]}
        for i in seeds
    ]
    return {**{f: candidate[f]["records"] for f in folds}, "pooled": pooled}


def _gaps(cfg, candidates: dict, name: str, metric: str, parts: dict, rng) -> dict:
    """A candidate's pooled ``score``, its Δ over the start and the control on every part, and the verdict."""
    mine = _series(candidates[name])
    everything = torch.ones_like(parts["pooled"][:1])
    row = {"score": statistics.mean(float(resampled_scores(r, everything)[metric]) for r in mine["pooled"])}
    for reference in ("start", cfg.control):
        if name != "start" and reference != name:
            theirs = _series(candidates[reference])
            for part, w in parts.items():
                row[(reference, part)] = paired_interval(mine[part], theirs[part], metric, w, rng)
    refs = [row[(r, "pooled")] for r in ("start", cfg.control) if (r, "pooled") in row]
    per_fold = [v[0] for k, v in row.items() if isinstance(k, tuple) and k[1] != "pooled"]
    row["clears"] = (
        name not in ("start", cfg.control)
        and all(mean >= cfg.bar / 100 and low > 0 for mean, low, _ in refs)
        and min(per_fold) >= 0
    )
    return row


def _fold_table(cfg, metric: str, horizon: str, candidates: dict, rows: dict, folds: list[str]) -> list[str]:
    seeds = cfg.horizons[horizon].get("seeds", cfg.seeds)
    lines = [
        f"**{metric}, {horizon} horizon** (seeds {seeds}); decoder and learning rate chosen on each fold's dev:",
        "",
        "| candidate | chosen per fold | held-out | "
        + " | ".join(f"Δ vs {ref}, {part}" for ref in ("start", cfg.control) for part in [*folds, "pooled"])
        + " | clears the bar |",
        "|---" * (2 * len(folds) + 6) + "|",
    ]
    for name, row in rows.items():
        cells = [
            _points(row[(ref, part)]) if (ref, part) in row else ""
            for ref in ("start", cfg.control)
            for part in [*folds, "pooled"]
        ]
        verdict = "" if name in ("start", cfg.control) else "yes" if row["clears"] else "no"
        chosen_here = "; ".join(candidates[name][f]["label"] for f in folds)
        lines.append(f"| {name} | {chosen_here} | {100 * row['score']:.2f} | " + " | ".join(cells) + f" | {verdict} |")
    return lines + [""]


def _decoder_row(cfg, per_fold: dict, records, metric: str, parts: dict, rng) -> str:
    """The start's pooled held-out score by each decoder, and its dev-chosen decoder's Δ over the argmax."""
    folds = list(per_fold)
    everything = torch.ones_like(parts["pooled"][:1])

    def start(decoders: dict[str, str]) -> list[dict]:  # the start decoded by decoders[fold], pooled, as one seed
        return _series({f: {"records": [records(per_fold[f][0]["path"])[HELDOUT][d]]} for f, d in decoders.items()})[
            "pooled"
        ]

    cells = [
        f"{100 * float(resampled_scores(start(dict.fromkeys(folds, d))[0], everything)[metric]):.2f}"
        for d in cfg.decoders
    ]
    chosen_decoders = {f: best_decoder([per_fold[f][0]], cfg.decoders, metric) for f in folds}
    gap = paired_interval(start(chosen_decoders), start(dict.fromkeys(folds, "argmax")), metric, parts["pooled"], rng)
    return f"| {metric} | " + " | ".join(cells) + f" | {', '.join(chosen_decoders.values())} | {_points(gap)} |"


def _points(interval: tuple[float, float, float]) -> str:
    mean, low, high = (100 * v for v in interval)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
