"""FLUX.1 through ``videox-fun generate`` and examples/flux/predict_t2i.py on the built-in tiny random model: PNG
outputs with their sidecars in every mode, a BFL transformer file through --transformer-path, one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flux_helpers import diffusers_to_bfl
from helpers import read_png, read_sidecar, write_png
from safetensors.torch import load_file, save_file

from videox_fun.cli import main
from videox_fun.registry import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "Flux-Tiny-Random", "--steps", "2", "--height", "32", "--width", "32", "--quiet"]
pytestmark = pytest.mark.usefixtures("builtin_cache")


def test_generate_writes_a_png_and_its_sidecar(tmp_path):
    out = tmp_path / "cat.png"
    assert main(["generate", "--prompt", "a red circle", "--output", str(out), *FAST]) == 0
    assert read_png(out).shape == (32, 32, 3)
    sidecar = read_sidecar(out)
    assert (sidecar["mode"], sidecar["variant"], sidecar["guidance_scale"]) == ("t2i", "FLUX.1-dev", 3.5)
    assert sidecar["shift"] is None and sidecar["mu"] > 0  # the resolution-dependent shift


def test_numbered_outputs_of_an_image_mode_are_pngs(tmp_path):
    assert main(["generate", "--prompt", "a red circle", "--output-dir", str(tmp_path), *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000001.json", "00000001.png"]


def test_i2i_and_inpaint_keep_what_the_mask_keeps(tmp_path):
    generator = np.random.default_rng(0)
    image = write_png(tmp_path / "in.png", generator.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[:, 16:] = 255  # regenerate the right half
    mask_path = write_png(tmp_path / "mask.png", mask)
    outputs = {}
    for mode, flags in (
        ("i2i", ["--image", str(image)]),
        ("inpaint", ["--image", str(image), "--mask", str(mask_path)]),
    ):
        out = tmp_path / f"{mode}.png"
        assert main(["generate", "--prompt", "x", *flags, "--strength", "0.5", "--output", str(out), *FAST]) == 0
        sidecar = read_sidecar(out)
        assert (sidecar["mode"], sidecar["strength"], sidecar["image"]) == (mode, 0.5, str(image.resolve()))
        outputs[mode] = read_png(out)
    assert not np.array_equal(outputs["i2i"], outputs["inpaint"])


def test_a_bfl_transformer_file_gives_the_folders_image(tmp_path, builtin_cache_dir):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "folder.png"), *FAST])
    weights = builtin_cache_dir / "models" / "Flux-Tiny-Random" / "transformer" / "diffusion_pytorch_model.safetensors"
    bfl = tmp_path / "flux1-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in diffusers_to_bfl(load_file(str(weights))).items()}, str(bfl))
    out = tmp_path / "bfl.png"
    assert main(["generate", "--prompt", "x", "--transformer-path", str(bfl), "--output", str(out), *FAST]) == 0
    assert np.abs(read_png(out).astype(int) - read_png(tmp_path / "folder.png").astype(int)).max() <= 1


def test_schnell_runs_without_guidance(tmp_path):
    out = tmp_path / "schnell.png"
    flags = [*FAST[2:], "--model", "Flux-Schnell-Tiny-Random"]
    assert main(["generate", "--prompt", "x", "--output", str(out), *flags]) == 0
    sidecar = read_sidecar(out)
    assert (sidecar["variant"], sidecar["guidance_scale"], sidecar["steps"]) == ("FLUX.1-schnell", 0.0, 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--frames", "5"], "at most 1 frames (one frame: an image model)"),
        (["--mask", "m.png"], "mode 'inpaint' needs --image"),
        (["--sampler", "Flow_Unipc"], "unknown sampler"),
    ],
)
def test_bad_requests_fail_in_one_line(tmp_path, capsys, flags, message):
    write_png(tmp_path / "m.png", np.zeros((32, 32, 3), dtype=np.uint8))
    os.chdir(tmp_path)
    code = main(["generate", "--prompt", "x", "--output", str(tmp_path / "o.png"), *flags, *FAST])
    assert code != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_the_example_script_writes_a_png(tmp_path, builtin_cache_dir):
    out = tmp_path / "example.png"
    script = REPO / "examples" / "flux" / "predict_t2i.py"
    env = {**os.environ, CACHE_ENV: str(builtin_cache_dir), "OMP_NUM_THREADS": "1"}
    flags = ["--prompt", "a red circle", "--steps", "1", "--height", "32", "--width", "32", "--output", str(out)]
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert read_png(out).shape == (32, 32, 3) and read_sidecar(out)["mode"] == "t2i"
