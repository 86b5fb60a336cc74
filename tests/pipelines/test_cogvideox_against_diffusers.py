"""Our CogVideoX pipeline against diffusers' own CogVideoX pipelines with the same weights, noise and scheduler.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads. The
tiny VAE's posterior is made sharp (log-variance -30, std 3e-7) so diffusers' posterior samples equal our
posterior modes. Measured max abs differences of the final latents (fp32, 2 cores, 3 steps, CFG 6):
t2v 0, t2v DPM_Cog with dynamic CFG 0, control 0, CogVideoX 1.5 t2v (temporal patches of 2) 0 (identical
to the bit), v2v 2.2e-6, i2v (5b-I2V structure) 3.7e-6 and CogVideoX1.5-I2V (with the ``ofs`` embedding)
3.1e-6 (diffusers' posterior sample, std 3e-7, against our mode). ``pytest
tests/pipelines/test_cogvideox_against_diffusers.py -s`` prints them; the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXFunControlPipeline,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
    CogVideoXVideoToVideoPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers import CogVideoXPipeline as DiffusersCogVideoXPipeline
from helpers import max_diff
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from videox_fun.families import recognise
from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder
from videox_fun.pipelines.cogvideox import CogVideoXPipeline
from videox_fun.pipelines.common import seeded_noise

PROMPT, NEGATIVE = "a red circle moving left", "a blue square"
SIZE, FRAMES, STEPS, SEED, GUIDANCE = 32, 9, 3, 7, 6.0
TOLERANCE = 1e-5


def sharpen_vae_posterior(folder: Path) -> None:
    """Make the VAE's posterior deterministic: log-variance channels = -30 (diffusers clamps there)."""
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    half = state["encoder.conv_out.conv.bias"].shape[0] // 2
    state["encoder.conv_out.conv.weight"][half:] = 0.0
    state["encoder.conv_out.conv.bias"][half:] = -30.0
    save_file(state, str(path))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cogvideox_parity")
    built = {}
    for variant in ("t2v", "i2v", "control", "t2v-1.5", "i2v-1.5"):
        built[variant] = build_tiny_cogvideox_folder(root / variant, variant, seed=3)
        sharpen_vae_posterior(built[variant])
    return built


def diffusers_components(folder: Path, scheduler_class=CogVideoXDDIMScheduler) -> dict:
    """diffusers' and transformers' own objects, each read from the folder by its own loader."""
    return {
        "tokenizer": PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer")),
        "text_encoder": T5EncoderModel.from_pretrained(str(folder / "text_encoder")).eval(),
        "vae": AutoencoderKLCogVideoX.from_pretrained(str(folder / "vae")).eval(),
        "transformer": CogVideoXTransformer3DModel.from_pretrained(str(folder / "transformer")).eval(),
        "scheduler": scheduler_class.from_pretrained(str(folder / "scheduler")),
    }


def ours(folder: Path) -> CogVideoXPipeline:
    return CogVideoXPipeline.from_pretrained(recognise(folder))


