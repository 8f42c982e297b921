"""The scripts: argument parsing, every shipped config, errors that say what to do, and whole runs on tiny settings."""

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CAMVID, ROOT, TINY, BlobsDataset, drop, load_script, quick, tiny_segformer

from hf_reward import RewardSegConfig, RewardSegTrainer
from hf_reward.cli import UsageError, parse_config
from hf_reward.cli.runs import TuneConfig
from hf_reward.data import TOY_STREETS_ID2LABEL
from hf_reward.modeling import load_segmentation_model

TUNE, PRETRAIN, EVALUATE = load_script("tune"), load_script("pretrain"), load_script("evaluate_model")
SCRIPTS = {"scripts/tune.py": TUNE, "scripts/pretrain.py": PRETRAIN}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def as_dicts(parsed):
    return [a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a) for a in parsed]


def test_default_yaml_is_the_embedded_run():
    *no_args, plan = TUNE.parse([])
    *with_file, same_plan = TUNE.parse(["--config", str(ROOT / "configs/default.yaml")])
    assert as_dicts(no_args) == as_dicts(with_file) and plan == same_plan
    assert no_args[2].tune and no_args[3].reward == plan.recipe["reward"] == "miou_gt"


def test_the_tuning_recipe_has_one_home():
    """TuneConfig changes only how long and how loudly the embedded run goes, never the recipe."""
    own = [f.name for f in dataclasses.fields(RewardSegConfig) if f.name in RewardSegConfig.__annotations__]
    tune, library = TuneConfig(output_dir="x"), RewardSegConfig(output_dir="x")
    assert own and all(getattr(tune, name) == getattr(library, name) for name in own)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_is_headed_by_its_command_and_parses_into_its_scripts_arguments(path):
    text = path.read_text()
    assert text.startswith("#")
    header = text.split("\n\n")[0]
    script = re.search(r"(scripts/\w+\.py) --config configs/" + re.escape(path.name), header).group(1)
    if script not in SCRIPTS:  # another script's config (the study): its own tests parse it
        return
    assert "accelerate launch" in header and "Expect" in header
    # --use_cpu: TrainingArguments refuses bf16 on a machine without a GPU unless told to use the CPU.
    parsed = parse_config(SCRIPTS[script].ARGUMENTS, ["--config", str(path), "--use_cpu", "true"])
    flat = {k: v for d in as_dicts(parsed) for k, v in d.items()}
    for key, value in yaml.safe_load(text).items():
        assert flat[key] == value or str(flat[key]) == str(value) or flat[key] == pytest.approx(value), key


