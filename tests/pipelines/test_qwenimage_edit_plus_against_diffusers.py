"""Our Qwen-Image pipeline on a Qwen-Image-Edit-2509 folder against diffusers' ``QwenImageEditPlusPipeline`` with the
same weights, pictures, noise and scheduler, and Edit-2509 through ``videox-fun generate``.

Every diffusers component is loaded by diffusers / transformers from the same tiny folder ours loads (transformers'
own ``Qwen2VLProcessor`` makes the VL inputs that ours builds from the image processor and the tokenizer). The tiny
VAE's posterior is made sharp (log-variance -30) so diffusers' posterior samples equal our posterior modes.
diffusers reads the pictures for the VAE, and sizes the output, at 1024 x 1024 pixels' area: its
``calculate_dimensions`` is given the tiny folder's area (64 x 64) there, which ours reads from its config; the VL
model reads each picture at 384 x 384 pixels' area on both sides. Two pictures of different aspect ratios give two
token grids (their own rotary frames) and two different counts of vision tokens. Edit-2511's folder differs only in
its transformer config (``zero_cond_t``: the pictures' tokens modulated at timestep 0): the same test runs on it.
``pytest tests/pipelines/test_qwenimage_edit_plus_against_diffusers.py -s`` prints the max abs difference of the
final packed latents (fp32, 3 steps, true CFG 4); the bound asserted is 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from helpers import assert_one_line_refusal, max_diff, read_png, read_sidecar, write_png
from PIL import Image
from qwenimage_helpers import random_image, sharpen_vae_posterior, transformers_processor

from videox_fun.cli import main
from videox_fun.families import recognise
from videox_fun.models.qwenimage.tiny import TINY_EDIT_AREA, build_tiny_qwenimage_folder
from videox_fun.pipelines.common import pack_latents, seeded_noise
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.pipelines.qwenimage import QwenImagePipeline
from videox_fun.registry import resolve_model

PROMPT, NEGATIVE = "put the red circle beside the blue square", "a green triangle"
STEPS, SEED, SCALE = 3, 7, 4.0
TOLERANCE = 1e-5  # fp32
RELEASE_AREA = 1024 * 1024  # diffusers' VAE_IMAGE_SIZE and its default output area
FAST = ["--steps", "2", "--quiet"]
PLUS = ["--model", "Qwen-Image-Edit-2509-Tiny-Random", *FAST]


@pytest.fixture(scope="module", params=["2509", "2511"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Edit-2509 folder; as Edit-2511 its transformer config turns ``zero_cond_t`` on (same weights)."""
    # With a note: the tiny defaults (64 x 64) and edit-image area (64 x 64) in the folder's videox_fun.yaml.
    built = build_tiny_qwenimage_folder(tmp_path_factory.mktemp("edit_plus") / request.param, "edit-plus", seed=3,
                                        note="parity")  # fmt: skip
    sharpen_vae_posterior(built)
    if request.param == "2511":
        path = built / "transformer" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "zero_cond_t": True}))
    return built


