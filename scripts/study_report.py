"""The CamVid study's report: selection on dev, paired differences on validation, per-class IoU, curves.

The metric is the study's ``metric`` (a reward of :mod:`hf_reward.rewards`, mIoU unless the
config names another): the runs are calibrated for it, and it is what every number below is.
For every arm and horizon, the learning rate is the one with the best mean calibrated dev score
("chosen"); validation is reported for every setting, and the verdict uses the chosen ones only.
An arm clears the bar when its calibrated validation score beats both

- calibration alone (the starting checkpoint, calibrated), and
- cross-entropy then calibration (the control at the same horizon and its own chosen learning
  rate, paired by seed),

by at least ``bar`` points, each gain larger than two standard deviations (over seeds for the
first, of the paired differences for the second).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

SPLITS = {"dev": "eval_dev_reward", "val": "eval_validation_reward"}  # the study's metric


def _value(run: dict, split: str, calibrated: bool) -> float:
    return run["calibrated" if calibrated else "raw"][SPLITS[split]]


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:  # one seed: no spread to report
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


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


def chosen(groups: dict) -> dict[tuple[str, str], float]:
    """(arm, horizon) -> the learning rate with the best mean calibrated dev score."""
    best = {}
    for (arm, horizon, lr), runs in groups.items():
        score = statistics.mean(_value(r, "dev", True) for r in runs.values())
        if (arm, horizon) not in best or score > best[(arm, horizon)][1]:
            best[(arm, horizon)] = (lr, score)
    return {key: lr for key, (lr, _) in best.items()}


def report(cfg: dict, start: dict, results: list[dict], id2label: dict[int, str], out: Path, minutes: float) -> str:
    groups, bar, control = group(results), cfg["bar"] / 100, cfg["control"]
    picks = chosen(groups)
    start_cal = _value(start, "val", True)
    start_line = (
        f"Metric: {cfg['metric']}. Starting checkpoint: dev {_value(start, 'dev', False):.4f} raw, "
        f"{_value(start, 'dev', True):.4f} calibrated; validation {_value(start, 'val', False):.4f} raw, "
        f"{start_cal:.4f} calibrated."
    )
    lines = [
        f"{start_line} Mean ± sd over seeds {cfg['seeds']}; Δ in points. This invocation took {minutes:.0f} min "
        "(stages cached by earlier ones not counted).",
        "",
        "| arm | horizon | lr | chosen on dev | dev raw | dev calibrated | val raw | val calibrated | "
        "Δ vs calibration alone | Δ vs cross-entropy, calibrated | clears the bar | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arm, horizon, lr), runs in groups.items():
        is_chosen = picks[(arm, horizon)] == lr
        val_cal = {s: _value(r, "val", True) for s, r in runs.items()}
        over_start, ok_start = _gain([v - start_cal for v in val_cal.values()], bar)
        controls = groups.get((control, horizon, picks.get((control, horizon))), {})
        paired = [val_cal[s] - _value(controls[s], "val", True) for s in val_cal if s in controls]
        over_ce, ok_ce = _gain(paired, bar) if arm != control else ("—", False)
        verdict = ("yes" if ok_start and ok_ce else "no") if is_chosen and arm != control else ""
        cells = [_mean_sd([_value(r, split, cal) for r in runs.values()]) for split in SPLITS for cal in (False, True)]
        step = statistics.mean(r["seconds_per_step"] for r in runs.values())
        lines.append(
            f"| {arm} | {horizon} | {lr:g} | {'yes' if is_chosen else ''} | {' | '.join(cells)} | "
            f"{over_start} | {over_ce} | {verdict} | {step:.2f} |"
        )
    lines += [
        "",
        "Per-class calibrated validation IoU, mean over seeds, at the learning rates chosen on dev:",
        "",
        "| model | " + " | ".join(id2label[i] for i in sorted(id2label)) + " |",
        "|---" * (len(id2label) + 1) + "|",
        "| start | " + " | ".join(f"{start['calibrated'][_iou(i, id2label)]:.3f}" for i in sorted(id2label)) + " |",
    ]
    for (arm, horizon), lr in picks.items():
        runs = groups[(arm, horizon, lr)].values()
        ious = [statistics.mean(r["calibrated"][_iou(i, id2label)] for r in runs) for i in sorted(id2label)]
        lines.append(f"| {arm}, {horizon} | " + " | ".join(f"{v:.3f}" for v in ious) + " |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    plot_curves(cfg, groups, picks, start, out / "curves.png")
    return text


def _iou(i: int, id2label: dict[int, str]) -> str:
    return f"eval_validation_iou_{id2label[i]}"


def plot_curves(cfg: dict, groups: dict, picks: dict, start: dict, path: Path) -> None:
    """One row per horizon: the raw validation score against steps and, dashed, each arm's calibrated end point
    (mean over seeds, at the chosen learning rate), with calibration alone as the dotted grey line."""
    from hf_reward.plots import pyplot

    plt = pyplot()
    horizons = list(cfg["horizons"])
    fig, axes = plt.subplots(len(horizons), 1, figsize=(9, 4 * len(horizons)), squeeze=False)
    arms = list(dict.fromkeys(arm for arm, _ in picks))
    colours = {arm: plt.get_cmap("tab10")(i % 10) for i, arm in enumerate(arms)}
    for ax, horizon in zip(axes[:, 0], horizons):
        for arm in arms:
            if (arm, horizon) not in picks:
                continue
            runs = list(groups[(arm, horizon, picks[(arm, horizon)])].values())
            steps = [0] + [e["step"] for e in runs[0]["eval_curve"] if "eval_validation_reward" in e]
            curves = [
                [_value(start, "val", False)]
                + [e["eval_validation_reward"] for e in r["eval_curve"] if "eval_validation_reward" in e]
                for r in runs
            ]
            ax.plot(
                steps,
                [statistics.mean(v) for v in zip(*curves)],
                "o-",
                markersize=3,
                color=colours[arm],
                label=f"{arm} (lr {picks[(arm, horizon)]:g})",
            )
            ax.axhline(
                statistics.mean(_value(r, "val", True) for r in runs), color=colours[arm], linestyle="--", linewidth=1
            )
        ax.axhline(_value(start, "val", True), color="grey", linestyle=":", label="calibration alone")
        ax.set(
            xlabel="tuning step",
            ylabel=f"validation {cfg['metric']}",
            title=f"{horizon} horizon: raw during training, calibrated at the end (dashed)",
        )
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
