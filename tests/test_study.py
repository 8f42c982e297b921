"""hf_reward.study and study_report: the dev split, selection on dev, the paired verdict, caching, a tiny study."""

import dataclasses
import json

import pytest
import torch
import yaml
from conftest import CAMVID, ROOT, load_script

from hf_reward.cli import parse_config
from hf_reward.decoders import _cache, fit_decoders
from hf_reward.experiments import study_report as REPORT
from hf_reward.experiments.study import (
    Arm,
    Run,
    StudyConfig,
    dev_rows,
    image_records,
    load_study_data,
    pretrained_checkpoint,
    run_dir,
    run_key,
    train_run,
)
from hf_reward.modeling import load_segmentation_model
from hf_reward.rewards import get_reward

STUDY = load_script("study")
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
    assert dev_rows(files, 0.2) == [3, 5]
    # 50%: A's 870, 900, 930 (rows 5, 1, 2) and B's 0, 30 (rows 3, 0)
    assert dev_rows(files, 0.5) == [0, 1, 2, 3, 5]


def scores(dev_raw, dev_cal, val_raw, val_cal):
    def metrics(v):
        return {"reward": v, "iou_road": v, "iou_car": v}

    return {
        "dev": {"argmax": metrics(dev_raw), "offsets": metrics(dev_cal)},
        "validation": {"argmax": metrics(val_raw), "offsets": metrics(val_cal)},
    }


def fake_run(arm, horizon, lr, seed, dev, val, val_cal):
    return {
        "arm": arm,
        "horizon": horizon,
        "learning_rate": lr,
        "seed": seed,
        "scores": scores(dev, dev, val - 0.01, val_cal),
        "seconds_per_step": 0.5,
        "eval_curve": [],
        "train_logs": [],
    }


def config(**changes):
    arms = {
        "ce": {"learning_rates": [1e-4], "horizons": ["short"]},
        "arm": {"learning_rates": [1e-4], "horizons": ["short"]},
    }
    return StudyConfig(**{"horizons": {"short": {"max_steps": 2}}, "arms": arms, "metrics": ["reward"], **changes})


def test_report_chooses_on_dev_and_pairs_with_the_control_by_seed(tmp_path):
    cfg = config(seeds=[0, 1, 2])
    start = scores(0.3, 0.32, 0.4, 0.42)
    results = []
    for seed in range(3):
        results += [
            fake_run("ce", "short", 1e-4, seed, 0.30, 0.40, 0.420 + 0.001 * seed),
            fake_run("ce", "short", 3e-5, seed, 0.31, 0.40, 0.400),  # better on dev: chosen
            fake_run("arm", "short", 1e-4, seed, 0.40, 0.45, 0.450 + 0.001 * seed),  # chosen, clears the bar
            fake_run("arm", "short", 3e-4, seed, 0.20, 0.60, 0.600),
        ]  # best on validation, not chosen
    picks = REPORT.chosen(REPORT.group(results), cfg.decoders, "reward")
    assert picks == {("ce", "short"): (3e-5, "offsets"), ("arm", "short"): (1e-4, "offsets")}
    text = REPORT.report(cfg, start, results, ID2LABEL, tmp_path, minutes=1.0)
    row = next(line for line in text.splitlines() if line.startswith("| arm | short | 0.0001 |"))
    assert "| yes |" in row and "+3.10 ± 0.10" in row and "+5.10 ± 0.10" in row and row.count("| yes |") == 2
    summary = next(line for line in text.splitlines() if line.startswith("| reward | short |"))
    assert summary.startswith("| reward | short | 0.4200 (offsets) | 0.4000 ± 0.0000 (offsets) | arm |")
    assert summary.endswith("| +3.10 ± 0.10 | +5.10 ± 0.10 | yes |")
    unchosen = next(line for line in text.splitlines() if line.startswith("| arm | short | 0.0003 |"))
    assert "| yes |" not in unchosen  # the validation-best setting was not chosen, so it has no verdict
    assert (tmp_path / "results.md").is_file()
    assert not (tmp_path / "curves.png").exists()  # no run was evaluated during training: no flat picture


