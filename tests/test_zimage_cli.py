"""Z-Image through ``videox-fun generate`` and examples/z_image/predict_t2i.py on the built-in tiny random models:
PNG outputs with their sidecars (base with guidance, Turbo without; i2i and inpaint), an original-layout
transformer file through --transformer-path, one-line refusals (exit 2) of another family's VAE and of another
model's transformer file."""

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
from videox_fun.models.zimage.single_files import diffusers_to_original
from videox_fun.registry import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "2", "--height", "32", "--width", "32", "--quiet"]
BASE = ["--model", "Z-Image-Tiny-Random", *SMALL]
TURBO = ["--model", "Z-Image-Turbo-Tiny-Random", *SMALL]
pytestmark = pytest.mark.usefixtures("builtin_cache")


def test_generate_writes_a_png_and_its_sidecar(tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "--prompt", "a red circle", "--output", str(out), *BASE]) == 0
    assert read_png(out).shape == (32, 32, 3)
    record = read_sidecar(out)
    assert (record["mode"], record["variant"], record["guidance_scale"]) == ("t2i", "Z-Image", 4.0)
    assert record["negative_prompt"] == "" and record["shift"] is None


def test_turbo_runs_without_guidance(tmp_path):
    out = tmp_path / "turbo.png"
    assert main(["generate", "--prompt", "a red circle", "--output", str(out), *TURBO]) == 0
    record = read_sidecar(out)
    assert (record["variant"], record["guidance_scale"], record["steps"]) == ("Z-Image-Turbo", 0.0, 2)


def test_i2i_and_inpaint_write_pngs(tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[:, 16:] = 255  # regenerate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for mode, flags in (("i2i", []), ("inpaint", ["--mask", str(tmp_path / "mask.png")])):
        out = tmp_path / f"{mode}.png"
        args = ["generate", "--prompt", "x", "--image", str(image), *flags, "--strength", "0.5", "--output", str(out)]
        assert main([*args, *TURBO]) == 0
        assert (read_sidecar(out)["mode"], read_sidecar(out)["strength"], read_png(out).shape) == (
            mode,
            0.5,
            (32, 32, 3),
        )


def test_an_original_layout_transformer_file_gives_the_folders_image(tmp_path, builtin_cache_dir):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "folder.png"), *TURBO])
    weights = (
        builtin_cache_dir
        / "models"
        / "Z-Image-Turbo-Tiny-Random"
        / "transformer"
        / "diffusion_pytorch_model.safetensors"
    )
    original = tmp_path / "z_image_turbo_tiny.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in diffusers_to_original(load_file(str(weights))).items()},
              str(original))  # fmt: skip
    out = tmp_path / "original.png"
    assert main(["generate", "--prompt", "x", "--transformer-path", str(original), "--output", str(out), *TURBO]) == 0
    assert np.abs(read_png(out).astype(int) - read_png(tmp_path / "folder.png").astype(int)).max() <= 1


def test_another_familys_vae_is_refused_in_one_line(tmp_path, builtin_cache_dir, capsys):
    main(["generate", "--prompt", "x", "--output", str(tmp_path / "warm.png"), *TURBO])
    folder = shutil.copytree(
        builtin_cache_dir / "models" / "Z-Image-Turbo-Tiny-Random", tmp_path / "Z-Image-Turbo-Mixed"
    )
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKLWan"}))
    args = ["generate", "--prompt", "x", "--model", str(folder), *SMALL, "--output", str(tmp_path / "o.png")]
    assert_one_line_refusal(
        main, capsys, args, "the transformer is a ZImageTransformer2DModel but the VAE is a AutoencoderKLWan"
    )


def test_another_models_transformer_file_is_refused_in_one_line(tmp_path, capsys):
    flux = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(2, 2)}, str(flux))
    args = ["generate", "--prompt", "x", "--transformer-path", str(flux), "--output", str(tmp_path / "o.png")]
    assert_one_line_refusal(main, capsys, [*args, *TURBO], "not a Z-Image transformer (no cap_embedder.1.weight")


