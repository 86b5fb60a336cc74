"""Checkpoints and resume: a run stopped after k steps and resumed to n ends where an uninterrupted run does.

A new run refuses a folder holding another run; a resume refuses settings that would change the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import write_train_yaml

from videox_fun.cli import main
from videox_fun.training.checkpoint import check_run_start, list_checkpoints, resolve_resume
from videox_fun.training.specs.wan import WanSpec
from videox_fun.training.trainer import train


@pytest.mark.parametrize(
    ("variant", "settings"),
    [
        # 3 clips, batch 1, 2 micro-batches per step: resumed mid-epoch, and the rest crosses an epoch.
        ("inp", dict(train_mode="inpaint", gradient_accumulation_steps=2)),
        ("t2v", dict(use_lora=True, rank=4, network_alpha=4.0, gradient_checkpointing=True)),
    ],
    ids=["full-inpaint", "lora-t2v"],
)
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(make_config, tmp_path, variant, settings):
    whole = train(make_config(variant, output_dir=str(tmp_path / "whole"), max_train_steps=4, **settings))
    first = train(make_config(variant, output_dir=str(tmp_path / "split"), max_train_steps=2, **settings))
    resumed = make_config(
        variant, output_dir=str(tmp_path / "split"), max_train_steps=4, resume_from_checkpoint="latest", **settings
    )
    rest = train(resumed)
    assert first.losses + rest.losses == whole.losses  # same data order, noise, masks and optimizer state
    state = json.loads((tmp_path / "split" / "checkpoint-2" / "training_state.json").read_text())
    micro_batches = 2 * settings.get("gradient_accumulation_steps", 1)
    assert state["step"] == 2 and state["sampler"]["epoch"] * 3 + state["sampler"]["position"] == micro_batches

    name = "lora.safetensors" if settings.get("use_lora") else "transformer/diffusion_pytorch_model.safetensors"
    weights = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
    difference = state_dict_max_diff(*weights)
    print(f"{variant}: resumed vs uninterrupted max abs diff {difference:.2e}")
    assert difference <= 1e-6


def test_resume_takes_the_newest_complete_checkpoint(make_config, tmp_path):
    config = make_config(output_dir=str(tmp_path / "run"), max_train_steps=2, checkpointing_steps=1, use_lora=True)
    train(config)
    out = tmp_path / "run"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    # A save killed half-way leaves only a temporary folder, and a folder without the state file is not complete.
    shutil.copytree(out / "checkpoint-2", out / ".checkpoint-3.tmp")
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")
    (out / "checkpoint-4" / "training_state.json").unlink()
    assert resolve_resume(out, "latest") == out / "checkpoint-2"
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(out, "checkpoint-4")


def test_checkpoints_total_limit_keeps_the_newest(make_config, tmp_path):
    config = make_config(max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2, use_lora=True)
    train(config)
    assert [p.name for p in list_checkpoints(config.output_dir)] == ["checkpoint-2", "checkpoint-3"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Make loading a model fail the test: what runs before it must have refused already."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(WanSpec, "load_models", refuse)


def fake_run(folder: Path) -> dict[str, bytes]:
    """An output folder holding a finished LoRA run's files; returns their contents."""
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "training_state.json").write_text(json.dumps({"step": 2}))
    (folder / "lora.safetensors").write_bytes(b"the old run's LoRA")
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def train_cli_error(config, tmp_path: Path, capsys) -> str:
    """``videox-fun train`` on the config must fail as a user error; its message, stripped."""
    capsys.readouterr()  # not what building the tiny model printed
    assert main(["train", "--config", str(write_train_yaml(config, tmp_path / "train.yaml"))]) == 2
    return capsys.readouterr().err.strip()


def test_a_new_run_refuses_an_output_dir_holding_a_run(make_config, tmp_path, capsys, no_model_loads):
    out = tmp_path / "out"
    before = fake_run(out)
    err = train_cli_error(make_config(output_dir=str(out), max_train_steps=1), tmp_path, capsys)
    assert "\n" not in err and f"--output_dir {out} already holds a run (checkpoint-2, lora.safetensors)" in err
    assert "--resume_from_checkpoint latest" in err and "new or empty --output_dir" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    # 'latest' with outputs but no complete checkpoint to continue from is refused too.
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(ValueError, match=r"holds another run \(lora.safetensors\) but no complete checkpoint"):
        train(make_config(output_dir=str(out), resume_from_checkpoint="latest"))


