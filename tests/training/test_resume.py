"""Checkpoints and resume: a run stopped after k steps and resumed to n ends where an uninterrupted run does."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import state_dict_max_diff
from safetensors.torch import load_file

from videox_fun.training.checkpoint import list_checkpoints, resolve_resume
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


def test_resume_with_other_trainable_parameters_fails_clearly(make_config, tmp_path):
    train(make_config(max_train_steps=1, use_lora=True, rank=4))
    with pytest.raises(ValueError, match="trainable parameters of this run"):
        train(make_config(max_train_steps=2, use_lora=True, rank=8, resume_from_checkpoint="latest"))
