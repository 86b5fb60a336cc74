"""The tiny image model's recipe (Z-Image on the toy world's stills), end to end at toy step counts: every stage
runs, the folder it writes loads and generates, a rerun skips the finished stages; the FLUX.1 VAE's training kind;
and the image report on two prompts (one seen, one held out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videox_fun.cli import main
from videox_fun.toyworld.recipe_image import MODEL, VAE_CONFIG, ImageRecipe, train_image
from videox_fun.toyworld.render import render_clip
from videox_fun.toyworld.report_image import judge_image, run_image_report, still_specs, summarise
from videox_fun.toyworld.world import ClipSpec
from videox_fun.training.vae import FluxVAEKind, VAETrainConfig, _fresh_vae, reconstruction_loss


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run of the whole recipe (8 images, 1-2 steps a stage), once for the module."""
    out = tmp_path_factory.mktemp("toy_image")
    train_image(out, ImageRecipe.smoke())
    return out


def test_the_flux_vae_kind_trains_on_one_frame_clips():
    vae = _fresh_vae(VAETrainConfig(output_dir="unused", train_data_meta="unused", vae_class="flux",
                                    vae_config=VAE_CONFIG))  # fmt: skip
    clips = torch.rand(2, 3, 1, 32, 32) * 2 - 1  # (B, 3, F, H, W): what the data loader gives for images
    posterior = FluxVAEKind.posterior(vae, clips)
    assert tuple(posterior.mode().shape) == (2, 16, 1, 8, 8)  # 4x: three levels
    assert posterior.logvar.max() < -7  # the fresh posterior starts nearly deterministic
    assert tuple(FluxVAEKind.decode_unclamped(vae, posterior.mode()).shape) == (2, 3, 1, 32, 32)
    loss = reconstruction_loss(vae, clips, 1e-6, 5.0)
    loss.backward()
    assert torch.isfinite(loss) and vae.encoder.conv_in.weight.grad is not None
    assert FluxVAEKind.statistics(torch.tensor([1.0, 3.0]), torch.ones(2), 0.5) == {
        "shift_factor": 2.0,
        "scaling_factor": 2.0,
    }


def test_the_judge_reads_rendered_stills_right():
    results = [judge_image(render_clip(spec, frames=1, seed=i).frames[0], spec) for i, spec in enumerate(still_specs())]
    summary = summarise(results)
    assert summary["seen"]["count"] == 15 and summary["held_out"]["count"] == 3
    assert summary["all"]["colour"] == summary["all"]["shape"] == summary["all"]["present"] == 1.0


def test_train_image_writes_a_loadable_zimage_folder_and_resumes(smoke_run: Path):
    from videox_fun.api import GenerationRequest, load_pipeline

    folder = smoke_run / MODEL
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json", "videox_fun.yaml"):
        assert (folder / part).exists(), part
    metadata = json.loads((smoke_run / "image_data" / "metadata_train.json").read_text())
    assert len(metadata) == 8 and {entry["type"] for entry in metadata} == {"image"}
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["_class_name"] == "AutoencoderKL"
    assert (vae_config["shift_factor"], vae_config["scaling_factor"]) != (0.0, 1.0)  # fitted to the images
    record = json.loads((folder / "recipe.json").read_text())
    assert record["family"] == "zimage" and record["recipe"]["model_steps"] == {MODEL: 2}
    assert set(record["timings_s"]) == {"data", "vae", MODEL}
    assert (smoke_run / "runs" / MODEL / "checkpoint-2" / "trainable_0.safetensors").is_file()

    pipe = load_pipeline(folder)
    assert pipe.recognised.family.name == "zimage"
    image = pipe.generate(GenerationRequest("a red circle", steps=2, seed=0), progress=False).frames
    assert tuple(image.shape) == (1, 64, 64, 3)
    pipe.close()

    stamp = (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["toyworld", "train-image", str(smoke_run), "--smoke"]) == 0  # everything finished: nothing reruns
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_the_image_report_judges_seen_and_held_out_prompts(smoke_run: Path, tmp_path: Path):
    checkpoint = smoke_run / "runs" / MODEL / "checkpoint-1" / "trainable_0.safetensors"
    specs = [ClipSpec("red", "circle", "right"), ClipSpec("blue", "circle", "right")]  # seen, held out
    report = run_image_report(tmp_path, smoke_run / MODEL, repeats=1, transformer_path=checkpoint, steps=2,
                              progress=False, specs=specs)  # fmt: skip
    assert report["t2i"]["seen"]["count"] == report["t2i"]["held_out"]["count"] == 1
    assert report["vae"]["all"]["count"] == 72 and report["vae"]["all"]["psnr_mean"] > 0
    assert report["settings"]["steps"] == 2 and report["transformer_path"] == str(checkpoint)
    sidecar = json.loads((tmp_path / "t2i" / "00000001.json").read_text())
    assert sidecar["judged"]["prompt"] == "a blue circle" and sidecar["judged"]["held_out"]
    assert json.loads((tmp_path / "report_image.json").read_text())["t2i"] == report["t2i"]
