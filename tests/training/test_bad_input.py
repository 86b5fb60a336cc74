"""Bad input fails at start saying what to change; bad files are skipped, warned about and counted."""

from __future__ import annotations

import importlib.util
import json

import pytest
from training_helpers import write_train_yaml

from videox_fun.cli import main
from videox_fun.training.data import BadFileWarning, write_test_dataset
from videox_fun.training.trainer import train


def run_cli(config, tmp_path, capsys, **changes) -> str:
    """Run ``videox-fun train`` on the config with ``changes``; it must fail as a user error: its message."""
    assert main(["train", "--config", str(write_train_yaml(config, tmp_path / "train.yaml", **changes))]) == 2
    return capsys.readouterr().err


def test_unknown_train_mode(make_config, tmp_path, capsys):
    err = run_cli(make_config(), tmp_path, capsys, train_mode="img2vid")
    assert "--train_mode 'img2vid' is unknown; choose one of normal, inpaint, i2v, ti2v, control, control_ref" in err


def test_metadata_that_does_not_parse(make_config, tmp_path, capsys):
    meta = tmp_path / "broken.json"
    meta.write_text('[{"file_path": "a.mp4", "text": "x"},, ]')
    err = run_cli(make_config(), tmp_path, capsys, train_data_meta=str(meta))
    assert "broken.json" in err and "line 1" in err


def test_empty_dataset(make_config, tmp_path, capsys):
    meta = tmp_path / "empty.json"
    meta.write_text("[]")
    err = run_cli(make_config(), tmp_path, capsys, train_data_meta=str(meta))
    assert "no entries, so there is nothing to train on" in err


def test_model_that_cannot_serve_the_mode(make_config, tmp_path, capsys):
    err = run_cli(make_config("t2v"), tmp_path, capsys, train_mode="control")
    assert "--train_mode control needs a Fun Control model" in err and "--init_from_t2v" in err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes(make_config, tmp_path, capsys):
    err = run_cli(make_config(max_train_steps=1), tmp_path, capsys, use_8bit_adam=True)
    assert "--use_8bit_adam needs bitsandbytes" in err


def test_too_many_bad_files_is_a_message_not_a_traceback(make_config, tmp_path, capsys):
    meta = write_test_dataset(tmp_path / "data", n_videos=3, sizes=((32, 32),), lengths=(5,), corrupt=1)
    config = make_config("t2v", max_train_steps=1)
    capsys.readouterr()  # not what building the tiny model printed
    with pytest.warns(BadFileWarning):
        err = run_cli(config, tmp_path, capsys, train_data_meta=str(meta))
    assert "1 of 4 data files checked are missing or unreadable" in err and "corrupt_00.mp4" in err
    assert "Traceback" not in err and err.startswith("error: ")


def test_a_corrupt_and_a_missing_file_are_skipped_warned_about_and_counted(make_config, tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=6, sizes=((32, 32),), lengths=(5,), corrupt=1, missing=1)
    config = make_config(
        "t2v", train_data_meta=str(meta), max_bad_share=0.5, max_train_steps=2, train_batch_size=2, low_vram=True
    )
    with pytest.warns(BadFileWarning) as caught:
        result = train(config)
    assert result.global_step == 2
    assert sorted(p.rsplit("/", 1)[1] for p in result.bad_files) == ["corrupt_00.mp4", "missing_00.mp4"]
    warned = " ".join(str(w.message) for w in caught)
    assert "corrupt_00.mp4" in warned and "missing_00.mp4" in warned
    assert json.loads(meta.read_text())[-1]["file_path"].endswith("missing_00.mp4")


@pytest.mark.parametrize(
    "changes",
    [
        dict(max_train_steps=-5),
        dict(max_train_steps=0),
        dict(num_train_epochs=0),
        dict(num_train_epochs=-1),
        dict(train_batch_size=0),
        dict(gradient_accumulation_steps=-2),
        dict(learning_rate=float("nan")),
    ],
    ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items()),
)
def test_counts_below_one_and_non_finite_numbers_are_refused_before_anything_is_written(
    make_config, tmp_path, capsys, changes
):
    config = make_config()
    capsys.readouterr()  # not what building the tiny model printed
    err = run_cli(config, tmp_path, capsys, **changes)
    name = next(iter(changes))
    assert err.count("\n") == 1 and err.startswith("error: bad training config: ") and f"--{name}" in err, err
    assert not (tmp_path / "out").exists()  # no train_config.yaml, no LoRA: the folder is no run


@pytest.mark.parametrize("flag", ["--learning_rate", "--max_grad_norm", "--shift"])
def test_float_flags_refuse_non_finite_values_in_one_line(make_config, tmp_path, capsys, flag):
    config = write_train_yaml(make_config(), tmp_path / "train.yaml")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", str(config), flag, "inf"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and flag in err and "finite" in err, err


def test_a_resumed_run_removes_the_half_saved_checkpoint_of_the_killed_one(make_config, tmp_path):
    settings = dict(output_dir=str(tmp_path / "run"), checkpointing_steps=1, use_lora=True, rank=2)
    train(make_config("t2v", max_train_steps=1, **settings))
    # What a run killed while saving step 4 leaves; the resumed run stops before it saves step 4 again.
    stale = tmp_path / "run" / ".checkpoint-4.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a checkpoint")
    result = train(make_config("t2v", max_train_steps=2, resume_from_checkpoint="latest", **settings))
    assert result.global_step == 2 and not stale.exists()
    assert sorted(p.name for p in (tmp_path / "run").glob("*checkpoint*")) == ["checkpoint-1", "checkpoint-2"]