def test_report_of_one_seed_shows_no_spread_and_no_verdict(tmp_path):
    cfg = config(seeds=[0])
    start = scores(0.3, 0.32, 0.4, 0.42)
    results = [fake_run("ce", "short", 1e-4, 0, 0.30, 0.40, 0.42), fake_run("arm", "short", 1e-4, 0, 0.4, 0.45, 0.5)]
    text = REPORT.report(cfg, start, results, ID2LABEL, tmp_path, minutes=1.0)
    row = next(line for line in text.splitlines() if line.startswith("| arm | short |"))
    assert "nan" not in text and "inf" not in text and "±" not in row
    assert row.endswith("| +8.00 | +8.00 | no | 0.50 |")  # 8 points up on both, but one seed proves nothing


def test_a_run_is_keyed_on_its_settings(tmp_path):
    """Editing an arm, a horizon, the tune fields or the starting weights moves the run to a new key."""
    start = tmp_path / "start"
    start.mkdir()
    (start / "model.safetensors").write_bytes(b"weights")
    cfg = config(output_dir=str(tmp_path / "study"))
    run = cfg.runs()[0]
    key = run_key(cfg, run, start)
    assert run_key(cfg, run, start) == key
    edited = config(arms={**cfg.arms, "ce": dataclasses.replace(cfg.arms["ce"], fields={"temperature": 0.25})})
    assert run_key(edited, run, start) != key
    assert run_key(config(tune={"weight_decay": 0.1}), run, start) != key
    assert run_key(config(horizons={"short": {"max_steps": 3}}), run, start) != key
    (start / "model.safetensors").write_bytes(b"other weights")
    assert run_key(cfg, run, start) != key


@pytest.mark.slow
def test_a_tiny_study_runs_every_stage_caches_them_and_reruns_an_edited_arm(tmp_path):
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
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    STUDY.main(["--config", str(path), "--jobs", "1"])
    out = tmp_path / "study"
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "runs").iterdir())
    assert runs == ["ce_hshort_lr0.0001_seed0", "local_hshort_lr0.0001_seed0"]
    pretraining = torch.load(out / "pretrain" / "training_args.bin", weights_only=False)
    assert pretraining.reward_weight == 0 and pretraining.ce_weight == 1 and pretraining.max_steps == 4
    (study,) = parse_config([StudyConfig], ["--config", str(path)])
    local_dir = run_dir(study, study.runs()[1], out / "pretrain")
    local = json.loads((local_dir / "train.json").read_text())
    scores = json.loads(next(local_dir.glob("scores-*.json")).read_text())
    assert {"reward", "mean_iou"} <= set(scores["validation"]["offsets"]) and len(scores["fitted"]["offsets"]) == 11
    assert any("scope_reward" in e for e in local["train_logs"])
    assert "| local | short | 0.0001 | yes | offsets |" in (out / "results.md").read_text()
    ce_dir = run_dir(study, study.runs()[0], out / "pretrain")
    mtime = (ce_dir / "train.json").stat().st_mtime
    STUDY.main(["--config", str(path), "--jobs", "1"])  # everything cached: nothing runs again
    assert (ce_dir / "train.json").stat().st_mtime == mtime
    cfg["arms"]["local"]["temperature"] = 0.25  # an edited arm trains again, under a new key
    path.write_text(yaml.safe_dump(cfg))
    STUDY.main(["--config", str(path), "--jobs", "1"])
    assert len(list((out / "runs").glob("local_*"))) == 2 and len(list((out / "runs").glob("ce_*"))) == 1


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("study_*.yaml")), ids=lambda p: p.name)
def test_every_study_config_builds_every_run(path, tmp_path):
    """Each config parses into a StudyConfig; each arm x horizon x learning rate is a valid RewardSegConfig."""
    assert path.read_text().startswith(f"# python scripts/study.py --config configs/{path.name}")
    (cfg,) = parse_config([StudyConfig], ["--config", str(path)])
    for run in cfg.runs():
        args = cfg.run_args(*run, output_dir=tmp_path)
        assert args.max_steps == cfg.horizons[run.horizon]["max_steps"] and args.learning_rate == run.learning_rate


