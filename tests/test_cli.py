"""The ``videox-fun`` command line and the examples/ entry points, run as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HANG_GUARD_S, decode_video, frame_count_and_size

from videox_fun.cli import build_parser, main
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "1", "--frames", "5", "--height", "32", "--width", "32", "--quiet"]


@pytest.fixture(scope="module")
def inp_folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("models") / "Tiny-InP", "inp")


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
    assert (settings["cfg_skip_ratio"], settings["cfg_sequential"]) == (0.0, False)  # all that shapes the video


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


@pytest.mark.parametrize(
    ("model", "frames"), [("Wan2.1-Fun-Tiny-Random-InP", 17), ("CogVideoX-Fun-Tiny-Random-InP", 9)]
)
def test_random_builtin_model_is_built_offline_and_says_it_is_random(tmp_path, monkeypatch, capsys, model, frames):
    monkeypatch.setenv("VIDEOX_FUN_CACHE", str(tmp_path / "cache"))
    args = ["generate", "--prompt", "a red circle moving right", "--model", model]
    assert main([*args, "--output", str(tmp_path / "d.mp4"), "--steps", "1", "--quiet"]) == 0
    assert "random weights" in capsys.readouterr().out
    assert frame_count_and_size(tmp_path / "d.mp4") == (frames, (64, 64))


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
        (["--mode", "v2v", "--video", "c.mp4", "--mask", "c.mp4"], "does not use --mask"),
        (["--mode", "t2v", "--image", "c.mp4"], "ask for mode 'i2v'"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--cfg-skip-ratio", "2"], "between 0 and 1"),
        (["--fp8", "scaled"], "needs a *_qfloat8 --gpu-memory-mode"),
        (["--output", "clip.xyz"], "--output clip.xyz: use one of"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_bad_input_fails_with_a_message(inp_folder, tmp_path, capsys, extra, message):
    write_video(np.zeros((5, 32, 32, 3), dtype=np.uint8), tmp_path / "c.mp4", fps=8)  # a valid input file
    args = [
        "generate",
        "--prompt",
        "x",
        "--model",
        str(inp_folder),
        *FAST,
        *[a.replace("c.mp4", str(tmp_path / "c.mp4")) for a in extra],
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_output_with_several_prompts_fails_before_loading(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\n")
    args = ["generate", "--prompts-file", str(prompts), "--output", str(tmp_path / "one.mp4"), "--model", "No-Model"]
    assert main(args) == 2  # the message is about --output: the (unknown) model was never looked up
    assert "with several prompts use --output-dir" in capsys.readouterr().err


def test_unknown_model_is_named(capsys):
    assert main(["generate", "--prompt", "x", "--model", "No-Such-Model"]) == 2
    assert "No-Such-Model" in capsys.readouterr().err


def test_missing_attention_package_is_a_one_line_error(capsys):
    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed here")
    assert main(["generate", "--prompt", "x", "--attention", "sage", *FAST]) == 2
    err = capsys.readouterr().err
    assert "error: attention backend 'sage'" in err
    assert "pip install sageattention" in err
    assert "available here: sdpa" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_example_entry_point_runs_in_a_fresh_process_and_inpaints_given_a_mask(inp_folder, tmp_path):
    video, mask = tmp_path / "in.mp4", tmp_path / "mask.mp4"
    write_video(np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), video, fps=8)
    white_right_half = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    white_right_half[:, :, 16:] = 255
    write_video(white_right_half, mask, fps=8)
    out = tmp_path / "example.mp4"
    script = REPO / "examples" / "wan2.1_fun" / "predict_v2v.py"
    flags = ["--prompt", "a green square moving left", "--model", str(inp_folder), "--output", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), *flags, "--video", str(video), "--mask", str(mask), *FAST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert frame_count_and_size(out) == (5, (32, 32))
    assert json.loads(out.with_suffix(".json").read_text())["mode"] == "inpaint"  # the v2v script's mask is used


def test_videox_fun_flag_spellings_are_accepted(inp_folder, tmp_path):
    out = tmp_path / "spelled.mp4"
    flags = ["--num_inference_steps", "1", "--video_length", "5", "--sample_size", "32", "48", "--guidance_scale", "2"]
    flags += ["--GPU_memory_mode", "model_cpu_offload", "--sampler_name", "Flow_Unipc"]
    flags += ["--cache", "first-block", "--teacache_threshold=0.2"]  # the tiny model has no TeaCache fit
    assert main(["generate", "--prompt", "x", "--model", str(inp_folder), "--output", str(out), "--quiet", *flags]) == 0
    assert frame_count_and_size(out) == (5, (32, 48))
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["guidance_scale"] == 2.0 and settings["sampler"] == "Flow_Unipc"
    assert settings["gpu_memory_mode"] == "model_cpu_offload"
    assert (settings["cache"], settings["cache_threshold"]) == ("first-block", 0.2)
    assert build_parser().parse_args(["generate", "--enable_teacache", "--teacache_threshold=0.2"]).cache == "teacache"


def test_lora_path_merges_at_its_weight(inp_folder, tmp_path, capsys):
    from videox_fun.models.wan.transformer import WanTransformer3DModel
    from videox_fun.training.lora import add_lora, save_lora_file

    adapted = WanTransformer3DModel.from_pretrained(inp_folder)
    add_lora(adapted, rank=2, alpha=2.0, targets=("q", "v", "ffn.2"))
    for param in adapted.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.5)
    lora = save_lora_file(adapted.state_dict(), tmp_path / "lora.safetensors", rank=2, alpha=2.0)

    def frames(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", "--prompt", "x", "--model", str(inp_folder), "--output", str(out), *FAST, *extra]) == 0
        return decode_video(out)

    plain = frames("plain")
    np.testing.assert_array_equal(frames("zero", "--lora-path", str(lora), "--lora-weight", "0"), plain)
    assert np.abs(frames("full", "--lora-path", str(lora)).astype(int) - plain).max() > 0
    sidecar = json.loads((tmp_path / "full.json").read_text())
    assert sidecar["loras"] == [{"path": str(lora), "weight": 1.0}]
    weights = ["--lora-path", str(lora), "--lora-weight", "1", "--lora-weight", "2"]
    assert main(["generate", "--prompt", "x", "--model", str(inp_folder), *weights, *FAST]) == 2
    assert "2 --lora-weight values for 1" in capsys.readouterr().err


def test_help_lists_the_flags():
    done = subprocess.run(
        [sys.executable, "-m", "videox_fun.cli", "generate", "--help"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
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


def test_calibrate_cache_on_a_control_model_and_never_into_the_package(tmp_path, capsys):
    folder = build_tiny_model_folder(tmp_path / "Tiny-Control", "control")
    control = write_video(np.full((5, 32, 32, 3), 40, dtype=np.uint8), tmp_path / "control.mp4", fps=8)
    calibrate = ["calibrate-cache", "--model", str(folder), "--steps", "4"]
    assert main(calibrate) == 2
    assert "give the --control-video" in capsys.readouterr().err
    assert main([*calibrate, "--control-video", str(control)]) == 0
    assert len(json.loads((folder / "cache_calibration.json").read_text())["coefficients"]) == 5
    assert main(["calibrate-cache", "--steps", "2"]) == 2  # the packaged default model keeps its own file
    assert "give --out FILE" in capsys.readouterr().err


def test_two_expert_folder_generates_with_its_own_low_noise_guidance(tmp_path):
    folder = build_tiny_model_folder(tmp_path / "Tiny-A14B", "inp", boundary=0.875)
    out = tmp_path / "a14b.mp4"
    flags = ["--model", str(folder), "--output", str(out), "--guidance", "4", "--guidance-2", "2.5", *FAST]
    cache = ["--cache", "teacache", "--num-skip-start-steps", "1"]  # one cache per expert
    assert main(["generate", "--prompt", "a red circle moving right", *flags, "--steps", "3", *cache]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())
    assert (settings["guidance_scale"], settings["guidance_scale_2"], settings["boundary"]) == (4.0, 2.5, 0.875)
    assert settings["teacache_indicator"] == "time_projection"  # what Wan2.2's published set was fitted on


def test_calibrate_cache_fits_both_experts_of_a_two_expert_model(tmp_path):
    from videox_fun.pipelines.wan import WanPipeline
    from videox_fun.runtime.cache import coefficients_for

    folder = build_tiny_model_folder(tmp_path / "Tiny-A14B", "inp", boundary=0.875)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\n")
    assert main(["calibrate-cache", "--model", str(folder), "--prompts-file", str(prompts), "--steps", "8"]) == 0
    calibration = json.loads((folder / "cache_calibration.json").read_text())
    # 8 steps split 3 high-noise + 5 low-noise: each expert pairs its own consecutive steps.
    assert calibration["indicator"] == "time_projection" and calibration["samples"] == 2 + 4
    assert "both experts (2 + 4 step pairs" in calibration["note"]
    pipe = WanPipeline.from_pretrained(folder)
    for expert in pipe.transformers:  # what generate --cache teacache then uses for each expert
        assert coefficients_for(expert, folder, "time_projection", two_experts=True) == calibration["coefficients"]


def test_camera_takes_a_built_in_trajectory_name(tmp_path):
    folder = build_tiny_model_folder(tmp_path / "Tiny-Camera", "camera")
    out = tmp_path / "pan.mp4"
    flags = ["--model", str(folder), "--camera", "pan_left", "--output", str(out), *FAST]
    assert main(["generate", "--prompt", "x", *flags]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())
    assert (settings["mode"], settings["camera"]) == ("camera", "pan_left")


@pytest.mark.parametrize("script", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").rglob("*.py")))
def test_every_example_script_starts(script):
    done = subprocess.run(
        [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert done.returncode == 0, done.stderr
    if script.endswith("/app.py"):  # the web UI's entry: videox-fun ui's flags
        assert "--api-url" in done.stdout and "--gpu-memory-mode" in done.stdout
    else:
        assert "--lora-high-path" in done.stdout and "--guidance-2" in done.stdout


def test_an_example_script_given_another_modes_inputs_says_which_mode():
    script = REPO / "examples" / "wan2.1_fun" / "predict_v2v_control.py"
    done = subprocess.run(
        [sys.executable, str(script), "--prompt", "x", "--camera", "pan_left"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode != 0 and "serves control; these inputs ask for camera (--mode camera)" in done.stderr


def test_transformer_path_takes_a_folder_or_a_diffusers_named_file(inp_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from videox_fun.models.wan.keys import original_to_diffusers_keys

    # The same model folder with another transformer: what --transformer-path should reproduce.
    weights = load_file(
        str(build_tiny_model_folder(tmp_path / "seed1", "inp", seed=1) / "diffusion_pytorch_model.safetensors")
    )
    other = Path(shutil.copytree(inp_folder, tmp_path / "Other-InP"))
    save_file(weights, str(other / "diffusion_pytorch_model.safetensors"))
    save_file(original_to_diffusers_keys(weights), str(tmp_path / "diffusers_named.safetensors"))
    common = ["--prompt", "a red circle moving right", "--seed", "3", *FAST]
    for model, name in ((other, "other"), (inp_folder, "base")):
        main(["generate", "--model", str(model), "--output", str(tmp_path / f"{name}.mp4"), *common])
    expected = decode_video(tmp_path / "other.mp4")
    assert not np.array_equal(expected, decode_video(tmp_path / "base.mp4"))  # the weights matter
    for name, source in (("folder", other), ("file", tmp_path / "diffusers_named.safetensors")):
        out = tmp_path / f"{name}.mp4"
        flags = ["--transformer-path", str(source), "--output", str(out)]
        assert main(["generate", "--model", str(inp_folder), *flags, *common]) == 0
        assert np.array_equal(decode_video(out), expected), name
        assert json.loads(out.with_suffix(".json").read_text())["transformer_path"] == str(source)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shift", "0"], "--shift must be above 0"),
        (["--strength", "0"], "--strength must be in (0, 1]"),
        (["--seed", str(2**70)], "--seed must be in"),
        (["--teacache-threshold", "0.2"], "--cache-threshold: no effect without --cache"),
        (["--num-skip-start-steps", "2"], "--num-skip-start-steps: no effect without --cache"),
        (["--cache", "teacache", "--num-skip-start-steps", "-1"], "--num-skip-start-steps must be 0 or more"),
        (["--lora-weight", "0.5"], "--lora-weight without --lora-path"),
        (["--lora-path", "missing.safetensors"], "--lora-path: no file missing.safetensors"),
        (["--transformer-path", "missing/"], "--transformer-path missing: no such file or folder"),
        (["--riflex-k", "0"], "--riflex-k is a frame frequency index from 1"),
        (["--output", "{folder}"], "is a folder: name a file"),
        (["--output", "README.md/x.mp4"], "README.md is a file, not a folder"),
        (["--output-dir", "README.md"], "README.md is a file, not a folder"),
    ],
)
def test_flags_that_cannot_work_fail_before_any_model_loads(flags, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    (tmp_path / "folder.mp4").mkdir()
    flags = [flag.format(folder=tmp_path / "folder.mp4") for flag in flags]
    # The model folder does not exist: a check that came after loading would fail on that instead.
    assert main(["generate", "--prompt", "x", "--model", "no/such/model", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_nobody_may_write_fails_before_loading():
    import os
    import shutil
    import tempfile

    # Not under pytest's tmp_path: its root folder is private to the user running the tests.
    tmp_path = Path(tempfile.mkdtemp(prefix="videox-fun-locked-"))
    tmp_path.chmod(0o755)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    command = [sys.executable, "-m", "videox_fun.cli", "generate", "--prompt", "x", "--model", "no/such/model"]
    command += ["--output-dir", str(locked / "sub")]
    if os.geteuid() == 0:  # root writes anywhere: run it as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        probe = subprocess.run([*nobody, sys.executable, "-c", "import videox_fun"], capture_output=True, cwd=tmp_path)
        if probe.returncode != 0:
            shutil.rmtree(tmp_path)
            pytest.skip("another user cannot run this checkout (it sits in a folder only root may enter)")
        command = [*nobody, *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path)
    finally:
        shutil.rmtree(tmp_path)
    assert done.returncode == 2 and "no permission to write" in done.stderr, done.stderr


def test_other_commands_check_their_outputs_and_counts_first(tmp_path, capsys):
    calibrate = ["calibrate-cache", "--model", str(build_tiny_model_folder(tmp_path / "m", "t2v"))]
    assert main([*calibrate, "--out", str(tmp_path)]) == 2
    assert "is a folder: name a file" in capsys.readouterr().err
    assert main([*calibrate, "--steps", "2"]) == 2  # 4 prompts x 1 step pair for a degree-4 fit
    assert "cannot fit a degree-4 polynomial" in capsys.readouterr().err
    assert main(["bench", "vae", "--out", str(tmp_path)]) == 2
    assert main(["toyworld", "prompts", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "cache", "--prompts", "0"])
    assert "must be 1 or more" in capsys.readouterr().err


def test_eval_of_a_folder_where_nothing_can_be_judged_fails(tmp_path, capsys):
    write_video(np.zeros((5, 32, 32, 3), dtype=np.uint8), tmp_path / "a.mp4", fps=8)  # no sidecar
    assert main(["eval", "toyworld", str(tmp_path), "--quiet"]) == 2
    assert "no video in" in capsys.readouterr().err


def test_inputs_that_cannot_be_decoded_fail_before_any_model_loads(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "bad.txt").write_text("url\n1 2 3\n")
    missing_model = ["--model", "no/such/model"]  # a check after loading would fail on this instead
    assert main(["generate", "--prompt", "x", "--video", str(tmp_path / "bad.mp4"), *missing_model]) == 2
    assert "--video: cannot open video" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--camera", str(tmp_path / "bad.txt"), *missing_model]) == 2
    assert "bad.txt:2: expected 19 numbers" in capsys.readouterr().err
