"""The day -> dusk workflows end to end on CamVid at a tiny size: one round of each, cached."""

import pytest
from conftest import CAMVID

from hf_reward.experiments import adaptation_benchmark as adaptation
from hf_reward.experiments.adaptation_benchmark import AdaptConfig, report, run_all


def tiny_config(tmp_path) -> AdaptConfig:
    return AdaptConfig(
        output_dir=str(tmp_path),
        data_root=str(CAMVID),
        size=[32, 44],
        model={"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "decoder_hidden_size": 16},
        pretrain={"max_steps": 2, "per_device_train_batch_size": 4},
        tune={"max_steps": 1, "per_device_train_batch_size": 4},
        objectives={"recipe": {}},
        acquisitions=["shortfall"],
        budget=2,
        rounds=1,
        oracle_steps=1,
        seeds=[0],
    )


def test_every_workflow_runs_a_round_reports_and_is_cached(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    records = {r["workflow"]: r for r in run_all(cfg)}
    assert list(records) == [
        "source",
        "oracle",
        "em_priors",
        "calibration",
        "self_training",
        "active_shortfall_recipe",
    ]
    assert {w: r["labels"] for w, r in records.items()} == {
        "source": 0,
        "oracle": 32,
        "em_priors": 0,
        "calibration": 2,
        "self_training": 0,
        "active_shortfall_recipe": 2,
    }
    for r in records.values():
        assert (r["calibrated"] is None) == (r["labels"] == 0)
        assert len(r["rounds"]) == {"source": 0, "calibration": 0}.get(r["workflow"], 1)
    table = report(list(records.values()))
    assert table.count("\n") == 7 and "| oracle | 32 |" in table and "100%" in table

    def no_training(*args, **kwargs):
        raise AssertionError("a cached workflow ran again")

    monkeypatch.setattr(adaptation, "run_workflow", no_training)
    assert [r["raw"] for r in run_all(cfg)] == [r["raw"] for r in records.values()]


def test_the_config_refuses_an_unknown_acquisition():
    with pytest.raises(ValueError, match="acquisitions must come from"):
        AdaptConfig(acquisitions=["margin"])


def test_the_shipped_config_parses_into_every_workflow():
    from conftest import ROOT

    from hf_reward.cli import parse_config

    (cfg,) = parse_config([AdaptConfig], ["--config", str(ROOT / "configs/adapt_camvid_dusk.yaml")])
    assert cfg.workflows()[:5] == ["source", "oracle", "em_priors", "calibration", "self_training"]
    assert len(cfg.workflows()) == 5 + 3 * 2 and cfg.seeds == [0, 1, 2]


def test_the_unlabelled_workflows_score_what_their_own_steps_give(tmp_path):
    """Known answers, computed here from the library's parts: the source model's target mIoU, and the same model
    with the class priors that EM re-estimates on the pool folded into its bias."""
    from hf_reward.adaptation import em_priors, mean_posteriors
    from hf_reward.calibrate import collect_logits, fold_offsets
    from hf_reward.cli.evaluation import evaluate
    from hf_reward.modeling import load_segmentation_model

    cfg = tiny_config(tmp_path)
    records = {r["workflow"]: r for r in run_all(cfg, ["source", "em_priors"])}
    domains = adaptation.Domains(cfg)
    model = load_segmentation_model(str(tmp_path / "source"), domains.id2label)

    def target_miou(m):
        return float(
            evaluate(m, domains.dataset(domains.eval), domains.id2label, progress=False).compute()["mean_iou"]
        )

    assert records["source"]["raw"] == pytest.approx(target_miou(model), abs=1e-6)
    source = collect_logits(model, domains.loader(domains.source), progress=False)
    pool = collect_logits(model, domains.loader(domains.pool), progress=False)
    _, offsets = em_priors(pool, mean_posteriors(source))
    fold_offsets(model, offsets, split="target pool", method="EM")
    assert model.config.calibration["method"] == "EM" and offsets.abs().sum() > 0
    assert records["em_priors"]["raw"] == pytest.approx(target_miou(model), abs=1e-6)