def start_noise(height: int, width: int) -> torch.Tensor:
    """Our seeded noise, packed: diffusers is given it as its starting latents."""
    return pack_latents(seeded_noise((1, 16, height // 8, width // 8), SEED, "cpu"))


def test_the_folder_is_recognised_as_edit_2509_or_2511(folder):
    found = recognise(folder)
    assert (found.family.name, found.variant, found.modes) == ("qwenimage", f"Qwen-Image-Edit-{folder.name}", ("edit",))


def test_two_pictures_match_diffusers(folder, monkeypatch):
    """Picture 1 square, picture 2 of 48 x 80: the output takes the last one's aspect ratio on both sides."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    area = plus_module.calculate_dimensions

    def tiny_area(target: int, ratio: float) -> tuple[int, int]:
        return area(TINY_EDIT_AREA if target == RELEASE_AREA else target, ratio)  # the VL's 384 x 384 unchanged

    monkeypatch.setattr(plus_module, "calculate_dimensions", tiny_area)
    first, second = random_image(64, seed=1), random_image((48, 80), seed=2)
    processor = transformers_processor(folder, monkeypatch)
    theirs = QwenImageEditPlusPipeline.from_pretrained(str(folder), processor=processor)
    width, height = area(TINY_EDIT_AREA, 80 / 48)
    with torch.no_grad():
        expected = theirs(image=[Image.fromarray(first), Image.fromarray(second)], prompt=PROMPT,
                          negative_prompt=NEGATIVE, true_cfg_scale=SCALE, num_inference_steps=STEPS,
                          output_type="latent", latents=start_noise(height, width)).images  # fmt: skip

    pipe = QwenImagePipeline.from_pretrained(recognise(folder))
    out = pipe(PROMPT, negative_prompt=NEGATIVE, image=first, ref_image=[second], num_inference_steps=STEPS,
               guidance_scale=SCALE, seed=SEED, progress=False,
               guidance=ClassifierFreeGuidance(scale=SCALE, batched=False))  # fmt: skip
    result = pack_latents(out.latents[:, :, 0])
    diff = max_diff(result, expected)
    print(f"edit-{folder.name}, 2 pictures ({height}x{width} output): max abs difference vs diffusers {diff:.3g}")
    assert theirs.transformer.zero_cond_t == pipe.transformer.zero_cond_t == (folder.name == "2511")
    assert result.shape == expected.shape and out.frames.shape[1:3] == (height, width)
    assert out.settings["variant"] == f"Qwen-Image-Edit-{folder.name}"
    assert diff <= TOLERANCE, diff


@pytest.mark.usefixtures("builtin_cache")
def test_generate_writes_a_png_from_two_pictures(tmp_path):
    first = write_png(tmp_path / "a.png", random_image(64, seed=1))
    second = write_png(tmp_path / "b.png", random_image((48, 80), seed=2))
    out = tmp_path / "edit.png"
    args = ["generate", "--prompt", "put them together", "--image", str(first), "--ref-image", str(second)]
    assert main([*args, "--output", str(out), *PLUS]) == 0
    # 64 x 64 pixels' area (the tiny default) at the last picture's 80:48, rounded to 32
    assert read_png(out).shape == (64, 96, 3)
    sidecar = read_sidecar(out)
    assert (sidecar["mode"], sidecar["variant"]) == ("edit", "Qwen-Image-Edit-2509")
    assert (sidecar["image"], sidecar["ref_image"]) == (str(first.resolve()), str(second.resolve()))


@pytest.mark.usefixtures("builtin_cache")
def test_too_many_pictures_and_pictures_to_plain_edit_fail_in_one_line(tmp_path, capsys):
    """Refused before any weight is loaded (the folders are built first: building prints progress)."""
    for name in ("Qwen-Image-Edit-2509-Tiny-Random", "Qwen-Image-Edit-Tiny-Random"):
        resolve_model(name)
    picture = str(write_png(tmp_path / "a.png", random_image(32)))
    out = str(tmp_path / "o.png")
    four = ["generate", "--prompt", "x", "--image", picture, "--ref-image", picture, picture, picture, "--output", out]
    too_many = "Qwen-Image-Edit-2509 reads at most 3 pictures (--image and --ref-image together), got 4"
    assert_one_line_refusal(main, capsys, [*four, *PLUS], too_many)
    two = ["generate", "--prompt", "x", "--image", picture, "--ref-image", picture, "--output", out]
    assert_one_line_refusal(main, capsys, [*two, "--model", "Qwen-Image-Edit-Tiny-Random", *FAST],
                            "Qwen-Image-Edit edits one picture (--image); several pictures (--ref-image) need a "
                            "Qwen-Image-Edit-2509 model")  # fmt: skip
    assert not Path(out).exists()
