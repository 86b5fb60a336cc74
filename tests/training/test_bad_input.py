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
    err = run_cli(make_config(), tmp_path, capsys, train_mode="i2v")
    assert "--train_mode 'i2v' is unknown; choose one of normal, inpaint, control, control_ref" in err


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
