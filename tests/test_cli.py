"""The ``videox-fun`` command line and the examples/ entry points, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from videox_fun.cli import main
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "1", "--frames", "5", "--height", "32", "--width", "32", "--quiet"]


@pytest.fixture(scope="module")
def inp_folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "Tiny-InP", "inp")


def frame_count_and_size(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[:2]


def test_generate_writes_the_named_file_and_its_settings(inp_folder, tmp_path):
    out = tmp_path / "clip.mp4"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a red circle moving right",
                "--model",
                str(inp_folder),
                "--output",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert frame_count_and_size(out) == (5, (32, 32))
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["prompt"] == "a red circle moving right" and settings["mode"] == "t2v"


def test_prompts_file_writes_numbered_videos_in_one_process(inp_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\n\na blue square moving up\n")
    assert (
        main(
            [
                "generate",
                "--prompts-file",
                str(prompts),
                "--model",
                str(inp_folder),
                "--output-dir",
                str(tmp_path / "out"),
                *FAST,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == ["00000001.mp4", "00000002.mp4"]


def test_default_output_folder_follows_the_mode(inp_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = write_video(np.zeros((1, 32, 32, 3), "uint8"), tmp_path / "start.png")
    assert main(["generate", "--prompt", "x", "--model", str(inp_folder), "--image", str(image), *FAST]) == 0
    assert (tmp_path / "samples" / "Tiny-InP-videos_i2v" / "00000001.mp4").is_file()


def test_random_builtin_model_is_built_offline_and_says_it_is_random(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOX_FUN_CACHE", str(tmp_path / "cache"))
    args = ["generate", "--prompt", "a red circle moving right", "--model", "Wan2.1-Fun-Tiny-Random-InP"]
    assert main([*args, "--output", str(tmp_path / "d.mp4"), "--steps", "1", "--quiet"]) == 0
    assert "random weights" in capsys.readouterr().out
    assert frame_count_and_size(tmp_path / "d.mp4") == (17, (64, 64))


def test_default_model_is_the_packaged_trained_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "a red circle moving right", "--steps", "1", "--quiet"]) == 0
    assert "random weights" not in capsys.readouterr().out
    assert frame_count_and_size(tmp_path / "samples" / "Wan2.1-Fun-Tiny-InP-videos" / "00000001.mp4") == (17, (64, 64))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "i2v"], "needs --image"),
        (["--image", "missing.png"], "missing.png"),
        (["--mode", "control", "--control-video", "c.mp4"], "Fun Control model"),
    ],
)
def test_bad_input_fails_with_a_message(inp_folder, tmp_path, capsys, extra, message):
    (tmp_path / "c.mp4").write_bytes(b"")
    args = [
        "generate",
        "--prompt",
        "x",
        "--model",
        str(inp_folder),
        *[a.replace("c.mp4", str(tmp_path / "c.mp4")) for a in extra],
        *FAST,
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unknown_model_is_named(capsys):
    assert main(["generate", "--prompt", "x", "--model", "No-Such-Model"]) == 2
    assert "No-Such-Model" in capsys.readouterr().err


@pytest.mark.slow
def test_example_entry_point_runs_in_a_fresh_process(inp_folder, tmp_path):
    out = tmp_path / "example.mp4"
    script = REPO / "examples" / "wan2.1_fun" / "predict_t2v.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--prompt",
            "a green square moving left",
            "--model",
            str(inp_folder),
            "--output",
            str(out),
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert frame_count_and_size(out) == (5, (32, 32))


def test_help_lists_the_flags():
    done = subprocess.run(
        [sys.executable, "-m", "videox_fun.cli", "generate", "--help"], capture_output=True, text=True, timeout=120
    )
    for flag in (
        "--prompt",
        "--negative-prompt",
        "--mode",
        "--end-image",
        "--control-video",
        "--camera",
        "--prompts-file",
        "--output-dir",
        "--sampler",
        "--shift",
    ):
        assert flag in done.stdout


def test_calibrate_cache_then_generate_with_teacache(tmp_path):
    folder = build_tiny_model_folder(tmp_path / "Tiny-Calibrate", "inp")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\n")
    assert main(["calibrate-cache", "--model", str(folder), "--prompts-file", str(prompts), "--steps", "6"]) == 0
    calibration = json.loads((folder / "cache_calibration.json").read_text())
    assert len(calibration["coefficients"]) == 5 and calibration["samples"] == 2 * 5
    out = tmp_path / "cached.mp4"
    args = [
        "generate",
        "--prompt",
        "a red circle moving right",
        "--model",
        str(folder),
        "--output",
        str(out),
        "--cache",
        "teacache",
        "--num-skip-start-steps",
        "1",
        "--cfg-skip-ratio",
        "0.25",
        *FAST,
    ]
    assert main(args) == 0
    assert json.loads(out.with_suffix(".json").read_text())["cache"] == "teacache"
