"""Our FLUX.1 pipeline against diffusers' ``FluxPipeline``, ``FluxImg2ImgPipeline`` and ``FluxInpaintPipeline`` with
the same weights, noise and scheduler.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads. The tiny
VAE's posterior is made sharp (log-variance -30, std 3e-7) so diffusers' posterior samples equal our posterior
modes. Measured max abs differences of the final packed latents (fp32, 2 cores, 3 steps, 32x32): t2i dev
(embedded guidance 3.5, dynamic shift) 0, t2i schnell 0, dev with a static shift of 3 0, i2i (strength 0.7) 0,
inpaint (strength 0.9) 4.6e-7 (diffusers' posterior sample, std 3e-7, against our mode). ``pytest
tests/pipelines/test_flux_against_diffusers.py -s`` prints them; the bound asserted is 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxTransformer2DModel,
)
from diffusers import FluxPipeline as DiffusersFluxPipeline
from helpers import max_diff, sharpen_vae_posterior
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerFast, T5EncoderModel

from videox_fun.families import recognise
from videox_fun.models.flux.tiny import build_tiny_flux_folder
from videox_fun.pipelines.common import pack_latents, seeded_noise
from videox_fun.pipelines.flux import FluxPipeline

PROMPT = "a red circle moving left"
SIZE, STEPS, SEED = 32, 3, 7
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux_parity")
    built = {}
    for variant in ("dev", "schnell"):
        built[variant] = build_tiny_flux_folder(root / variant, variant, seed=3)
        sharpen_vae_posterior(built[variant])
    return built


def diffusers_components(folder: Path) -> dict:
    """diffusers' and transformers' own objects, each read from the folder by its own loader."""
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
        "text_encoder": CLIPTextModel.from_pretrained(str(folder / "text_encoder")).eval(),
        "tokenizer_2": PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer_2")),
        "text_encoder_2": T5EncoderModel.from_pretrained(str(folder / "text_encoder_2")).eval(),
        "vae": AutoencoderKL.from_pretrained(str(folder / "vae")).eval(),
        "transformer": FluxTransformer2DModel.from_pretrained(str(folder / "transformer")).eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler")),
    }


def ours(folder: Path) -> FluxPipeline:
    return FluxPipeline.from_pretrained(recognise(folder))


def run_ours(pipe: FluxPipeline, **inputs) -> torch.Tensor:
    """Our final latents, packed as diffusers returns them: (1, N, 64)."""
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False, **inputs)
    return pack_latents(out.latents[:, :, 0])


def run_diffusers(pipe, text_len: int, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="latent",
                    max_sequence_length=text_len, **inputs).images  # fmt: skip


def noise(draws: int = 1) -> torch.Tensor:
    """The ``draws``-th (1, 16, 4, 4) normal draw of a generator seeded SEED: what diffusers uses as noise."""
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(draws):
        drawn = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=generator)
    return drawn


def random_image(seed: int = 0) -> torch.Tensor:
    """uint8 (H, W, 3)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)


def check(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    diff = max_diff(a, b)
    print(f"{name}: max abs difference vs diffusers {diff:.3g}")
    assert a.shape == b.shape
    assert diff <= TOLERANCE, f"{name}: {diff}"


@pytest.mark.parametrize(("variant", "guidance", "text_len"), [("dev", 3.5, 512), ("schnell", 0.0, 256)])
def test_t2i_matches_diffusers(folders, variant, guidance, text_len):
    pipe = ours(folders[variant])
    theirs = DiffusersFluxPipeline(**diffusers_components(folders[variant]))
    expected = run_diffusers(theirs, text_len, guidance_scale=guidance, latents=pack_latents(seeded_noise(
        (1, 16, SIZE // 8, SIZE // 8), SEED, "cpu")))  # fmt: skip
    check(f"t2i {variant}", run_ours(pipe, guidance_scale=guidance), expected)


def test_static_shift_matches_diffusers_scheduler_shift(folders):
    """A given --shift replaces the resolution-dependent one: diffusers with that static shift agrees."""
    pipe = ours(folders["dev"])
    components = diffusers_components(folders["dev"])
    components["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(
        components["scheduler"].config, use_dynamic_shifting=False, shift=3.0
    )
    start = pack_latents(seeded_noise((1, 16, SIZE // 8, SIZE // 8), SEED, "cpu"))
    expected = run_diffusers(DiffusersFluxPipeline(**components), 512, guidance_scale=3.5, latents=start)
    check("t2i dev shift 3", run_ours(pipe, guidance_scale=3.5, shift=3.0), expected)


def test_i2i_matches_diffusers(folders, monkeypatch):
    """diffusers draws the posterior sample (std 3e-7 here) and then the noise from one generator: our pipeline
    is given that second draw in place of its seeded one."""
    pipe = ours(folders["dev"])
    theirs = FluxImg2ImgPipeline(**diffusers_components(folders["dev"]))
    image = random_image()
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: noise(draws=2))
    expected = run_diffusers(theirs, 512, image=Image.fromarray(image.numpy()), strength=0.7, guidance_scale=3.5,
                             generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    check("i2i", run_ours(pipe, image=image, strength=0.7, guidance_scale=3.5), expected)


def test_inpaint_matches_diffusers(folders, monkeypatch):
    pipe = ours(folders["dev"])
    theirs = FluxInpaintPipeline(**diffusers_components(folders["dev"]))
    image = random_image()
    mask = torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)
    mask[8:24, 4:20] = 255  # white = regenerate
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: noise(draws=2))
    expected = run_diffusers(theirs, 512, image=Image.fromarray(image.numpy()),
                             mask_image=Image.fromarray(mask[..., 0].numpy()), strength=0.9, guidance_scale=3.5,
                             generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    result = run_ours(pipe, image=image, mask=mask, strength=0.9, guidance_scale=3.5)
    check("inpaint", result, expected)
