"""Our Z-Image pipeline against diffusers' ``ZImagePipeline``, ``ZImageImg2ImgPipeline`` and
``ZImageInpaintPipeline`` with the same weights, noise and scheduler.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads. The tiny
VAE's posterior is made sharp (log-variance -30, std 3e-7) so diffusers' posterior samples equal our posterior
modes. Measured max abs differences of the final latents (fp32, 2 cores, 3 steps, 32x32; latents up to about 3.7):
t2i Turbo settings (guidance 0, one pass a step) 0; a static shift of 6 given 0; i2i (strength 0.7, guidance 0)
0; t2i base settings (guidance 4, CFG batched) 2.1e-6, with a negative prompt (guidance 2) 1.3e-6, inpaint
(strength 0.9, guidance 4) 1.9e-6: diffusers computes ``cond + g (cond - uncond)``, the shared guidance
``uncond + (g + 1) (cond - uncond)``, the same value rounded apart. ``pytest
tests/pipelines/test_zimage_against_diffusers.py -s`` prints them; the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImageImg2ImgPipeline,
    ZImageInpaintPipeline,
    ZImageTransformer2DModel,
)
from diffusers import ZImagePipeline as DiffusersZImagePipeline
from helpers import max_diff, sharpen_vae_posterior
from PIL import Image
from transformers import Qwen2Tokenizer, Qwen3Model

from videox_fun.families import recognise
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.pipelines.common import seeded_noise
from videox_fun.pipelines.zimage import ZImagePipeline

PROMPT = "a red circle moving left"
SIZE, STEPS, SEED = 32, 3, 7
LATENT = (1, 16, SIZE // 8, SIZE // 8)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_tiny_zimage_folder(tmp_path_factory.mktemp("zimage_parity") / "Z-Image", "base", seed=3)
    sharpen_vae_posterior(built)
    return built


def diffusers_components(folder: Path, **scheduler_overrides) -> dict:
    """diffusers' and transformers' own objects, each read from the folder by its own loader."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    return {
        "tokenizer": Qwen2Tokenizer.from_pretrained(str(folder / "tokenizer")),
        "text_encoder": Qwen3Model.from_pretrained(str(folder / "text_encoder")).eval(),
        "vae": AutoencoderKL.from_pretrained(str(folder / "vae")).eval(),
        "transformer": ZImageTransformer2DModel.from_pretrained(str(folder / "transformer")).eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **scheduler_overrides),
    }


def run_ours(folder: Path, **inputs) -> torch.Tensor:
    """Our final latents (1, 16, h, w)."""
    pipe = ZImagePipeline.from_pretrained(recognise(folder))
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False, **inputs)
    return out.latents[:, :, 0]


def run_diffusers(pipe, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="latent",
                    **inputs).images  # fmt: skip


def second_draw() -> torch.Tensor:
    """diffusers' image pipelines draw the posterior sample, then the noise, from one generator seeded SEED."""
    generator = torch.Generator().manual_seed(SEED)
    torch.randn(LATENT, generator=generator)
    return torch.randn(LATENT, generator=generator)


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    diff = max_diff(ours, theirs)
    print(f"{name}: max abs difference vs diffusers {diff:.3g} (latents up to {theirs.abs().max():.3g})")
    assert ours.shape == theirs.shape and diff <= TOLERANCE, f"{name}: {diff}"


@pytest.mark.parametrize(("name", "guidance"), [("Turbo (no CFG)", 0.0), ("base (CFG 4)", 4.0)])
def test_t2i_matches_diffusers(folder, name, guidance):
    theirs = DiffusersZImagePipeline(**diffusers_components(folder))
    expected = run_diffusers(theirs, guidance_scale=guidance, latents=seeded_noise(LATENT, SEED, "cpu"))
    check(f"t2i {name}", run_ours(folder, guidance_scale=guidance), expected)


def test_a_given_shift_matches_diffusers_scheduler_shift(folder):
    theirs = DiffusersZImagePipeline(**diffusers_components(folder, shift=6.0))
    expected = run_diffusers(theirs, guidance_scale=0.0, latents=seeded_noise(LATENT, SEED, "cpu"))
    check("t2i shift 6", run_ours(folder, guidance_scale=0.0, shift=6.0), expected)


def test_a_negative_prompt_matches_diffusers(folder):
    theirs = DiffusersZImagePipeline(**diffusers_components(folder))
    expected = run_diffusers(theirs, guidance_scale=2.0, negative_prompt="a blue square",
                             latents=seeded_noise(LATENT, SEED, "cpu"))  # fmt: skip
    check("t2i negative prompt", run_ours(folder, guidance_scale=2.0, negative_prompt="a blue square"), expected)


def random_image() -> torch.Tensor:
    """uint8 (H, W, 3)."""
    return torch.randint(0, 256, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_i2i_matches_diffusers(folder, monkeypatch):
    theirs = ZImageImg2ImgPipeline(**diffusers_components(folder))
    image = random_image()
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: second_draw())
    expected = run_diffusers(theirs, image=Image.fromarray(image.numpy()), strength=0.7, guidance_scale=0.0,
                             generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    check("i2i", run_ours(folder, image=image, strength=0.7, guidance_scale=0.0), expected)


def test_inpaint_matches_diffusers(folder, monkeypatch):
    theirs = ZImageInpaintPipeline(**diffusers_components(folder))
    image = random_image()
    mask = torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)
    mask[8:24, 4:20] = 255  # white = regenerate
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: second_draw())
    mask_image = Image.fromarray(mask[..., 0].numpy())
    expected = run_diffusers(theirs, image=Image.fromarray(image.numpy()), mask_image=mask_image, strength=0.9,
                             guidance_scale=4.0, generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    result = run_ours(folder, image=image, mask=mask, strength=0.9, guidance_scale=4.0)
    check("inpaint", result, expected)
    outside = mask[..., 0][::8, ::8] == 0  # latent pixels kept from the image
    assert outside.any() and not outside.all()