def tiny_fold_config(tmp_path, **changes) -> dict:
    cfg = yaml.safe_load((ROOT / "configs/study_camvid_folds.yaml").read_text())
    cfg.update(
        output_dir=str(tmp_path / "folds"),
        data_root=str(CAMVID),
        size=[32, 44],
        seeds=[0, 1],
        bootstrap_samples=50,
        decoders=["argmax", "offsets"],
        model={"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "decoder_hidden_size": 16},
        pretrain={**cfg["pretrain"], "max_steps": 2},
        horizons={
            "short": {"max_steps": 2, "lr_scheduler_type": "constant", "eval_strategy": "no"},
            "long": {"max_steps": 3, "lr_scheduler_type": "constant", "eval_strategy": "no", "seeds": [0]},
        },
        arms={
            "ce": {"reward_weight": 0.0, "ce_weight": 1.0, "learning_rates": [1e-4], "horizons": ["short", "long"]},
            "local_image": {
                "reward": "miou_gt",
                "reward_scope": "image",
                "learning_rates": [1e-4],
                "horizons": ["short"],
            },
        },
    )
    cfg.update(changes)
    path = tmp_path / "folds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_tiny_fold_study_holds_each_sequence_out_and_pools_the_folds(tmp_path):
    path = tiny_fold_config(tmp_path, folds=["0006R0", "0001TP"])
    STUDY.main(["--config", str(path), "--jobs", "1"])
    out = tmp_path / "folds"
    for sequence, held_out in (("0006R0", 101), ("0001TP", 62)):
        runs = sorted(p.name.rsplit("-", 1)[0] for p in (out / f"fold_{sequence}" / "runs").iterdir())
        assert runs == ["ce_hlong_lr0.0001_seed0", "ce_hshort_lr0.0001_seed0", "ce_hshort_lr0.0001_seed1"] + [
            "local_image_hshort_lr0.0001_seed0",
            "local_image_hshort_lr0.0001_seed1",
        ]
        start = out / f"fold_{sequence}" / "pretrain"
        (scores,) = start.glob("scores-*.json")
        records = image_records(scores)
        assert len(records["heldout"]["offsets"]["counts"]) == held_out
        assert set(json.loads(scores.read_text())) == {"dev", "heldout", "fitted"}
    text = (out / "results.md").read_text()
    assert text.startswith("Cross-sequence protocol: 0006R0 (101 images), 0001TP (62 images) held out in turn")
    row = next(line for line in text.splitlines() if line.startswith("| local_image |"))
    assert row.count("[") == 6 and row.endswith("| no |")  # Δ over the start and over ce: each fold, pooled
    assert next(line for line in text.splitlines() if line.startswith("| start |")).count("[") == 0
    assert "(fold, metric, horizon) cases" in text and (out / "fold_0001TP" / "results.md").is_file()


def test_calibrate_first_names_the_offsets_and_rejects_anything_else():
    spec = {"learning_rates": [1e-4], "horizons": ["short"]}
    assert Arm.from_dict("a", {**spec, "calibrate_first": "image_offsets"}).calibrate_first == "image_offsets"
    assert Arm.from_dict("a", spec).calibrate_first is False
    with pytest.raises(ValueError, match="arm 'a': calibrate_first must be one of"):
        Arm.from_dict("a", {**spec, "calibrate_first": True})


@pytest.mark.slow
def test_an_arm_calibrated_first_tunes_from_the_image_offsets_decision(tmp_path):
    """calibrate_first: image_offsets folds the image_offsets decoder's offsets (fitted on the decoders' split)
    into the start's bias before tuning: at learning rate 0 the saved model is the start plus those offsets."""
    arm = {"reward_weight": 0.0, "ce_weight": 1.0, "learning_rates": [0.0], "horizons": ["short"]}
    path = tiny_fold_config(
        tmp_path, folds=["0001TP"], arms={"ce": arm, "cal": {**arm, "calibrate_first": "image_offsets"}}
    )
    (cfg,) = parse_config([StudyConfig], ["--config", str(path)])
    cfg = cfg.fold("0001TP")
    data, id2label = load_study_data(cfg)
    start = pretrained_checkpoint(cfg, data, id2label)
    tuned_dir = train_run(cfg, Run("cal", "short", 0.0, 0), start, data, id2label)
    tuned = load_segmentation_model(str(tuned_dir), id2label)
    model = load_segmentation_model(str(start), id2label)
    fitted = fit_decoders(_cache(model, data["train_unflipped"], 16, False), ["image_offsets"], get_reward("miou"))
    bias = model.decode_head.classifier.bias
    offsets = tuned.decode_head.classifier.bias - bias
    assert offsets.abs().max() > 0
    assert torch.allclose(offsets, torch.as_tensor(fitted["image_offsets"], dtype=bias.dtype), atol=1e-6)
