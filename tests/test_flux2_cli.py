"""FLUX.2 through ``videox-fun generate`` and examples/flux2/predict_t2i.py on the built-in tiny random model: PNG
outputs with their sidecars (t2i, i2i, inpaint), a BFL transformer file through --transformer-path, one-line
refusals (exit 2) of another family's VAE and of a FLUX.1 BFL file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_refusal, read_png, read_sidecar
from PIL import Image
from safetensors.torch import load_file, save_file

from videox_fun.cli import main
from videox_fun.models.flux2.single_files import diffusers_to_bfl
from videox_fun.registry import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "2", "--height", "32", "--width", "32", "--quiet"]
MODEL = ["--model", "Flux2-Tiny-Random", *SMALL]
pytestmark = pytest.mark.usefixtures("builtin_cache")


def test_generate_writes_a_png_and_its_read_sidecar(tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "--prompt", "a red circle", "--output", str(out), *MODEL]) == 0
    assert read_png(out).shape == (32, 32, 3)
    record = read_sidecar(out)
    assert (record["mode"], record["variant"], record["guidance_scale"], record["steps"]) == (
        "t2i",
        "FLUX.2-dev",
        4.0,
        2,
    )
    assert record["shift"] is None and record["mu"] > 0  # BFL's empirical mu


def test_i2i_and_inpaint_write_pngs(tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[:, 16:] = 255  # regenerate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for mode, flags in (("i2i", []), ("inpaint", ["--mask", str(tmp_path / "mask.png")])):
        out = tmp_path / f"{mode}.png"
        args = ["generate", "--prompt", "x", "--image", str(image), *flags, "--strength", "0.5", "--output", str(out)]
        assert main([*args, *MODEL]) == 0
        assert (read_sidecar(out)["mode"], read_sidecar(out)["strength"], read_png(out).shape) == (
            mode,
            0.5,
            (32, 32, 3),
        )


def test_a_bfl_transformer_file_gives_the_folders_image(tmp_path, builtin_cache_dir):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "folder.png"), *MODEL])
    weights = builtin_cache_dir / "models" / "Flux2-Tiny-Random" / "transformer" / "diffusion_pytorch_model.safetensors"
    bfl = tmp_path / "flux2-dev-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in diffusers_to_bfl(load_file(str(weights))).items()},
              str(bfl))  # fmt: skip
    out = tmp_path / "bfl.png"
    assert main(["generate", "--prompt", "x", "--transformer-path", str(bfl), "--output", str(out), *MODEL]) == 0
    assert np.array_equal(read_png(out), read_png(tmp_path / "folder.png"))


def test_another_familys_vae_is_refused_in_one_line(tmp_path, builtin_cache_dir, capsys):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "warm.png"), *MODEL])
    folder = shutil.copytree(builtin_cache_dir / "models" / "Flux2-Tiny-Random", tmp_path / "FLUX.2-Mixed")
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    args = ["generate", "--prompt", "x", "--model", str(folder), *SMALL, "--output", str(tmp_path / "o.png")]
    assert_one_line_refusal(
        main, capsys, args, "the transformer is a Flux2Transformer2DModel but the VAE is a AutoencoderKL"
    )


def test_a_flux1_bfl_file_is_refused_in_one_line(tmp_path, capsys):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "warm.png"), *MODEL])  # the built-in model built
    flux1 = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(2, 2)}, str(flux1))
    args = ["generate", "--prompt", "x", "--transformer-path", str(flux1), "--output", str(tmp_path / "o.png")]
    assert_one_line_refusal(
        main, capsys, [*args, *MODEL], "without single_stream_modulation.lin.weight: a FLUX.1 transformer"
    )


def test_the_example_script_writes_a_read_png(tmp_path, builtin_cache_dir):
    out = tmp_path / "example.png"
    script = REPO / "examples" / "flux2" / "predict_t2i.py"
    env = {**os.environ, CACHE_ENV: str(builtin_cache_dir), "OMP_NUM_THREADS": "1"}
    flags = ["--prompt", "a red circle", "--steps", "1", "--height", "32", "--width", "32", "--output", str(out)]
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert read_png(out).shape == (32, 32, 3) and read_sidecar(out)["variant"] == "FLUX.2-dev"