def test_the_example_script_writes_a_png(tmp_path, builtin_cache_dir):
    out = tmp_path / "example.png"
    script = REPO / "examples" / "z_image" / "predict_t2i.py"
    env = {**os.environ, CACHE_ENV: str(builtin_cache_dir), "OMP_NUM_THREADS": "1"}
    flags = ["--prompt", "a red circle", "--steps", "1", "--height", "32", "--width", "32", "--output", str(out)]
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert read_png(out).shape == (32, 32, 3) and read_sidecar(out)["variant"] == "Z-Image-Turbo"


def test_a_folder_default_shift_is_the_runs_shift(tmp_path):
    """``shift`` among a folder's ``videox_fun.yaml`` defaults is used when ``--shift`` is not given (0 there: the
    scheduler config's); it was ignored by the image pipelines."""
    folder = tmp_path / "Z-Image-Shift-1"
    from videox_fun.registry import resolve_model

    shutil.copytree(resolve_model("Z-Image-Tiny-Random"), folder)
    config = folder / "videox_fun.yaml"
    config.write_text(config.read_text().replace("shift: 0.0", "shift: 1.0"))
    outputs = {}
    for name, extra in (("default", []), ("given", ["--shift", "1"]), ("scheduler", ["--shift", "3"])):
        outputs[name] = tmp_path / f"{name}.png"
        args = ["generate", "--prompt", "a red circle", "--model", str(folder), *SMALL[:2], *SMALL[-1:], *extra]
        assert main([*args, "--output", str(outputs[name])]) == 0
    assert read_sidecar(outputs["default"])["shift"] == 1.0
    assert np.array_equal(read_png(outputs["default"]), read_png(outputs["given"]))
    assert not np.array_equal(read_png(outputs["default"]), read_png(outputs["scheduler"]))


def test_flow_distill_is_the_flow_grid_for_image_students(tmp_path):
    """``--sampler Flow_Distill`` (a distilled student's sampler) is accepted and is the Flow grid at that count."""
    outputs = {}
    for sampler in ("Flow", "Flow_Distill"):
        outputs[sampler] = tmp_path / f"{sampler}.png"
        args = ["generate", "--prompt", "a red circle", *TURBO, "--steps", "4", "--sampler", sampler]
        assert main([*args, "--output", str(outputs[sampler])]) == 0
    assert read_sidecar(outputs["Flow_Distill"])["sampler"] == "Flow_Distill"
    assert np.array_equal(read_png(outputs["Flow"]), read_png(outputs["Flow_Distill"]))


def test_a_students_timesteps_from_its_folder_or_the_flag(tmp_path, capsys):
    """A student folder's ``distill_timesteps`` (a DMD student of ``--denoising_step_list 1000 400``) are the
    Flow_Distill grid at as many steps, as ``--distill-timesteps`` gives them, and recorded in the sidecar; they
    change the image (they are not the uniform grid); with another sampler the flag is a one-line refusal."""
    folder = tmp_path / "Z-Image-Student"
    from videox_fun.registry import resolve_model

    shutil.copytree(resolve_model("Z-Image-Turbo-Tiny-Random"), folder)
    config = folder / "videox_fun.yaml"
    student = "  sampler: Flow\n  distill_timesteps: [1000, 400]\n"
    config.write_text(config.read_text().replace("  sampler: Flow\n", student))
    base = ["generate", "--prompt", "a red circle", "--model", str(folder), "--height", "32", "--width", "32",
            "--quiet", "--sampler", "Flow_Distill", "--steps", "2"]  # fmt: skip
    outputs = {}
    for name, extra in (("folder", []), ("flag", ["--distill-timesteps", "1000,400"])):
        outputs[name] = tmp_path / f"{name}.png"
        assert main([*base, *extra, "--output", str(outputs[name])]) == 0
        assert read_sidecar(outputs[name])["distill_timesteps"] == [1000, 400]
    outputs["uniform"] = tmp_path / "uniform.png"
    assert main([*base, "--distill-timesteps", "1000,500", "--output", str(outputs["uniform"])]) == 0
    assert np.array_equal(read_png(outputs["folder"]), read_png(outputs["flag"]))
    assert not np.array_equal(read_png(outputs["folder"]), read_png(outputs["uniform"]))
    args = [*base[:-4], "--sampler", "Flow", "--steps", "2", "--distill-timesteps", "1000,400"]
    assert_one_line_refusal(main, capsys, [*args, "--output", str(tmp_path / "x.png")], "--sampler Flow_Distill")
