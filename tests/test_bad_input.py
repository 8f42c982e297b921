"""Every bad input gets one clear line (naming the value, sample or path and the fix), nothing is reported for no
pixels, and a rerun never loses or mixes runs."""

import math
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from conftest import ROOT, TINY, load_script, quick, tiny_segformer

from hf_reward.cli import UsageError, parse_config, run_script, set_resume_hint
from hf_reward.cli.models import check_model_source
from hf_reward.cli.runs import TuneConfig
from hf_reward.data import TOY_STREETS_ID2LABEL, DataError
from hf_reward.metrics import StreamingMeanIoU

TUNE, EVALUATE, CALIBRATE = load_script("tune"), load_script("evaluate_model"), load_script("calibrate")


def test_a_void_only_split_scores_nan_everywhere_never_zero():
    metric = StreamingMeanIoU(3, per_image=True, boundary_tolerances=["2px"], thing_classes=["1"])
    metric.update_masks(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 255))
    scores = metric.compute()
    assert all(math.isnan(v) for v in scores.values()), {k: v for k, v in scores.items() if not math.isnan(v)}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max_steps", "0"], r"max_steps must be > 0 \(or -1"),
        (["--learning_rate=-1e-4"], "learning_rate must be finite and >= 0"),
        (["--threads", "0", "--max_step", "3"], "unknown arguments"),
    ],
)
def test_impossible_settings_are_refused_before_anything_runs(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_config(TUNE.ARGUMENTS, argv)


@pytest.fixture
def model_dir(tmp_path):
    tiny_segformer(id2label=TOY_STREETS_ID2LABEL).save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_an_empty_evaluation_split_is_named_not_scored(model_dir):
    with pytest.raises(UsageError, match="toy_streets/validation: the evaluation split yields no image"):
        EVALUATE.main(["--model_name_or_path", model_dir, "--toy_eval_images", "0", "--toy_size", "32"])


def test_a_model_with_nan_logits_is_refused_not_scored(model_dir, tmp_path):
    model = tiny_segformer(id2label=TOY_STREETS_ID2LABEL)
    with torch.no_grad():
        model.decode_head.classifier.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(UsageError, match="logits are not finite .* on batch 0"):
        EVALUATE.main(["--model_name_or_path", str(tmp_path / "nan"), "--toy_eval_images", "2", "--toy_size", "32"])


def test_calibration_on_empty_splits_names_the_split_and_writes_nothing(model_dir, tmp_path):
    data = ["--toy_size", "32", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UsageError, match="validation, before: the evaluation split yields no image"):
        CALIBRATE.main(["--model_name_or_path", model_dir, "--toy_eval_images", "0", *data])
    with pytest.raises(UsageError, match="the calibration split 'train' yields no image"):
        CALIBRATE.main(["--model_name_or_path", model_dir, "--toy_train_images", "0", "--toy_eval_images", "2", *data])
    assert not (tmp_path / "out").exists()


def test_missing_files_and_directories_are_named(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--model_name_or_path", model_dir, "--dataset", "parquet"]
    with pytest.raises(
        UsageError, match=r"--data_path 'nothing/\{split\}-\*.parquet': no file matches .* 'validation'"
    ):
        EVALUATE.main([*common, "--data_path", "nothing/{split}-*.parquet"])
    with pytest.raises(UsageError, match=r"--dataset .data/missing.: no such directory here"):  # as a Hub id: offline
        EVALUATE.main(["--model_name_or_path", model_dir, "--dataset", "data/missing"])
    with pytest.raises(UsageError, match=r"split 'test'"):
        EVALUATE.main(
            [
                "--model_name_or_path",
                model_dir,
                "--dataset",
                "camvid",
                "--data_path",
                str(ROOT.parent / "shared/datasets/camvid"),
                "--eval_split",
                "test",
            ]
        )


def test_a_missing_model_is_named_at_once_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(UsageError, match=r"'outputs/default': there is no such directory here"):
        check_model_source("outputs/default")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set"):  # the tests run offline
        check_model_source("someone/not-cached")


def write_imagefolder(root, sizes):
    """An image folder as `datasets` reads one: images and masks side by side, metadata.csv pairing them."""
    for split, shapes in sizes.items():
        (root / split).mkdir(parents=True)
        rows = ["file_name,label_file_name"]
        for i, (image_shape, mask_shape) in enumerate(shapes):
            PIL.Image.fromarray(np.zeros((*image_shape, 3), np.uint8)).save(root / split / f"{i}.png")
            PIL.Image.fromarray(np.ones(mask_shape, np.uint8)).save(root / split / f"{i}_mask.png")
            rows.append(f"{i}.png,{i}_mask.png")
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")


def test_an_image_folder_with_class_names_evaluates_and_a_bad_pair_is_one_line(tmp_path):
    names = ["background", "person"]
    tiny_segformer(id2label=dict(enumerate(names))).save_pretrained(tmp_path / "model")
    write_imagefolder(tmp_path / "folder", {"validation": [((16, 16), (16, 16)), ((16, 16), (16, 16))]})
    folder = ["--dataset", str(tmp_path / "folder")]
    with pytest.raises(UsageError, match="brings no class names: give them .* with --class_names"):
        TUNE.main([*folder, "--output_dir", str(tmp_path / "out")])  # no model to take them from either
    scores = EVALUATE.main([*folder, "--model_name_or_path", str(tmp_path / "model"), "--class_names", *names])
    assert 0 <= scores["mean_iou"] <= 1
    write_imagefolder(tmp_path / "bad", {"validation": [((16, 16), (16, 16)), ((16, 16), (8, 16))]})
    with pytest.raises(DataError, match=r"sample 1 .*1.png.* image is 16x16 .* but its mask is 8x16"):
        EVALUATE.main(["--dataset", str(tmp_path / "bad"), "--model_name_or_path", str(tmp_path / "model")])


@pytest.mark.slow
def test_a_bad_sample_under_a_script_is_one_line_and_exit_2(tmp_path):
    tiny_segformer(id2label={0: "background", 1: "person"}).save_pretrained(tmp_path / "model")
    write_imagefolder(tmp_path / "bad", {"validation": [((16, 16), (8, 16))]})
    run = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate_model.py",
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--dataset",
            str(tmp_path / "bad"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "image is 16x16" in lines[0] and "Traceback" not in run.stderr


def tune(out, start, *flags):
    """The recipe's trainer of a quick tune.py run into ``out``."""
    argv = ["--output_dir", str(out), *quick(start, "--save_steps"), "--save_steps", "1", *flags]
    return TUNE.main(argv).trainers["recipe"]


def test_a_rerun_resumes_its_own_run_and_refuses_another(tmp_path, toy_start, capsys):
    out = tmp_path / "run"
    first = tune(out, toy_start, "--max_steps", "2")
    assert first.state.global_step == 2 and (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    again = tune(out, toy_start, "--max_steps", "3")  # same settings, further: resumes from its checkpoint
    assert "Resuming from" in capsys.readouterr().out and again.state.global_step == 3
    with pytest.raises(UsageError, match="holds another run .*learning_rate 0.0001 there, 0.001 here.*--overwrite_"):
        tune(out, toy_start, "--max_steps", "3", "--learning_rate", "1e-3")
    with pytest.raises(UsageError, match="holds this run at 3 steps, more than --max_steps 2: give another"):
        tune(out, toy_start, "--max_steps", "2")  # fewer steps: its tables would say 2 steps of a 3-step model
    fresh = tune(out, toy_start, "--max_steps", "1", "--learning_rate", "1e-3", "--overwrite_output_dir", "true")
    assert fresh.state.global_step == 1 and sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    latest = tune(out, toy_start, "--max_steps", "2", "--learning_rate", "1e-3", "--resume_from_checkpoint", "true")
    assert latest.state.global_step == 2 and "Resuming" not in capsys.readouterr().out


def test_resume_true_with_nothing_to_resume_says_so(tmp_path, toy_start):
    with pytest.raises(UsageError, match="--resume_from_checkpoint true: .* holds no checkpoint"):
        tune(tmp_path / "empty", toy_start, "--resume_from_checkpoint", "true")
    assert TuneConfig(output_dir="x", resume_from_checkpoint="True").resume_from_checkpoint == "True"


def test_a_dataset_path_that_does_not_exist_is_named_before_anything_is_written(tmp_path, toy_start):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=r"--dataset '/nonexistent': no such directory$"):
        TUNE.main(["--output_dir", str(out), *quick(toy_start), "--dataset", "/nonexistent"])
    with pytest.raises(UsageError, match=r"--dataset 'not/here/at_all': no such directory here \("):
        TUNE.main(["--output_dir", str(out), *quick(toy_start), "--dataset", "not/here/at_all"])
    with pytest.raises(UsageError, match=r"--data_path '/nonexistent/camvid': no such directory$"):
        TUNE.main(
            ["--output_dir", str(out), *quick(toy_start), "--dataset", "camvid", "--data_path", "/nonexistent/camvid"]
        )
    assert not out.exists()  # no run_settings.json left behind


def test_a_model_path_that_does_not_exist_is_named_as_given(tmp_path):
    with pytest.raises(UsageError, match=r"model '/nonexistent/model': there is no such directory\. If another"):
        EVALUATE.main(["--model_name_or_path", "/nonexistent/model"])


def test_an_auxiliary_reward_for_a_model_without_an_auxiliary_head_is_refused_before_pretraining(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="--auxiliary_reward true: the model is a segformer, which has no auxiliary"):
        TUNE.main(["--output_dir", str(out), *TINY, "--auxiliary_reward", "true"])
    assert not out.exists()


def test_ctrl_c_prints_one_line_with_how_to_resume_and_exits_130(capsys):
    def main():
        set_resume_hint("the same command resumes from the latest checkpoint-* in outputs/x")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        run_script(main)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 130
    assert err == ["interrupted: the same command resumes from the latest checkpoint-* in outputs/x"]


@pytest.mark.slow
def test_ctrl_c_during_tuning_leaves_a_resumable_run(tmp_path, toy_start):
    """A real SIGINT in the middle of tune.py: one line, status 130, and the same command then resumes."""
    import signal
    import time

    out = tmp_path / "run"
    argv = [
        sys.executable,
        "scripts/tune.py",
        "--output_dir",
        str(out),
        *quick(toy_start, "--max_steps", "--save_steps"),
    ]
    argv += ["--max_steps", "400", "--save_steps", "1"]
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 120
    while not list(out.glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted: the same command")
    latest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (latest / "trainer_state.json").is_file() and (latest / "model.safetensors").is_file()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and f"Resuming from {latest}" in again.stdout, again.stderr[-2000:]


def run_with_config(script: str, cfg: dict, path):
    path.write_text(yaml.safe_dump(cfg))
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, f"scripts/{script}.py", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    "script, config, misspell",
    [
        ("study", "configs/study_camvid.yaml", lambda cfg: cfg["arms"]["local"].update(rewrd="miou")),
        ("adapt", "configs/adapt_camvid_dusk.yaml", lambda cfg: cfg["objectives"].update(recipe={"rewrd": "miou"})),
    ],
)
def test_a_misspelt_field_or_a_missing_data_root_stops_a_study_before_any_work(script, config, misspell, tmp_path):
    """One line, exit 2, and nothing loaded or trained: the output directory is not even made."""
    cfg = {**yaml.safe_load((ROOT / config).read_text()), "output_dir": str(tmp_path / "out")}
    missing_root = run_with_config(script, {**cfg, "data_root": "/nonexistent/camvid"}, tmp_path / "root.yaml")
    misspell(cfg)
    misspelt = run_with_config(script, cfg, tmp_path / "field.yaml")
    for run, message in (
        (misspelt, r"\['rewrd'\] are not RewardSegConfig fields$"),
        (missing_root, r"data_root '/nonexistent/camvid': no such directory$"),
    ):
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert re.search(message, run.stderr.strip().splitlines()[-1]), run.stderr
    assert not (tmp_path / "out").exists()


def test_a_rerun_resumes_from_the_latest_whole_checkpoint(tmp_path, toy_start, capsys):
    """A process killed while saving leaves a checkpoint without its trainer state: resuming skips it."""
    out = tmp_path / "run"
    tune(out, toy_start, "--max_steps", "2")
    broken = out / "checkpoint-3"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half written")
    capsys.readouterr()
    resumed = tune(out, toy_start, "--max_steps", "3")
    assert f"Resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert resumed.state.global_step == 3 and (out / "checkpoint-3" / "trainer_state.json").is_file()