def random_video(frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    """uint8 (F, H, W, 3) frames."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)


def as_pil(frames: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(np.asarray(frame)) for frame in frames]


def run_ours(pipe: CogVideoXPipeline, sampler: str = "DDIM_Cog", **inputs) -> torch.Tensor:
    """Our final latents in the transformer's layout (1, F', C, h, w)."""
    settings = {"num_inference_steps": STEPS, "num_frames": FRAMES} | inputs
    out = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE,
               guidance_scale=GUIDANCE, sampler=sampler, seed=SEED, progress=False, **settings)  # fmt: skip
    return out.latents.permute(0, 2, 1, 3, 4)


def run_diffusers(pipe, **inputs) -> torch.Tensor:
    settings = {"num_inference_steps": STEPS} | inputs
    with torch.no_grad():
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, guidance_scale=GUIDANCE,
                    output_type="latent", max_sequence_length=226, **settings).frames  # fmt: skip


def noise_for(pipe: CogVideoXPipeline) -> torch.Tensor:
    """The noise our pipeline draws for SEED, (1, F', 16, h, w): diffusers takes the same layout as ``latents=``."""
    frames, height, width = pipe.vae.latent_shape(FRAMES, SIZE, SIZE)
    return seeded_noise((1, frames, 16, height, width), SEED, "cpu")


def check(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    diff = max_diff(a, b)
    print(f"{name}: max abs difference vs diffusers {diff:.3g}")
    assert a.shape == b.shape
    assert diff < TOLERANCE, f"{name}: {diff}"


def test_t2v_matches_diffusers(folders):
    pipe = ours(folders["t2v"])
    theirs = DiffusersCogVideoXPipeline(**diffusers_components(folders["t2v"]))
    expected = run_diffusers(theirs, num_frames=FRAMES, latents=noise_for(pipe))
    check("t2v", run_ours(pipe), expected)


def test_dpm_cog_with_dynamic_cfg_matches_diffusers(folders):
    pipe = ours(folders["t2v"])
    theirs = DiffusersCogVideoXPipeline(**diffusers_components(folders["t2v"], CogVideoXDPMScheduler))
    # The DPM sampler draws noise every step: ours from a generator seeded SEED + 2, given to diffusers too.
    generator = torch.Generator().manual_seed(SEED + 2)
    expected = run_diffusers(
        theirs, num_frames=FRAMES, latents=noise_for(pipe), use_dynamic_cfg=True, generator=generator
    )
    check("t2v DPM_Cog", run_ours(pipe, sampler="DPM_Cog"), expected)


def test_v2v_matches_diffusers(folders, monkeypatch):
    """diffusers encodes and noises the video itself from one generator: its posterior sample draws first
    (std 3e-7 here), then the noise. Our pipeline is given that same noise in place of its seeded draw."""
    pipe = ours(folders["t2v"])
    theirs = CogVideoXVideoToVideoPipeline(**diffusers_components(folders["t2v"]))
    video, strength = random_video(), 0.7
    shape = noise_for(pipe).shape  # (1, F', C, h, w)
    generator = torch.Generator().manual_seed(SEED)
    torch.randn((1, shape[2], shape[1], *shape[3:]), generator=generator)  # the posterior sample's draw
    noise = torch.randn(shape, generator=generator)
    monkeypatch.setattr("videox_fun.pipelines.cogvideox.seeded_noise", lambda *_: noise.clone())
    generator = torch.Generator().manual_seed(SEED)
    expected = run_diffusers(theirs, video=as_pil(video), strength=strength, generator=generator)
    check("v2v", run_ours(pipe, video=video, strength=strength), expected)


def test_i2v_matches_diffusers(folders):
    pipe = ours(folders["i2v"])
    theirs = CogVideoXImageToVideoPipeline(**diffusers_components(folders["i2v"]))
    image = random_video(1, seed=1)[0]
    expected = run_diffusers(theirs, image=as_pil(image[None])[0], num_frames=FRAMES, latents=noise_for(pipe))
    check("i2v", run_ours(pipe, image=image), expected)


FRAMES_1_5 = 21  # 6 latent frames: a whole number of CogVideoX 1.5's temporal patches (patch_size_t 2)


def test_cogvideox_1_5_t2v_matches_diffusers(folders):
    """CogVideoX 1.5: temporal patches of 2 latent frames, RoPE over the patched frames ("slice" grid)."""
    frames = FRAMES_1_5
    pipe = ours(folders["t2v-1.5"])
    theirs = DiffusersCogVideoXPipeline(**diffusers_components(folders["t2v-1.5"]))
    frames_latent, height, width = pipe.vae.latent_shape(frames, SIZE, SIZE)
    noise = seeded_noise((1, frames_latent, 16, height, width), SEED, "cpu")
    expected = run_diffusers(theirs, num_frames=frames, latents=noise)
    check("t2v 1.5", run_ours(pipe, num_frames=frames), expected)


def test_cogvideox_1_5_i2v_with_ofs_matches_diffusers(folders):
    """CogVideoX1.5-I2V: the image latent padded to the video's frames, and the ``ofs`` embedding."""
    pipe = ours(folders["i2v-1.5"])
    theirs = CogVideoXImageToVideoPipeline(**diffusers_components(folders["i2v-1.5"]))
    image = random_video(1, seed=1)[0]
    frames_latent, height, width = pipe.vae.latent_shape(FRAMES_1_5, SIZE, SIZE)
    noise = seeded_noise((1, frames_latent, 16, height, width), SEED, "cpu")
    expected = run_diffusers(theirs, image=as_pil(image[None])[0], num_frames=FRAMES_1_5, latents=noise)
    check("i2v 1.5", run_ours(pipe, image=image, num_frames=FRAMES_1_5), expected)


def test_control_matches_diffusers(folders):
    pipe = ours(folders["control"])
    theirs = CogVideoXFunControlPipeline(**diffusers_components(folders["control"]))
    control = random_video(seed=2)
    expected = run_diffusers(theirs, control_video=as_pil(control), latents=noise_for(pipe))
    check("control", run_ours(pipe, control_video=control), expected)


OTHER_SAMPLERS = [
    ("Euler", EulerDiscreteScheduler),
    ("Euler A", EulerAncestralDiscreteScheduler),
    ("DPM++", DPMSolverMultistepScheduler),
    ("PNDM", PNDMScheduler),
]


@pytest.mark.parametrize(("sampler", "scheduler_class"), OTHER_SAMPLERS)
def test_the_other_samplers_match_diffusers_step_for_step(folders, sampler, scheduler_class):
    """VideoX-Fun's Euler, Euler A, DPM++ and PNDM on CogVideoX: diffusers' pipeline with the same scheduler
    class (read from the same scheduler config) gives the same final latents; the stochastic ones draw
    their per-step noise from a generator seeded SEED + 2, given to diffusers too. PNDM runs 6 steps: its
    Runge-Kutta warm-up does not fit in 3 (diffusers' own scheduler fails there)."""
    steps = 6 if sampler == "PNDM" else STEPS
    pipe = ours(folders["t2v"])
    theirs = DiffusersCogVideoXPipeline(**diffusers_components(folders["t2v"], scheduler_class))
    generator = torch.Generator().manual_seed(SEED + 2)
    expected = run_diffusers(
        theirs, num_frames=FRAMES, latents=noise_for(pipe), generator=generator, num_inference_steps=steps
    )
    check(f"t2v {sampler}", run_ours(pipe, sampler=sampler, num_inference_steps=steps), expected)
