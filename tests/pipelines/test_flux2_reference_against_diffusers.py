"""Our FLUX.2 pipeline's reference editing (mode ``edit``) against diffusers' ``Flux2Pipeline(image=[one, two])`` with
the same weights, pictures, noise and scheduler, and the mode through ``videox-fun generate``.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads (the tokenizer in
place of the Pixtral processor, which needs torchvision; for text it only runs the chat template). The second picture
is 72 x 100, so both sides read the centre 64 x 96 crop; the two pictures' tokens sit at rotary times 10 and 20. The
shrink of pictures past 1024 x 1024 pixels' area is compared apart, at the pixels, with diffusers' image processor.
``pytest tests/pipelines/test_flux2_reference_against_diffusers.py -s`` prints the max abs difference of the final
latents (fp32, 3 steps, guidance 4); the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline as DiffusersFlux2Pipeline
from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
from flux2_helpers import diffusers_flux2_pipeline
from helpers import assert_one_line_refusal, max_diff, read_png, read_sidecar, write_png
from PIL import Image

from videox_fun.cli import main
from videox_fun.families import recognise
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.pipelines.common import image_tensor, seeded_noise
from videox_fun.pipelines.flux2 import Flux2Pipeline, reference_picture
from videox_fun.registry import resolve_model

PROMPT = "the red circle of the first picture on the blue background of the second"
STEPS, SEED, GUIDANCE = 3, 7, 4.0
TOLERANCE = 1e-5  # fp32
FAST = ["--steps", "2", "--quiet"]


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (H, W, 3) noise."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux2_folder(tmp_path_factory.mktemp("flux2_reference") / "FLUX.2-dev", seed=3)


def diffusers_pipeline(folder: Path) -> DiffusersFlux2Pipeline:
    """diffusers' pipeline of diffusers' and transformers' own objects, each read from the folder by its loader."""
    return diffusers_flux2_pipeline(folder)


def test_two_reference_pictures_match_diffusers(folder):
    """No size given: both take the first picture's (64 x 64)."""
    first, second = picture(64, 64, seed=1), picture(72, 100, seed=2)
    noise = seeded_noise((1, 128, 4, 4), SEED, "cpu")
    with torch.no_grad():
        expected = diffusers_pipeline(folder)(
            image=[Image.fromarray(first), Image.fromarray(second)], prompt=PROMPT, num_inference_steps=STEPS,
            guidance_scale=GUIDANCE, latents=noise, output_type="latent",
        ).images  # fmt: skip
    pipe = Flux2Pipeline.from_pretrained(recognise(folder))
    out = pipe(PROMPT, image=first, ref_image=[second], num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               seed=SEED, progress=False)  # fmt: skip
    result = out.latents[:, :, 0].flatten(2).transpose(1, 2)  # (1, N, 128) as diffusers returns them
    diff = max_diff(result, expected)
    print(f"FLUX.2 edit, 2 reference pictures: max abs difference vs diffusers {diff:.3g}")
    assert out.settings["mode"] == "edit" and out.frames.shape[1:3] == (64, 64)
    assert result.shape == expected.shape and diff <= TOLERANCE, diff


def test_a_large_picture_is_shrunk_and_cropped_as_diffusers_does():
    """Past 1024 x 1024 pixels' area: Lanczos to that area (sides truncated), then the centre crop to 16s."""
    pixels = picture(1000, 1150, seed=4)
    image = Image.fromarray(pixels)
    processor = Flux2ImageProcessor(vae_scale_factor=16)
    shrunk = processor._resize_to_target_area(image, 1024 * 1024)
    width, height = shrunk.width // 16 * 16, shrunk.height // 16 * 16
    expected = processor.preprocess(shrunk, height=height, width=width, resize_mode="crop")  # (1, 3, H, W)
    ours = reference_picture(pixels, 16)
    assert ours.size == (width, height) == (1088, 944)  # 1098 x 954 cropped
    read = image_tensor(torch.from_numpy(np.asarray(ours).copy()), height, width, "cpu", torch.float32)
    assert max_diff(read, expected) <= 1e-6


@pytest.mark.usefixtures("builtin_cache")
def test_generate_writes_a_png_from_two_reference_pictures(tmp_path):
    first = write_png(tmp_path / "a.png", picture(64, 96, seed=1))
    second = write_png(tmp_path / "b.png", picture(64, 64, seed=2))
    out = tmp_path / "edit.png"
    args = ["generate", "--prompt", "x", "--image", str(first), "--ref-image", str(second), "--output", str(out)]
    assert main([*args, "--model", "Flux2-Tiny-Random", *FAST]) == 0
    assert read_png(out).shape == (64, 96, 3)  # the first picture's size
    assert (read_sidecar(out)["mode"], read_sidecar(out)["variant"]) == ("edit", "FLUX.2-dev")


@pytest.mark.usefixtures("builtin_cache")
def test_bad_reference_pictures_fail_in_one_line(tmp_path, capsys):
    """Refused before any weight is loaded (the folders are built first: building prints progress)."""
    for name in ("Flux2-Tiny-Random", "Flux-Tiny-Random"):
        resolve_model(name)
    path = str(write_png(tmp_path / "a.png", picture(64, 64, seed=1)))
    small = str(write_png(tmp_path / "small.png", picture(32, 64, seed=1)))
    out = str(tmp_path / "o.png")
    flux2 = ["--model", "Flux2-Tiny-Random", *FAST, "--output", out]
    eleven = ["generate", "--prompt", "x", "--image", path, "--ref-image", *[path] * 10, *flux2]
    assert_one_line_refusal(
        main, capsys, eleven, "FLUX.2 reads at most 10 reference pictures (--image and --ref-image together), got 11"
    )
    too_small = ["generate", "--prompt", "x", "--image", path, "--ref-image", small, *flux2]
    assert_one_line_refusal(
        main, capsys, too_small, "a FLUX.2 reference picture of 64x32: each side must be at least 64 pixels"
    )
    flux1 = ["generate", "--prompt", "x", "--image", path, "--ref-image", path, "--model", "Flux-Tiny-Random", *FAST,
             "--output", out]  # fmt: skip
    assert_one_line_refusal(main, capsys, flux1, "mode 'i2i' takes no --ref-image")
    assert not Path(out).exists()
