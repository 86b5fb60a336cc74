"""Our FLUX.2 pipeline against diffusers' ``Flux2Pipeline`` with the same weights, noise and scheduler, and its
i2i / inpaint against the shared flow-image formulas run on diffusers' own components (diffusers has no FLUX.2-dev
image-to-image or inpaint pipeline: ``Flux2Pipeline``'s ``image`` is a reference image, and
``Flux2KleinInpaintPipeline`` serves Klein, reading the image as reference tokens too).

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads; the tokenizer
is given to diffusers in place of the Pixtral processor (which needs torchvision; for text it only runs the
tokenizer's chat template). Measured max abs differences of the final latents (fp32, 2 cores, 3 steps, 32x32):
printed by ``pytest tests/pipelines/test_flux2_against_diffusers.py -s``; the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers import Flux2Pipeline as DiffusersFlux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from flux2_helpers import diffusers_flux2_pipeline
from helpers import max_diff

from videox_fun.families import recognise
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.pipelines.common import seeded_noise, strength_start
from videox_fun.pipelines.flux2 import Flux2Pipeline

PROMPT = "a red circle moving left"
SIZE, STEPS, SEED = 32, 3, 7
LATENT = (1, 128, SIZE // 16, SIZE // 16)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_folder(tmp_path_factory.mktemp("flux2_parity") / "FLUX.2-dev", seed=3)


@pytest.fixture(scope="module")
def theirs(folder: Path) -> DiffusersFlux2Pipeline:
    """diffusers' pipeline of diffusers' and transformers' own objects, each read from the folder by its loader."""
    return diffusers_flux2_pipeline(folder)


@pytest.fixture(scope="module")
def ours(folder: Path) -> Flux2Pipeline:
    return Flux2Pipeline.from_pretrained(recognise(folder))


def run_ours(pipe: Flux2Pipeline, **inputs) -> torch.Tensor:
    """Our final latents as tokens (1, N, 128), diffusers' ``output_type="latent"`` layout."""
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False, **inputs)
    return out.latents[:, :, 0].flatten(2).transpose(1, 2)


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    diff = max_diff(ours, theirs)
    print(f"{name}: max abs difference vs diffusers {diff:.3g} (latents up to {theirs.abs().max():.3g})")
    assert ours.shape == theirs.shape and diff <= TOLERANCE, f"{name}: {diff}"


def test_the_prompt_features_are_diffusers(ours, theirs):
    """Mistral3's hidden states 10, 20, 30 behind BFL's system message, as diffusers stacks them (bit for bit)."""
    expected = theirs._get_mistral_3_small_prompt_embeds(theirs.text_encoder, theirs.tokenizer, [PROMPT, "x"])
    features = ours.text_encoder.encode([PROMPT, "x"])
    assert features.shape == expected.shape == (2, 512, 48)
    assert torch.equal(features, expected)


def test_the_tokens_are_the_release_template(ours):
    """BOS, the system turn, the user turn, padded to 512; the real tokens first."""
    tokens = ours.text_encoder.tokens(["a red circle"])
    real = tokens["input_ids"][0][tokens["attention_mask"][0].bool()].tolist()
    text = ours.text_encoder.tokenizer.decode(real)
    assert tokens["input_ids"].shape == (1, 512)
    assert text.startswith("<s>[SYSTEM_PROMPT]You are an AI") and text.endswith(
        "[/SYSTEM_PROMPT][INST]a red circle[/INST]"
    )


@pytest.mark.parametrize("guidance", [4.0, 1.5])
def test_t2i_matches_diffusers(ours, theirs, guidance):
    with torch.no_grad():
        expected = theirs(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                          latents=seeded_noise(LATENT, SEED, "cpu"), output_type="latent").images  # fmt: skip
    check(f"t2i guidance {guidance}", run_ours(ours, guidance_scale=guidance), expected)


def test_a_given_shift_matches_diffusers_static_shift(folder, ours, theirs):
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(theirs.scheduler.config, use_dynamic_shifting=False,
                                                            shift=6.0)  # fmt: skip
    shifted = DiffusersFlux2Pipeline(scheduler=scheduler, vae=theirs.vae, text_encoder=theirs.text_encoder,
                                     tokenizer=theirs.tokenizer, transformer=theirs.transformer)  # fmt: skip
    with torch.no_grad():
        expected = shifted(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0,
                           latents=seeded_noise(LATENT, SEED, "cpu"), output_type="latent").images  # fmt: skip
    check("t2i shift 6", run_ours(ours, guidance_scale=4.0, shift=6.0), expected)


# -- i2i / inpaint: the shared formulas on diffusers' components ----------------------------------------------


def random_image() -> torch.Tensor:
    """uint8 (H, W, 3)."""
    return torch.randint(0, 256, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@torch.no_grad()
def reference(theirs: DiffusersFlux2Pipeline, image: torch.Tensor, strength: float, keep: torch.Tensor | None):
    """The FlowImagePipeline recipe written out with diffusers' FLUX.2 helpers: the image's normalised patchified
    latents noised to the first step ``strength`` leaves, Euler steps of the embedded-guidance velocity, and (inpaint)
    the image re-imposed where ``keep`` (1, 1, h, w) is 1, noised to the next step's level."""
    pixels = image.permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W) in [-1, 1]
    clean = theirs._pack_latents(theirs._encode_vae_image(pixels, None))  # (1, N, 128)
    noise = theirs._pack_latents(seeded_noise(LATENT, SEED, "cpu"))
    embeds, txt_ids = theirs.encode_prompt(PROMPT)
    img_ids = theirs._prepare_latent_ids(torch.zeros(LATENT))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(theirs.scheduler.config)
    sigmas = torch.linspace(1.0, 1 / STEPS, STEPS, dtype=torch.float64).numpy()
    scheduler.set_timesteps(sigmas=sigmas, mu=compute_empirical_mu(clean.shape[1], STEPS))
    start = strength_start(STEPS, strength)
    timesteps = scheduler.timesteps[start:]
    scheduler.set_begin_index(start)
    latents = scheduler.scale_noise(clean, timesteps[:1], noise)
    mask = None if keep is None else theirs._pack_latents(keep)  # (1, N, 1)
    for i, t in enumerate(timesteps):
        velocity = theirs.transformer(hidden_states=latents, timestep=t.expand(1) / 1000,
                                      guidance=torch.full([1], 4.0), encoder_hidden_states=embeds, txt_ids=txt_ids,
                                      img_ids=img_ids, return_dict=False)[0]  # fmt: skip
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if mask is not None:
            known = clean if i == len(timesteps) - 1 else scheduler.scale_noise(clean, timesteps[i + 1 : i + 2], noise)
            latents = mask * known + (1 - mask) * latents
    return latents


def test_i2i_follows_the_shared_formulas_on_diffusers_components(ours, theirs):
    image = random_image()
    expected = reference(theirs, image, 0.7, None)
    check("i2i", run_ours(ours, image=image, strength=0.7, guidance_scale=4.0), expected)


def test_inpaint_follows_the_shared_formulas_on_diffusers_components(ours, theirs):
    image = random_image()
    mask = torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)
    mask[:16, :] = 255  # white = regenerate: the top row of 16-pixel tokens
    keep = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).flip(0)[None, None]  # (1, 1, 2, 2): the bottom row is kept
    expected = reference(theirs, image, 0.9, keep)
    result = run_ours(ours, image=image, mask=mask, strength=0.9, guidance_scale=4.0)
    check("inpaint", result, expected)
