"""Wan2.2-Animate through the programmatic entry, ``videox-fun generate`` and examples/wan2.2/predict_animate.py, on
the built-in tiny random Animate model: a preprocessing folder in, a video (decoded by PyAV) and its sidecar out; a
missing file, or an Animate mode on another model, is one line and exit 2 before any weight loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import frame_count_and_size, write_animate_sources

from videox_fun import api
from videox_fun.api import GenerationRequest, check_request
from videox_fun.cli import main
from videox_fun.families import recognise
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.registry import resolve_model

REPO = Path(__file__).resolve().parents[1]
MODEL = "Wan2.2-Animate-Tiny-Random"
FRAMES, SIZE = 7, 32
FAST = ["--prompt", "a person dancing", "--steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache folder of its own for the built-in models (materialised there on first use)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIDEOX_FUN_CACHE", str(folder))
        resolve_model(MODEL)
        yield folder


@pytest.fixture(autouse=True)
def use_cache(cache, monkeypatch) -> None:
    monkeypatch.setenv("VIDEOX_FUN_CACHE", str(cache))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A preprocessing folder as Wan-Animate's writes it for replacement (animation reads the first three files)."""
    return write_animate_sources(tmp_path_factory.mktemp("process_results"), FRAMES, SIZE)


@pytest.fixture
def no_load(monkeypatch) -> None:
    """Fail the test if a model loads: refusals must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api, "load_pipeline", refuse)


def sidecar(video: Path) -> dict:
    return json.loads(video.with_suffix(".json").read_text())


def test_animate_is_inferred_from_the_folder_and_runs_on_the_built_in_model(sources, tmp_path):
    out = tmp_path / "animated.mp4"
    # No --model, no --mode: the folder asks for animate, and the built-in Animate model serves it.
    assert main(["generate", *FAST, "--src-root-path", str(sources), "--clip-len", "5", "--output", str(out)]) == 0
    assert frame_count_and_size(out) == (FRAMES, (SIZE, SIZE))
    settings = sidecar(out)
    assert (settings["model"], settings["mode"], settings["src_root_path"]) == (MODEL, "animate", str(sources))
    assert (settings["clip_len"], settings["refert_num"], settings["num_frames"]) == (5, 1, FRAMES)
    # The release's sampling (the tiny model's folder config says so): DPM++, shift 5, no guidance, 30 fps.
    assert (settings["sampler"], settings["shift"], settings["guidance_scale"], settings["fps"]) == (
        "Flow_DPM++",
        5.0,
        1.0,
        30,
    )


def test_replace_carries_five_frames_and_resizes_on_request(sources, tmp_path):
    out = tmp_path / "replaced.mp4"
    flags = ["--model", MODEL, "--mode", "replace", "--src-root-path", str(sources), "--output", str(out)]
    flags += ["--segment-frame-length", "9", "--refert-num", "5", "--sample-size", "64", "64", "--frames", "6"]
    assert main(["generate", *FAST, *flags]) == 0
    assert frame_count_and_size(out) == (6, (64, 64))  # the first 6 frames, at --sample-size
    settings = sidecar(out)
    assert (settings["mode"], settings["clip_len"], settings["refert_num"]) == ("replace", 9, 5)
    assert (settings["height"], settings["width"]) == (64, 64)


def test_the_programmatic_entry_takes_the_folder_as_an_extra_setting(sources):
    loaded = api.load_pipeline(MODEL, api.RuntimeOptions(device="cpu"))
    try:
        request = GenerationRequest(prompt="x", steps=1, extra={"src_root_path": sources, "clip_len": 5})
        result = loaded.generate(request, progress=False)
    finally:
        loaded.close()
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3) and result.mode.name == "animate"
    assert loaded.output_folder("animate").name == f"{MODEL}-videos_animate"


@pytest.mark.parametrize(
    ("missing", "mode", "named"),
    [
        ("src_face.mp4", "animate", "src_face.mp4"),
        ("src_mask.mp4", "replace", "src_mask.mp4"),
        ("src_bg.mp4", "animate", None),  # animation does not read the background
    ],
)
def test_a_missing_file_is_one_line_before_loading(sources, tmp_path, capsys, no_load, missing, mode, named):
    folder = tmp_path / "process_results"
    folder.mkdir()
    for path in sources.iterdir():
        if path.name != missing:
            (folder / path.name).write_bytes(path.read_bytes())
    flags = ["generate", *FAST, "--model", MODEL, "--mode", mode, "--src-root-path", str(folder)]
    if named is None:  # every check passed: it goes on to load
        with pytest.raises(AssertionError, match="the model was loaded"):
            main(flags)
        return
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and str(folder) in err


def test_animate_settings_on_other_models_and_modes_are_one_clear_line(tmp_path, capsys, no_load, sources):
    inp = build_tiny_model_folder(tmp_path / "Tiny-InP", "inp")
    capsys.readouterr()  # its writer's progress
    animate = ["--model", MODEL, "--src-root-path", str(sources)]
    cases = [
        (["--model", str(inp), "--mode", "animate", "--src-root-path", str(sources)], "needs a Wan2.2-Animate model"),
        (["--model", str(inp), "--src-root-path", str(sources)], "mode 'animate' needs a Wan2.2-Animate model"),
        (["--model", str(inp), "--refert-num", "5"], "mode 't2v' does not use --refert-num"),
        (["--model", MODEL, "--mode", "animate"], "mode 'animate' needs --src-root-path"),
        (["--model", MODEL, "--mode", "t2v"], "the loaded model is of the Animate variant, serving animate, replace"),
        ([*animate, "--clip-len", "6"], "--clip-len must be of the form 4n + 1"),
        ([*animate, "--clip-len", "5", "--refert-num", "5"], "--clip-len 5 must be above --refert-num 5"),
        ([*animate, "--vace-context-scale", "1"], "mode 'animate' does not use --vace-context-scale"),
    ]
    for flags, message in cases:
        assert main(["generate", *FAST, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)


def test_a_setting_no_family_declares_is_refused(sources):
    recognised = recognise(resolve_model(MODEL))
    with pytest.raises(ValueError, match="setting 'segment_length' is not one the wan family reads"):
        check_request(recognised, GenerationRequest(prompt="x", extra={"segment_length": 5}))
    request = GenerationRequest(prompt="x", extra={"src_root_path": str(sources)})
    assert check_request(recognised, request) == "animate"


@pytest.mark.slow
def test_the_example_script_animates_on_the_built_in_model(sources, tmp_path, cache):
    out = tmp_path / "example.mp4"
    script = REPO / "examples" / "wan2.2" / "predict_animate.py"
    flags = [*FAST, "--src_root_path", str(sources), "--segment_frame_length", "5", "--output", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VIDEOX_FUN_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert frame_count_and_size(out) == (FRAMES, (SIZE, SIZE))
    assert sidecar(out)["mode"] == "animate" and sidecar(out)["model"] == MODEL
