"""Our Qwen-Image pipeline against diffusers' ``QwenImagePipeline`` (true CFG with a negative prompt),
``QwenImageImg2ImgPipeline``, ``QwenImageInpaintPipeline`` and ``QwenImageEditPipeline`` with the same weights,
noise and scheduler.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads (for Edit,
transformers' own ``Qwen2VLProcessor`` makes the VL inputs that ours builds from the image processor and the
tokenizer). The tiny VAE's posterior is made sharp (log-variance -30) so diffusers' posterior samples equal our
posterior modes. diffusers' Edit pipeline reads the edit image at 1024 x 1024 pixels' area: its
``calculate_dimensions`` is given the tiny folder's area (64 x 64), which ours reads from its config.
``pytest tests/pipelines/test_qwenimage_against_diffusers.py -s`` prints the max abs differences of the final
packed latents (fp32, 3 steps); the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    QwenImageEditPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
)
from diffusers import QwenImagePipeline as DiffusersQwenImagePipeline
from helpers import max_diff
from PIL import Image
from qwenimage_helpers import random_image, sharpen_vae_posterior, transformers_processor

from videox_fun.families import recognise
from videox_fun.models.qwenimage.tiny import TINY_EDIT_AREA, build_tiny_qwenimage_folder
from videox_fun.pipelines.common import pack_latents, seeded_noise
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.pipelines.qwenimage import QwenImagePipeline

PROMPT, NEGATIVE = "a red circle moving left", "a blue square"
SIZE, STEPS, SEED, SCALE = 32, 3, 7, 4.0
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwenimage_parity")
    built = {}
    for variant in ("t2i", "edit"):
        # With a note: the tiny defaults (64 x 64) and edit-image area (64 x 64) in the folder's videox_fun.yaml.
        built[variant] = build_tiny_qwenimage_folder(root / variant, variant, seed=3, note="parity")
        sharpen_vae_posterior(built[variant])
    return built


def ours(folder: Path) -> QwenImagePipeline:
    return QwenImagePipeline.from_pretrained(recognise(folder))


def run_ours(pipe: QwenImagePipeline, batched: bool = False, **inputs) -> torch.Tensor:
    """Our final latents, packed as diffusers returns them: (1, N, 64)."""
    guidance = ClassifierFreeGuidance(scale=SCALE, batched=batched)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=SCALE, seed=SEED,
               progress=False, guidance=guidance, **inputs)  # fmt: skip
    return pack_latents(out.latents[:, :, 0])


def run_diffusers(pipe, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=SCALE, num_inference_steps=STEPS,
                    output_type="latent", **inputs).images  # fmt: skip


def start_noise(height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """Our seeded noise, packed: diffusers is given it as its starting latents."""
    return pack_latents(seeded_noise((1, 16, height // 8, width // 8), SEED, "cpu"))


def noise(draws: int) -> torch.Tensor:
    """The ``draws``-th (1, 16, 4, 4) normal draw of a generator seeded SEED: what diffusers uses as noise."""
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(draws):
        drawn = torch.randn((1, 1, 16, SIZE // 8, SIZE // 8), generator=generator)
    return drawn[:, 0]


def check(name: str, a: torch.Tensor, b: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    diff = max_diff(a, b)
    print(f"{name}: max abs difference vs diffusers {diff:.3g}")
    assert a.shape == b.shape
    assert diff <= tolerance, f"{name}: {diff}"


@pytest.mark.parametrize("batched", [False, True])
def test_t2i_with_true_cfg_matches_diffusers(folders, batched):
    """Sequential passes are diffusers' own order of operations; batched passes pad the shorter text with masked
    zeros, which moves the sums' order slightly."""
    theirs = DiffusersQwenImagePipeline.from_pretrained(str(folders["t2i"]))
    expected = run_diffusers(theirs, height=SIZE, width=SIZE, latents=start_noise())
    result = run_ours(ours(folders["t2i"]), batched=batched, height=SIZE, width=SIZE)
    check(f"t2i true CFG {'batched' if batched else 'sequential'}", result, expected)


def test_guidance_1_runs_one_pass_as_diffusers(folders):
    theirs = DiffusersQwenImagePipeline.from_pretrained(str(folders["t2i"]))
    with torch.no_grad():
        expected = theirs(prompt=PROMPT, true_cfg_scale=1.0, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                          output_type="latent", latents=start_noise()).images  # fmt: skip
    guidance = ClassifierFreeGuidance(scale=1.0)
    out = ours(folders["t2i"])(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=1.0,
                               seed=SEED, progress=False, guidance=guidance)  # fmt: skip
    assert guidance.passes == {"cond": STEPS, "uncond": 0}
    check("t2i guidance 1", pack_latents(out.latents[:, :, 0]), expected)


def test_i2i_matches_diffusers(folders, monkeypatch):
    """diffusers draws the posterior sample (std 3e-7 here) and then the noise from one generator: our pipeline
    is given that second draw in place of its seeded one."""
    image = random_image(SIZE)
    theirs = QwenImageImg2ImgPipeline.from_pretrained(str(folders["t2i"]))
    expected = run_diffusers(theirs, image=Image.fromarray(image), height=SIZE, width=SIZE, strength=0.7,
                             generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: noise(draws=2))
    check("i2i", run_ours(ours(folders["t2i"]), image=image, height=SIZE, width=SIZE, strength=0.7), expected)


def test_inpaint_matches_diffusers(folders, monkeypatch):
    image = random_image(SIZE)
    mask = torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)
    mask[8:24, 4:20] = 255  # white = regenerate
    theirs = QwenImageInpaintPipeline.from_pretrained(str(folders["t2i"]))
    expected = run_diffusers(theirs, image=Image.fromarray(image), mask_image=Image.fromarray(mask[..., 0].numpy()),
                             height=SIZE, width=SIZE, strength=0.9,
                             generator=torch.Generator().manual_seed(SEED))  # fmt: skip
    monkeypatch.setattr("videox_fun.pipelines.image.seeded_noise", lambda *_: noise(draws=2))
    result = run_ours(ours(folders["t2i"]), image=image, mask=mask, height=SIZE, width=SIZE, strength=0.9)
    check("inpaint", result, expected)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_edit_matches_diffusers(folders, monkeypatch, shape):
    """The edit image goes to Qwen2.5-VL (transformers' processor on their side, ours on ours) and, as latent
    tokens, into every pass; without a size both take the image's aspect ratio."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module

    area = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda _, ratio: area(TINY_EDIT_AREA, ratio))
    image = random_image(shape, seed=1)
    components = {"processor": transformers_processor(folders["edit"], monkeypatch)}
    theirs = QwenImageEditPipeline.from_pretrained(str(folders["edit"]), **components)
    width, height, _ = area(TINY_EDIT_AREA, shape[1] / shape[0])
    expected = run_diffusers(theirs, image=Image.fromarray(image), latents=start_noise(height, width))
    check(f"edit {shape[0]}x{shape[1]}", run_ours(ours(folders["edit"]), image=image), expected)
