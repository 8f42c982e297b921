"""The GPU check's parts that run anywhere: mixed-precision steps on the CPU, its study config, its table cells."""

import json
import math

import pytest
import torch
from conftest import load_script

from hf_reward.cli import UsageError, parse_config
from hf_reward.experiments.study import StudyConfig

bench_step = load_script("bench_step")
gpu_check = load_script("gpu_check")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_trains_every_variant_with_a_finite_loss(precision, capsys):
    bench_step.main(["--precision", precision, "--classes", "19", "--batch", "1", "--size", "64", "--rounds", "1"])
    stdout = capsys.readouterr().out
    cells = gpu_check.bench_step_result(stdout, None).split("; ")
    assert len(cells) == len(bench_step.VARIANTS) and f"cpu, {precision}" in stdout
    assert cells[0].startswith("cross-entropy (the model's own loss)") and "Lovász" in cells[-1]
    assert all(math.isfinite(float(c.split(" s ")[0].split(" ")[-1])) for c in cells)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_computes_the_fp32_loss_and_gradient(precision):
    """The check's step under autocast: the same loss as fp32 on the same batch and draws, to bf16/fp16 rounding,
    and a gradient pointing the same way (cosine > 0.99), for cross-entropy and the default recipe."""
    from conftest import tiny_segformer

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    for knobs in (
        bench_step.VARIANTS["mle"],
        bench_step.VARIANTS["local, dataset-scope mIoU + ce (the default recipe)"],
    ):
        results = []
        for p in ("fp32", precision):
            model = tiny_segformer(4)
            torch.manual_seed(2)
            loss = bench_step.step(model, pixels, labels, knobs, None, p)
            results.append((float(loss), torch.cat([q.grad.flatten() for q in model.parameters()])))
        (loss32, grad32), (loss_mixed, grad_mixed) = results
        assert loss_mixed == pytest.approx(loss32, rel=0.05)
        assert torch.nn.functional.cosine_similarity(grad32, grad_mixed, dim=0) > 0.99


def test_an_unknown_precision_is_refused():
    with pytest.raises(UsageError, match="--precision must be one of"):
        bench_step.main(["--precision", "fp8"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_gpu_check_refuses_to_run_without_cuda(tmp_path):
    with pytest.raises(UsageError, match="no CUDA device"):
        gpu_check.main(["--output_dir", str(tmp_path)])


def test_the_short_study_keeps_every_arms_short_horizon_and_seed_0(tmp_path):
    (cfg,) = parse_config([StudyConfig], ["--config", str(gpu_check.short_study_config(tmp_path / "study"))])
    runs = cfg.runs()
    assert {r.horizon for r in runs} == {"short"} and {r.seed for r in runs} == {0}
    assert sorted({r.arm for r in runs}) == sorted(["ce", "lovasz", "ce_lovasz", "local", "local_ce"])
    assert len(runs) == 10 and cfg.output_dir == str(tmp_path / "study")


def test_the_tune_cell_reads_each_models_raw_and_calibrated_miou(tmp_path):
    scores = {"raw": {"mean_iou": 0.5}, "calibrated": {"mean_iou": 0.55}}
    (tmp_path / "results.json").write_text(
        json.dumps({"start": scores, "tuned": scores, "control": {"raw": {"mean_iou": 0.25}}})
    )
    assert gpu_check.tune_result("", tmp_path) == "start 50.0 / 55.0; tuned 50.0 / 55.0; control 25.0"


def test_the_calibration_cell_reads_the_pixel_sample_table():
    stdout = (
        "| fitted on | metric | pixels per image | sample (s) | fit (s) | sweeps | full-resolution score | loss |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| 20 synthetic Cityscapes | dataset mIoU | all | 0.0 | 12.0 | 3 | fit split 31.90 | fit split +0.00 |\n"
        "| 20 synthetic Cityscapes | dataset mIoU | 65536 | 0.5 | 1.0 | 3 | fit split 31.88 | fit split +0.02 |\n"
        "\n- dataset mIoU: one sweep 4 s (25.00 -> 31.00 on the sample)\n"
    )
    assert gpu_check.calibrate_result(stdout, None) == (
        "dataset mIoU, all pixels: fit 12.0 s, loss fit split +0.00; dataset mIoU, 65536 pixels: fit 1.0 s, loss "
        "fit split +0.02; dataset mIoU: one sweep 4 s (25.00 -> 31.00 on the sample)"
    )