@pytest.mark.parametrize("path", sorted((ROOT / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    text = path.read_text()
    assert text.startswith("#") and re.search(
        r"accelerate launch (-q )?--config_file configs/accelerate/" + path.name, text
    )
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1 and config.mixed_precision == "no"


def test_flags_override_the_config_file_and_typos_are_errors(tmp_path):
    *_, args = parse_config(TUNE.ARGUMENTS, ["--config", str(ROOT / "configs/default.yaml"), "--max_steps", "3"])
    assert args.max_steps == 3 and args.estimator == "local"
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 3\n")
    with pytest.raises(UsageError, match=r"unknown keys \['max_step'\]"):
        parse_config(TUNE.ARGUMENTS, ["--config", str(bad)])
    with pytest.raises(UsageError, match="no such file"):
        parse_config(TUNE.ARGUMENTS, ["--config", str(tmp_path / "missing.yaml")])


def test_prefixes_of_flags_are_not_accepted():
    """--max_step used to be taken as --max_steps, silently."""
    with pytest.raises(UsageError, match=r"unknown arguments \['--max_step', '10'\]"):
        parse_config(TUNE.ARGUMENTS, ["--max_step", "10"])


def test_a_refused_value_is_a_usage_error():
    with pytest.raises(UsageError, match="temperature must be finite"):
        parse_config(TUNE.ARGUMENTS, ["--temperature", "nan"])


def test_help_lists_what_a_newcomer_needs_first_and_help_all_the_rest(capsys):
    with pytest.raises(SystemExit) as done:
        TUNE.parse(["--help", "--metric", "boundary_f"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and len(text.splitlines()) < 60 and "--help_all" in text
    for option in ("--metric", "--tune", "--dev_fraction", "--model_name_or_path", "--dataset", "--push_to_hub"):
        assert option in text, option
    assert "--estimator" not in text and "AdamW learning rate [0.0003]" in text  # the metric's recipe, as defaults
    assert "Random seed that will be set" in text  # a TrainingArguments field's own help

    with pytest.raises(SystemExit):
        parse_config(TUNE.ARGUMENTS, ["--help_all"], brief=TUNE.BRIEF)
    text = capsys.readouterr().out
    assert text.index("--estimator") < text.index("--learning_rate")  # the TrainingArguments the project sets
    assert "--adam_beta1" not in text and "every other transformers.TrainingArguments field is an option too" in text
    assert len(text.splitlines()) < 250
    assert (
        text.index("--model_name_or_path")
        < text.index("--dataset")
        < text.index("--pretrain_steps")
        < text.index("--estimator")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model_name_or_path", "outputs/does_not_exist"], "no such directory here"),
        (["--config", "configs/camvid_tune.yaml"], "run that first"),
        (["--max_step", "10"], "unknown arguments"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, argv, message):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/tune.py"), "--output_dir", str(tmp_path), *argv],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.slow
def test_tune_decides_on_dev_ships_the_winner_with_its_decoder_and_reuses_the_pretrained_model(tmp_path, capsys):
    out = tmp_path / "run"
    # the threads of this process: the rerun in this process below must compute the same numbers
    command = [sys.executable, str(ROOT / "scripts/tune.py"), "--output_dir", str(out), *TINY]
    command += ["--threads", str(torch.get_num_threads())]
    first = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Cross-entropy pretraining for 2 steps" in first.stdout
    # every candidate, each model by each of the metric's decoders, on dev and validation
    for model in ("start", "recipe, 2 steps", "cross-entropy, 2 steps"):
        for decoder in ("argmax", "image_offsets", "rankseg"):
            assert re.search(
                rf"\| (\*\*)?{re.escape(model)} \+ {decoder}(\*\*)?[^|]* \| [\d.]+ \| [\d.]+ \|", first.stdout
            ), (
                model,
                decoder,
            )
    assert "(ships)" in first.stdout and "Ships " in first.stdout
    written = first.stdout.split("Wrote:")[1]
    for name in ("model.safetensors", "results.md", "results.json", "README.md", "candidates.png", "overlays.png"):
        assert name in written, name
    for name in ("pretrained/model.safetensors", "checkpoint-2/model.safetensors"):
        assert (out / name).is_file(), name
    # shareable files (the umask's permissions, not transformers' 0600), no empty directory left behind
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in [out / "model.safetensors", *out.glob("checkpoint-*/*")])
    assert not (out / "control").exists()
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model" not in front and "datasets" not in front  # a built model and toy streets: no Hub ids
    assert "## Decode" in card and f'from_pretrained("{out}")' in card and "| pole |" in card
    assert not list(out.rglob("*.bin")) or all(p.name == "training_args.bin" for p in out.rglob("*.bin"))
    results = json.loads((out / "results.json").read_text())
    model, decoder = results["winner"]
    assert set(results["candidates"]) == {"start", "recipe, 2 steps", "cross-entropy, 2 steps"}
    # the saved model is the winner, its decoder recorded (offsets folded) and how it is scored
    saved = load_segmentation_model(str(out), TOY_STREETS_ID2LABEL)
    assert saved.config.hf_reward_decoder == decoder and saved.config.hf_reward_evaluation["toy_size"] == 32
    assert (getattr(saved.config, "calibration", None) is not None) == (decoder in ("offsets", "image_offsets"))

    capsys.readouterr()
    TUNE.main(command[2:])  # again, in this process
    printed = capsys.readouterr().out
    assert "Reusing the pretrained model" in printed and "Cross-entropy pretraining" not in printed
    # the cached model and the same seed: the same run
    again = json.loads((out / "results.json").read_text())
    assert again == results

    # evaluating the saved model with the evaluation script's defaults reproduces the number tune reported
    scores = EVALUATE.main(["--model_name_or_path", str(out)])
    assert scores == pytest.approx(results["shipped"], abs=1e-9, nan_ok=True)
    # the candidates' table decodes fp16 logits: within a fraction of a point of the shipped model in fp32
    assert scores["image_miou"] == pytest.approx(
        results["candidates"][model]["validation"][decoder]["image_miou"], abs=2e-3
    )


def test_decode_only_trains_nothing_and_ships_the_start_decoded(tmp_path, toy_start, capsys):
    out = tmp_path / "decoded"
    outcome = TUNE.main(["--output_dir", str(out), *drop(quick(toy_start), "--tune"), "--metric", "miou"])
    printed = capsys.readouterr().out
    assert outcome.trainers == {} and outcome.decision.winner[0] == "start"
    assert "| start + offsets" in printed and "recipe" not in printed.split("Evidence")[0]
    assert "no tuned model to compare" in printed
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").is_file()
    scores = EVALUATE.main(["--model_name_or_path", str(out)])
    assert scores == pytest.approx(json.loads((out / "results.json").read_text())["shipped"], abs=1e-9, nan_ok=True)


def test_tune_builds_an_upernet_tunes_its_auxiliary_head_and_evaluate_reproduces_it(tmp_path):
    out = tmp_path / "upernet"
    argv = ["--output_dir", str(out), *TINY, "--architecture", "upernet", "--auxiliary_reward", "true"]
    outcome = TUNE.main(argv)
    results = json.loads((out / "results.json").read_text())
    saved = load_segmentation_model(str(out), TOY_STREETS_ID2LABEL)
    assert saved.config.model_type == "upernet" and saved.auxiliary_head is not None
    assert any("auxiliary_loss" in entry for entry in outcome.trainers["recipe"].state.log_history)
    assert EVALUATE.main(["--model_name_or_path", str(out)]) == pytest.approx(
        results["shipped"], abs=1e-9, nan_ok=True
    )


def test_pretrain_script_trains_and_saves(tmp_path):
    argv = [
        "--output_dir",
        str(tmp_path),
        *drop(TINY, "--pretrain_steps", "--num_overlays", "--eval_steps", "--save_steps", "--fit_images", "--tune"),
    ]
    trainer = PRETRAIN.main(argv)
    assert trainer.state.global_step == 2
    assert (tmp_path / "model.safetensors").is_file()
    assert 0 <= json.loads((tmp_path / "eval_results.json").read_text())["eval_mean_iou"] <= 1


def test_resume_reaches_the_parameters_of_an_uninterrupted_run(tmp_path, toy_start):
    """reward_scope='dataset' (the default): the running confusion matrix is restored too."""
    initial = load_segmentation_model(str(toy_start), TOY_STREETS_ID2LABEL)
    common = [*quick(toy_start, "--max_steps"), "--metric", "miou"]  # its recipe: dataset-scope mIoU

    def params(trainer):
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    full = TUNE.main(["--output_dir", str(tmp_path / "full"), "--max_steps", "4", "--learning_rate", "1e-2", *common])
    full = full.trainers["recipe"]
    TUNE.main(["--output_dir", str(tmp_path / "cut"), "--max_steps", "2", "--learning_rate", "1e-2", *common])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    assert (checkpoint / "reward_state_0.safetensors").is_file()
    resumed = TUNE.main(
        [
            "--output_dir",
            str(tmp_path / "cut"),
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-2",
            "--resume_from_checkpoint",
            str(checkpoint),
            *common,
        ]
    ).trainers["recipe"]
    assert resumed.state.global_step == 4
    assert not torch.equal(params(full), torch.cat([p.flatten() for p in initial.parameters()]))
    torch.testing.assert_close(params(resumed), params(full), rtol=0, atol=0)


def test_a_model_with_other_classes_is_refused_by_name(tmp_path, toy_start):
    swapped = {**TOY_STREETS_ID2LABEL, 0: TOY_STREETS_ID2LABEL[1], 1: TOY_STREETS_ID2LABEL[0]}
    model = load_segmentation_model(str(toy_start), TOY_STREETS_ID2LABEL)
    model.config.id2label, model.config.label2id = swapped, {v: k for k, v in swapped.items()}
    model.save_pretrained(tmp_path / "swapped")
    for script, argv in (
        (TUNE, quick(tmp_path / "swapped")),
        (EVALUATE, ["--model_name_or_path", str(tmp_path / "swapped")]),
    ):
        with pytest.raises(UsageError, match="0: model 'sidewalk' vs dataset 'road'"):
            script.main(["--output_dir", str(tmp_path / "out"), *argv] if script is TUNE else argv)


def test_bf16_on_cpu_tunes(tmp_path):
    """use_cpu + bf16: autocast to bfloat16 on the CPU, float32 master weights, finite rewards."""
    model = tiny_segformer()
    before = [p.detach().clone() for p in model.parameters()]
    args = TuneConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = RewardSegTrainer(model=model, args=args, train_dataset=BlobsDataset(n=8))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logs) == 2 and all(0 <= e["reward"] <= 1 and e["entropy"] > 0 for e in logs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_calibrate_script_folds_offsets_into_a_plain_segformer_and_evaluate_reproduces_it(tmp_path, toy_start, capsys):
    calibrate = load_script("calibrate")
    out = tmp_path / "calibrated"
    data = ["--toy_size", "32", "--toy_train_images", "16", "--toy_eval_images", "8"]
    model, results = calibrate.main(["--model_name_or_path", str(toy_start), "--output_dir", str(out), *data])
    printed = capsys.readouterr().out
    assert "Offsets (" in printed and "| class | uncalibrated | calibrated |" in printed and "| pole |" in printed
    # a plain SegFormer, loaded without project code, with the record in its config
    from transformers import SegformerForSemanticSegmentation

    plain = SegformerForSemanticSegmentation.from_pretrained(out, use_safetensors=True)
    record = plain.config.calibration
    assert (
        record["split"] == "train (16 images)"
        and record["reward"] == "miou"
        and set(record["offsets"]) == set(TOY_STREETS_ID2LABEL.values())
    )
    assert record["metric_after"] >= record["metric_before"] and record["pixels_per_image"] == "all"  # a small split
    start = load_segmentation_model(str(toy_start), TOY_STREETS_ID2LABEL)
    offsets = torch.tensor([record["offsets"][name] for name in TOY_STREETS_ID2LABEL.values()])
    torch.testing.assert_close(plain.decode_head.classifier.bias, start.decode_head.classifier.bias + offsets)
    assert "## Calibration" in (out / "README.md").read_text()
    # evaluating it as it is reproduces the number calibrate printed
    scores = EVALUATE.main(["--model_name_or_path", str(out)])
    assert scores["mean_iou"] == pytest.approx(results["calibrated"]["mean_iou"], abs=1e-9)


def test_calibrate_script_refuses_a_push_without_a_repo(toy_start):
    with pytest.raises(UsageError, match="--hub_model_id"):
        load_script("calibrate").main(["--model_name_or_path", str(toy_start), "--push_to_hub", "true"])


def test_calibrate_script_fits_per_image_offsets(tmp_path, toy_start, capsys):
    out = tmp_path / "calibrated"
    data = ["--toy_size", "32", "--toy_train_images", "16", "--toy_eval_images", "8"]
    argv = ["--model_name_or_path", str(toy_start), "--output_dir", str(out), "--reward", "miou_gt", "--per_image"]
    model, columns = load_script("calibrate").main([*argv, "true", "--pixels_per_image", "200", *data])
    assert model.config.calibration["scope"] == "image" and model.config.calibration["reward"] == "miou_gt"
    assert model.config.calibration["pixels_per_image"] == 200
    assert "miou_gt (mean over images) on validation" in capsys.readouterr().out
    assert {"image_miou", "image_reward", "boundary_f_2px"} <= set(columns["calibrated"])


@pytest.mark.slow
def test_the_camvid_quick_start_commands_run_as_written_on_a_few_images(tmp_path, capsys):
    """The commands camvid_quick.yaml's header gives (and the README repeats), shrunk by flags appended to each."""
    header = [line.strip("# ").strip() for line in (ROOT / "configs/camvid_quick.yaml").read_text().splitlines()]
    launchers = ("accelerate launch ", "python ")
    commands = [line for line in header if line.startswith(launchers)]
    readme = (ROOT / "README.md").read_text()
    assert len(commands) == 3 and all(command in readme for command in commands), commands
    shrink = {
        "tune.py": ["--pretrain_steps", "2", "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2"]
        + ["--fit_images", "4", "--max_dev_samples", "3", "--max_eval_samples", "2", "--num_overlays", "1"],
        "evaluate_model.py": [],
    }
    results = []
    for command in commands:
        script, *argv = command.removeprefix(launchers[0]).removeprefix(launchers[1]).split()
        argv = [a.replace("outputs/", f"{tmp_path}/") for a in argv]
        if script.endswith("tune.py") and "--output_dir" not in argv:
            argv += ["--output_dir", str(tmp_path / "camvid_quick")]
        name = Path(script).name
        results.append(load_script(name.removesuffix(".py")).main([*argv, "--data_path", str(CAMVID), *shrink[name]]))
    first, boundary, evaluated = results
    assert first.trainers == {} and set(boundary.trainers) == {"recipe", "cross-entropy"}
    assert boundary.decision.metric == "boundary_f_2px" and (tmp_path / "camvid_quick" / "overlays.png").is_file()
    shipped = json.loads((tmp_path / "camvid_quick" / "results.json").read_text())["shipped"]
    assert evaluated == pytest.approx(shipped, abs=1e-9, nan_ok=True)


def test_the_console_script_lists_its_commands_refuses_others_and_runs_each_commands_main(tmp_path, toy_start, capsys):
    from hf_reward import console

    with pytest.raises(SystemExit) as done:
        console.main(["--help"])
    listing = capsys.readouterr().out
    assert done.value.code == 0 and all(name in listing for name in console.COMMANDS)
    with pytest.raises(SystemExit) as done:
        console.main(["tuen"])
    assert done.value.code == 2 and "unknown command 'tuen'" in capsys.readouterr().err
    for name, (module, _) in console.COMMANDS.items():  # each names a module with a main, as scripts/ runs it
        assert callable(importlib.import_module(module).main), name
    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as done:  # a UsageError: one line, status 2, as the scripts do
        console.main(["evaluate", "--model_name_or_path", str(tmp_path / "missing")])
    assert done.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    console.main(
        ["evaluate", "--model_name_or_path", str(toy_start), "--toy_eval_images", "2", "--output_json", str(out)]
    )
    assert 0 <= json.loads(out.read_text())["mean_iou"] <= 1


def test_the_metric_sets_the_recipe_as_defaults_that_flags_override():
    *_, args, plan = TUNE.parse(["--metric", "object_f1", "--dataset", "camvid"])
    assert plan.key == "object_f1" and args.reward == "object_f1" and args.estimator == "score"
    assert args.reward_thing_classes == ["car", "pedestrian", "bicyclist"]  # the dataset's own
    *_, args, plan = TUNE.parse(["--metric", "boundary_f", "--boundary_tolerance", "0.75%", "--learning_rate", "1e-5"])
    assert plan.key == "boundary_f_0.75%" and args.lovasz_weight == 0.75 and args.learning_rate == 1e-5
    with pytest.raises(UsageError, match="--metric: metric must be one of"):
        TUNE.parse(["--metric", "boundary_F"])
