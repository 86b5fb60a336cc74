"""TrainConfig: flags with VideoX-Fun's names, a YAML file with the same fields, checks at start."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from videox_fun.training.config import (
    TrainConfig,
    add_train_arguments,
    config_from_args,
    parse_train_args,
    save_train_yaml,
)

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_videox_fun_flags_parse():
    config = parse_train_args(
        [
            "--pretrained_model_name_or_path=models/Diffusion_Transformer/Wan2.1-Fun-1.3B-InP",
            "--config_path=config/wan2.1/wan_fun_civitai.yaml",
            "--train_data_dir=datasets/internal_datasets/",
            "--train_data_meta=datasets/internal_datasets/metadata.json",
            "--train_batch_size=1",
            "--gradient_accumulation_steps=4",
            "--video_sample_size",
            "480",
            "832",
            "--video_sample_n_frames=81",
            "--enable_bucket",
            "--random_hw_adapt",
            "--training_with_video_token_length",
            "--gradient_checkpointing",
            "--low_vram",
            "--train_mode=inpaint",
            "--trainable_modules",
            ".",
            "--lora_skip_name",
            "ffn",
            "--uniform_sampling",
            "--resume_from_checkpoint=latest",
        ]
    )
    assert config.video_sample_size == [480, 832] and config.enable_bucket and config.gradient_checkpointing
    assert config.gradient_accumulation_steps == 4 and config.trainable_modules == ["."]
    assert config.timestep_sampling == "uniform" and config.lora_skip_name == ["ffn"]
    config.validate()


def test_yaml_holds_the_same_fields_and_flags_override_it(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"train_batch_size": 3, "learning_rate": 5e-5, "use_lora": True, "rank": 16}))
    config = parse(["--config", str(path), "--rank", "8", "--no-use_lora"])
    assert config.train_batch_size == 3 and config.learning_rate == 5e-5
    assert config.rank == 8 and config.use_lora is False
    assert parse([]).rank == TrainConfig().rank  # no file, no flag: the documented default


def test_unknown_yaml_field_and_bad_settings_fail_at_start(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"train_batchsize": 3}))
    with pytest.raises(ValueError, match=r"unknown training config fields \['train_batchsize'\]"):
        parse(["--config", str(path)])
    bad = TrainConfig(pretrained_model_name_or_path="m", train_data_meta="m.json", train_mode="img2vid")
    with pytest.raises(ValueError, match="--train_mode 'img2vid' is unknown; choose one of normal, inpaint"):
        bad.validate()
    with pytest.raises(ValueError, match="must be 4k\\+1"):
        TrainConfig(pretrained_model_name_or_path="m", train_data_meta="m.json", video_sample_n_frames=16).validate()
    with pytest.raises(ValueError, match="--train_data_meta is required"):
        TrainConfig(pretrained_model_name_or_path="m").validate()
    # The data layer's rules, named as flags, fail at start (before any model loads).
    with pytest.raises(ValueError) as raised:
        TrainConfig(pretrained_model_name_or_path="m", video_sample_stride=0, text_drop_ratio=2.0).validate()
    assert "--video_sample_stride must be at least 1" in str(raised.value)
    assert "--text_drop_ratio must be between 0 and 1" in str(raised.value)
    with pytest.raises(SystemExit):  # argparse names the choices
        parse(["--train_mode", "img2vid"])


@pytest.mark.parametrize("shift", [0.0, -2.0, float("nan")])
def test_a_shift_that_is_not_positive_fails_at_start(shift):
    with pytest.raises(ValueError, match="--shift must be > 0"):
        TrainConfig(pretrained_model_name_or_path="m", train_data_meta="m.json", shift=shift).validate()
    TrainConfig(pretrained_model_name_or_path="m", train_data_meta="m.json", shift=0.5).validate()


def test_the_run_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "train_config.yaml"
    save_train_yaml(TrainConfig(learning_rate=5e-5), path)
    before = path.read_bytes()

    def dump_half(data, stream, **kwargs):
        stream.write("learning_rate: 0.1\n")
        raise OSError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", dump_half)
    with pytest.raises(OSError, match="disk full"):
        save_train_yaml(TrainConfig(learning_rate=0.1), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["train_config.yaml"]


def script_flags(script: str, family: str = "wan2.1_fun") -> list[str]:
    """The training flags an example script passes (train.sh's command, then the script's own)."""
    text = (REPO / "scripts" / family / script).read_text()
    marker = f"scripts/{family}/train.py \\\n" if script == "train.sh" else 'train.sh" \\\n'
    command = text.split(marker, 1)[1].split('"$@"')[0]
    for name, value in (("$MODEL_NAME", "m"), ("$DATASET_NAME", "d"), ("$DATASET_META_NAME", "d.json")):
        command = command.replace(name, value)
    own = shlex.split(command.replace("\\\n", " "))
    return own if script == "train.sh" else [*script_flags("train.sh", family), *own]


CONTROL_MODES = {"wan2.1_fun": "control_ref", "cogvideox_fun": "control"}


@pytest.mark.parametrize("family", sorted(CONTROL_MODES))
@pytest.mark.parametrize("script", ["train.sh", "train_lora.sh", "train_control.sh"])
def test_the_example_scripts_use_only_known_flags(script, family):
    config = parse_train_args(script_flags(script, family))
    config.validate()
    assert config.use_lora == (script == "train_lora.sh")
    assert config.train_mode == (CONTROL_MODES[family] if script == "train_control.sh" else "inpaint")


def test_videox_fun_only_flags_are_accepted_mapped_or_reported(caplog):
    flags = ["--pretrained_model_name_or_path=m", "--train_data_meta=d.json", "--weighting_scheme=logit_normal"]
    flags += ["--use_deepspeed", "--local_rank=0", "--tracker_project_name", "wan", "--allow-tf32"]
    with pytest.raises(SystemExit):  # a flag that would change training and is not implemented is refused
        parse_train_args(flags)
    with caplog.at_level("WARNING"):
        config = parse_train_args(flags[:-1])
    assert (config.timestep_sampling, config.weighting_scheme) == ("logit_normal", "none")
    reported = caplog.text
    assert "--use_deepspeed has no effect here" in reported and "--local_rank" in reported
    assert parse_train_args([*flags[:2], "--weighting_scheme=cosmap"]).weighting_scheme == "cosmap"
    hyphens = parse_train_args(["--pretrained-model-name-or-path=m", "--train-data-meta=d.json", "--use-lora"])
    assert hyphens.use_lora and hyphens.pretrained_model_name_or_path == "m"


def test_script_presets_give_way_to_flags():
    assert parse_train_args(["--pretrained_model_name_or_path=m"], use_lora=True).use_lora
    assert not parse_train_args(["--pretrained_model_name_or_path=m", "--no-use_lora"], use_lora=True).use_lora
    control = parse_train_args(["--pretrained_model_name_or_path=m"], train_mode="control")
    assert control.train_mode == "control"
    assert parse_train_args(["--train_mode=control_ref"], train_mode="control").train_mode == "control_ref"


@pytest.mark.parametrize("script", ["train.py", "train_lora.py", "train_control.py"])
def test_videox_fun_script_names_exist_and_parse(script):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "wan2.1_fun" / script), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "--train_mode" in done.stdout and "--use_deepspeed" in done.stdout