def test_a_new_run_may_use_an_empty_folder_or_one_without_outputs(make_config, tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_run_start(make_config(output_dir=str(tmp_path / "empty"))) is None
    assert check_run_start(make_config(output_dir=str(tmp_path / "new" / "run"))) is None
    (tmp_path / "started").mkdir()  # a start that failed before training: only its record and logs
    (tmp_path / "started" / "train_config.yaml").write_text("seed: 1\n")
    (tmp_path / "started" / "logs").mkdir()
    assert check_run_start(make_config(output_dir=str(tmp_path / "started"))) is None


def test_an_output_dir_that_is_a_file_fails_before_loading(make_config, tmp_path, capsys, no_model_loads):
    (tmp_path / "base.mp4").write_bytes(b"not a folder")
    for output_dir in (tmp_path / "base.mp4", tmp_path / "base.mp4" / "run"):
        err = train_cli_error(make_config(output_dir=str(output_dir), max_train_steps=1), tmp_path, capsys)
        assert "\n" not in err and f"{tmp_path / 'base.mp4'} is a file, not a folder" in err, err


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_resume_refuses_changed_run_settings_and_accepts_the_others(make_config, tmp_path, monkeypatch):
    run = dict(train_mode="inpaint", use_lora=True, rank=4, network_alpha=4.0, learning_rate=1e-3)
    train(make_config("inp", max_train_steps=1, **run))
    out = tmp_path / "out"
    record = (out / "train_config.yaml").read_bytes()

    changed = {**run, "learning_rate": 1e-2, "train_mode": "normal"}
    with monkeypatch.context() as patch:
        patch.setattr(WanSpec, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(ValueError) as raised:
            train(make_config("inp", max_train_steps=2, resume_from_checkpoint="latest", **changed))
    message = str(raised.value)
    assert "\n" not in message and "checkpoint-1 was trained with other settings" in message
    assert "--learning_rate was 0.001, now 0.01" in message and "--train_mode was inpaint, now normal" in message
    assert "--rank" not in message and f"{out / 'train_config.yaml'} holds them" in message
    assert (out / "train_config.yaml").read_bytes() == record  # the run's record is not rewritten
    assert json.loads((out / "checkpoint-1" / "training_state.json").read_text())["settings"]["learning_rate"] == 1e-3

    # Length, checkpointing, logging and memory settings may change; the record says what the run now is.
    may_change = dict(checkpointing_steps=7, logging_dir="logs2", gradient_checkpointing=True, max_bad_share=0.5)
    result = train(make_config("inp", max_train_steps=2, resume_from_checkpoint="latest", **run, **may_change))
    assert result.global_step == 2 and len(result.losses) == 1
    saved = read_yaml(out / "train_config.yaml")
    assert saved["max_train_steps"] == 2 and saved["checkpointing_steps"] == 7 and saved["learning_rate"] == 1e-3


def test_a_checkpoint_without_a_settings_record_still_resumes(make_config, tmp_path, caplog):
    train(make_config(max_train_steps=1, use_lora=True, rank=4))
    out = tmp_path / "out"
    state_file = out / "checkpoint-1" / "training_state.json"
    state = json.loads(state_file.read_text())
    state.pop("settings", None)  # as written before the record was kept
    state_file.write_text(json.dumps(state))
    record = (out / "train_config.yaml").read_bytes()
    # Unchecked, another rank is still caught when the weights load.
    with pytest.raises(ValueError, match="trainable parameters of this run"):
        train(make_config(max_train_steps=2, use_lora=True, rank=8, resume_from_checkpoint="latest"))
    with caplog.at_level("WARNING"):
        result = train(make_config(max_train_steps=2, use_lora=True, rank=4, resume_from_checkpoint="latest"))
    assert result.global_step == 2 and len(result.losses) == 1
    assert "holds no record of its run's settings" in caplog.text
    assert (out / "train_config.yaml").read_bytes() == record  # unchecked: the run's own record is left
    assert "settings" in json.loads((out / "checkpoint-2" / "training_state.json").read_text())


def test_resume_with_another_rank_names_it(make_config, tmp_path):
    train(make_config(max_train_steps=1, use_lora=True, rank=4))
    with pytest.raises(ValueError, match="--rank was 4, now 8"):
        train(make_config(max_train_steps=2, use_lora=True, rank=8, resume_from_checkpoint="latest"))
