"""scripts/study.py and study_report.py: the dev split, selection on dev, the paired verdict, and a tiny study."""

import json

import pytest
import yaml
from conftest import CAMVID, ROOT, load_script

STUDY, REPORT = load_script("study"), load_script("study_report")
ID2LABEL = {0: "road", 1: "car"}


def test_dev_split_is_the_first_frames_of_each_sequence():
    files = [
        "B_00030.png",
        "A_f00900.png",
        "A_f00930.png",
        "B_00000.png",
        "A_f00960.png",
        "A_f00870.png",
        "B_00060.png",
        "B_00090.png",
        "A_f00990.png",
        "A_f01020.png",
    ]
    # A: 870 900 930 960 990 1020 -> first 20% is 1 frame (870, row 5); B: 0 30 60 90 -> 1 frame (0, row 3)
    assert STUDY.dev_rows(files, 0.2) == [3, 5]
    # 50%: A's 870, 900, 930 (rows 5, 1, 2) and B's 0, 30 (rows 3, 0)
    assert STUDY.dev_rows(files, 0.5) == [0, 1, 2, 3, 5]


def fake_run(arm, horizon, lr, seed, dev, val, val_cal):
    def metrics(d, v):
        return {
            "eval_dev_reward": d,
            "eval_validation_reward": v,  # noqa: E731
            "eval_validation_iou_road": v,
            "eval_validation_iou_car": v,
        }

    return {
        "arm": arm,
        "horizon": horizon,
        "learning_rate": lr,
        "seed": seed,
        "raw": metrics(dev, val - 0.01),
        "calibrated": metrics(dev, val_cal),
        "seconds_per_step": 0.5,
        "eval_curve": [],
        "train_logs": [],
    }


def test_report_chooses_on_dev_and_pairs_with_the_control_by_seed(tmp_path):
    cfg = {"bar": 1.0, "control": "ce", "seeds": [0, 1, 2], "horizons": {"short": {}}, "metric": "mIoU"}
    start = {
        "raw": {"eval_dev_reward": 0.3, "eval_validation_reward": 0.4},
        "calibrated": {
            "eval_dev_reward": 0.32,
            "eval_validation_reward": 0.42,
            "eval_validation_iou_road": 0.5,
            "eval_validation_iou_car": 0.34,
        },
    }
    results = []
    for seed in range(3):
        results += [
            fake_run("ce", "short", 1e-4, seed, 0.30, 0.40, 0.420 + 0.001 * seed),
            fake_run("ce", "short", 3e-5, seed, 0.31, 0.40, 0.400),  # better on dev: chosen
            fake_run("arm", "short", 1e-4, seed, 0.40, 0.45, 0.450 + 0.001 * seed),  # chosen, clears the bar
            fake_run("arm", "short", 3e-4, seed, 0.20, 0.60, 0.600),
        ]  # best on validation, not chosen
    picks = REPORT.chosen(REPORT.group(results))
    assert picks == {("ce", "short"): 3e-5, ("arm", "short"): 1e-4}
    text = REPORT.report(cfg, start, results, ID2LABEL, tmp_path, minutes=1.0)
    row = next(line for line in text.splitlines() if line.startswith("| arm | short | 0.0001 |"))
    assert "| yes |" in row and "+3.10 ± 0.10" in row and "+5.10 ± 0.10" in row and row.count("| yes |") == 2
    unchosen = next(line for line in text.splitlines() if line.startswith("| arm | short | 0.0003 |"))
    assert "| yes |" not in unchosen  # the validation-best setting was not chosen, so it has no verdict
    assert (tmp_path / "results.md").is_file() and (tmp_path / "curves.png").is_file()


def test_report_of_one_seed_shows_no_spread_and_no_verdict(tmp_path):
    cfg = {"bar": 1.0, "control": "ce", "seeds": [0], "horizons": {"short": {}}, "metric": "mIoU"}
    start = fake_run("start", "", 0, 0, 0.32, 0.42, 0.42)  # calibrated: dev 0.32, validation 0.42
    results = [fake_run("ce", "short", 1e-4, 0, 0.30, 0.40, 0.42), fake_run("arm", "short", 1e-4, 0, 0.4, 0.45, 0.5)]
    text = REPORT.report(cfg, start, results, ID2LABEL, tmp_path, minutes=1.0)
    row = next(line for line in text.splitlines() if line.startswith("| arm | short |"))
    assert "nan" not in text and "inf" not in text and "±" not in row
    assert row.endswith("| +8.00 | +8.00 | no | 0.50 |")  # 8 points up on both, but one seed proves nothing


@pytest.mark.slow
def test_a_tiny_study_runs_every_stage_and_caches_them(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/study_camvid.yaml").read_text())
    cfg.update(
        output_dir=str(tmp_path / "study"),
        data_root=str(CAMVID),
        size=[32, 44],
        seeds=[0],
        model={"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "decoder_hidden_size": 16},
        pretrain={**cfg["pretrain"], "max_steps": 4},
        horizons={"short": {"max_steps": 2, "lr_scheduler_type": "constant", "eval_steps": 1, "logging_steps": 1}},
        arms={
            "ce": {"reward_weight": 0.0, "ce_weight": 1.0, "learning_rates": [1e-4], "horizons": ["short"]},
            "local": {"learning_rates": [1e-4], "horizons": ["short"]},
        },
    )
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    STUDY.main(["--config", str(config), "--jobs", "1"])
    out = tmp_path / "study"
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs == ["ce_hshort_lr0.0001_seed0.json", "local_hshort_lr0.0001_seed0.json"]
    local = json.loads((out / "runs" / runs[1]).read_text())
    assert {"eval_dev_reward", "eval_validation_reward"} <= set(local["calibrated"]) and len(local["offsets"]) == 11
    assert any("scope_reward" in e for e in local["train_logs"])
    assert "| local | short | 0.0001 | yes |" in (out / "results.md").read_text()
    mtime = (out / "runs" / runs[0]).stat().st_mtime
    STUDY.main(["--config", str(config), "--jobs", "1"])  # everything cached: nothing runs again
    assert (out / "runs" / runs[0]).stat().st_mtime == mtime


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("study_*.yaml")), ids=lambda p: p.name)
def test_every_study_config_builds_every_run(path, tmp_path):
    """Each arm x horizon x learning rate is a valid RewardSegConfig, and the control is among the arms."""
    cfg = yaml.safe_load(path.read_text())
    assert path.read_text().startswith(f"# python scripts/study.py --config configs/{path.name}")
    assert cfg["control"] in cfg["arms"] and cfg["metric"]
    for arm in cfg["arms"].values():
        fields = {k: v for k, v in arm.items() if k not in ("learning_rates", "horizons", "calibrate_first")}
        for horizon in arm["horizons"]:
            for lr in STUDY.learning_rates(arm, horizon):
                args = STUDY.config(tmp_path, {**cfg["tune"], **fields, **cfg["horizons"][horizon]}, learning_rate=lr)
                assert args.max_steps == cfg["horizons"][horizon]["max_steps"] and args.learning_rate == lr
