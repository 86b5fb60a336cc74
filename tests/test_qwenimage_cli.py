"""Qwen-Image through ``videox-fun generate`` and examples/qwenimage on the built-in tiny random models: PNG outputs
with their sidecars in every mode, one-line refusals (an edit model without an image, another family's VAE)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import read_png, read_sidecar, write_png
from qwenimage_helpers import random_image

from videox_fun.cli import main
from videox_fun.registry import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--quiet"]
T2I = ["--model", "Qwen-Image-Tiny-Random", "--height", "32", "--width", "32", *FAST]
EDIT = ["--model", "Qwen-Image-Edit-Tiny-Random", *FAST]
pytestmark = pytest.mark.usefixtures("builtin_cache")


def test_generate_writes_a_png_and_its_sidecar(tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "--prompt", "a red circle", "--output", str(out), *T2I]) == 0
    assert read_png(out).shape == (32, 32, 3)
    record = read_sidecar(out)
    assert (record["mode"], record["variant"], record["guidance_scale"]) == ("t2i", "Qwen-Image", 4.0)
    assert record["negative_prompt"] == " " and record["shift"] is None and record["mu"] > 0


def test_i2i_and_inpaint_write_pngs(tmp_path):
    image = write_png(tmp_path / "in.png", random_image(32))
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[:, 16:] = 255  # regenerate the right half
    mask_path = write_png(tmp_path / "mask.png", mask)
    outputs = {}
    for mode, flags in (("i2i", ["--image", str(image)]),
                        ("inpaint", ["--image", str(image), "--mask", str(mask_path)])):  # fmt: skip
        out = tmp_path / f"{mode}.png"
        assert main(["generate", "--prompt", "x", *flags, "--strength", "0.5", "--output", str(out), *T2I]) == 0
        assert (read_sidecar(out)["mode"], read_sidecar(out)["strength"]) == (mode, 0.5)
        outputs[mode] = read_png(out)
    assert not np.array_equal(outputs["i2i"], outputs["inpaint"])


def test_edit_takes_the_images_aspect_ratio(tmp_path):
    image = write_png(tmp_path / "in.png", random_image((48, 80)))
    out = tmp_path / "edit.png"
    assert main(["generate", "--prompt", "make it blue", "--image", str(image), "--output", str(out), *EDIT]) == 0
    # 64 x 64 pixels' area (the tiny default) at 80:48, rounded to 32 as diffusers' calculate_dimensions
    assert read_png(out).shape == (64, 96, 3)
    assert (read_sidecar(out)["mode"], read_sidecar(out)["variant"]) == ("edit", "Qwen-Image-Edit")


def test_one_step_is_refused_in_one_line(tmp_path, capsys):
    """The release's terminal shift stretches the sigmas to end at 0.02: one step (sigma 1 alone) would divide 0 by
    0 (diffusers' pipeline then returns NaN)."""
    out = tmp_path / "o.png"
    assert main(["generate", "--prompt", "x", "--output", str(out), *T2I, "--steps", "1"]) == 2
    assert "steps must be at least 2" in capsys.readouterr().err and not out.exists()


def test_an_edit_model_without_an_image_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "o.png"
    assert main(["generate", "--prompt", "make it blue", "--output", str(out), *EDIT]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: mode 'edit' needs --image" and not out.exists()


def test_another_familys_vae_fails_in_one_line(tmp_path, capsys, builtin_cache_dir):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "warm.png"), *T2I])  # builds the folder
    capsys.readouterr()  # what the warm-up run printed
    folder = Path(shutil.copytree(builtin_cache_dir / "models" / "Qwen-Image-Tiny-Random", tmp_path / "mixed"))
    shutil.rmtree(folder / "vae")
    flux_vae = {"_class_name": "AutoencoderKL", "latent_channels": 16}
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps(flux_vae))
    out = tmp_path / "o.png"
    code = main(["generate", "--prompt", "x", "--output", str(out), *T2I[2:], "--model", str(folder)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "needs an AutoencoderKLQwenImage" in lines[0] and not out.exists()


@pytest.mark.parametrize(("script", "flags", "shape"), [
    ("predict_t2i.py", ["--height", "32", "--width", "32"], (32, 32, 3)),
    ("predict_edit.py", ["--image", "IMAGE"], (64, 64, 3)),
])  # fmt: skip
def test_the_example_scripts_write_pngs(tmp_path, builtin_cache_dir, script, flags, shape):
    image = write_png(tmp_path / "in.png", random_image(64))
    out = tmp_path / "example.png"
    env = {**os.environ, CACHE_ENV: str(builtin_cache_dir), "OMP_NUM_THREADS": "1"}
    flags = [str(image) if flag == "IMAGE" else flag for flag in flags]
    command = [sys.executable, str(REPO / "examples" / "qwenimage" / script), "--prompt", "a red circle",
               "--steps", "2", "--output", str(out), *flags]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert read_png(out).shape == shape


def test_the_edit_example_without_an_image_fails_in_one_line(tmp_path, builtin_cache_dir):
    env = {**os.environ, CACHE_ENV: str(builtin_cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "examples" / "qwenimage" / "predict_edit.py"), "--prompt", "x",
               "--output", str(tmp_path / "o.png")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "error: mode 'edit' needs --image" in done.stderr
