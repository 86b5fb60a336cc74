"""The recipe of the packaged models, end to end at toy step counts: every stage runs and the
folders it writes load and generate, and a rerun skips the finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videox_fun.cli import main
from videox_fun.models.wan.vae import WanVAE
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.toyworld.recipe import Recipe, train_all

TINY = Recipe.smoke()


@pytest.mark.slow
def test_train_all_writes_loadable_model_folders_and_resumes(tmp_path: Path):
    record = train_all(tmp_path, TINY)
    assert set(record["timings_s"]) >= {"data", "vae", *TINY.models}
    vae_config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert len(vae_config["latents_std"]) == 16 and vae_config["latents_std"] != [1.0] * 16
    assert vae_config["decoder_base_dim"] == 2 * vae_config["base_dim"]  # the widened last phase
    for name in TINY.models:
        folder = tmp_path / name
        assert json.loads((folder / "recipe.json").read_text())["recipe"]["transformer_steps"] == 2
        assert (folder / "cache_calibration.json").is_file() == name.endswith("InP")
        assert WanVAE.from_pretrained(folder / "vae").config.latents_std == vae_config["latents_std"]
    pipe = WanPipeline.from_pretrained(tmp_path / "Wan2.1-Fun-Tiny-InP")
    video = pipe("a red circle moving right", num_inference_steps=2, seed=0, progress=False).frames
    assert tuple(video.shape) == (17, 64, 64, 3)
    stamp = (tmp_path / "Wan2.1-Fun-Tiny-InP" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert (
        main(["toyworld", "train-all", str(tmp_path), "--smoke"]) == 0
    )  # the CLI's smoke recipe is TINY: nothing reruns
    assert (tmp_path / "Wan2.1-Fun-Tiny-InP" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_cogvideox_train_all_smoke_writes_a_diffusers_folder_that_loads_and_resumes(tmp_path: Path):
    from videox_fun.api import GenerationRequest, load_pipeline
    from videox_fun.models.cogvideox.vae import CogVideoXVAE
    from videox_fun.toyworld.recipe_cogvideox import INP_MODEL, CogVideoXRecipe
    from videox_fun.toyworld.recipe_cogvideox import train_all as train_all_cogvideox

    smoke = CogVideoXRecipe.smoke()
    record = train_all_cogvideox(tmp_path, smoke)
    assert set(record["timings_s"]) >= {"data", "vae", INP_MODEL}
    folder = tmp_path / INP_MODEL
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (folder / part).exists(), part
    assert (folder / "videox_fun.yaml").is_file() and (folder / "cache_calibration.json").is_file()
    saved = json.loads((folder / "recipe.json").read_text())
    assert saved["family"] == "cogvideox" and saved["recipe"]["transformer_steps"] == 2
    assert saved["recipe"]["vae_config"]["block_out_channels"] == [16, 32, 32, 64]
    assert not any(tmp_path.glob("cogvideox_vae_run_wide"))  # CogVideoX has no widened-decoder phase
    vae = CogVideoXVAE.from_pretrained(folder / "vae")
    assert vae.scaling_factor != 1.0  # fitted to the data
    assert json.loads((folder / "transformer" / "config.json").read_text())["in_channels"] == 33

    pipe = load_pipeline(folder)
    assert pipe.recognised.family.name == "cogvideox" and "i2v" in pipe.recognised.modes
    video = pipe.generate(GenerationRequest("a red circle moving right", steps=2, seed=0), progress=False).frames
    assert tuple(video.shape) == (17, 64, 64, 3)

    stamp = (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["toyworld", "train-all", str(tmp_path), "--smoke", "--family", "cogvideox"]) == 0
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
