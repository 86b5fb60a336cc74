"""Our Wan pipeline on a VACE model against diffusers' own WanVACEPipeline: same weights, noise and scheduler.

diffusers' ``WanVACETransformer3DModel`` reads our original-layout file through its single-file converter; the
VAE and text encoder are the same objects. Each VACE task (a control video, reference images, masked editing,
first and last frames through the mask) gives the same final latents within 1e-4 (fp32).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import WanVACEPipeline
from helpers import diffusers_vace_twin
from PIL import Image

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.schedulers import make_scheduler
from videox_fun.pipelines.wan import WanPipeline

HEIGHT, WIDTH, FRAMES = 32, 48, 5
SETTINGS = {"height": HEIGHT, "width": WIDTH, "num_frames": FRAMES, "num_inference_steps": 3, "guidance_scale": 5.0}
PROMPT, NEGATIVE = "a red circle moving right", "a blue square"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Our pipeline on a tiny VACE folder and diffusers' WanVACEPipeline holding the same weights."""
    root = tmp_path_factory.mktemp("vace")
    folder = build_tiny_model_folder(root / "vace", "vace")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text_len": 512}))  # diffusers pads prompts to 512
    ours = WanPipeline.from_pretrained(folder)
    # Wider VACE weights than the tiny model's initialisation, so the VACE inputs move the latents well
    # above the tolerance (a reference out of order, a mask channel misplaced would show).
    with torch.no_grad():
        for name, param in ours.transformer.named_parameters():
            if name.startswith("vace_"):
                param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    theirs = WanVACEPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", shift=3.0),
        transformer=diffusers_vace_twin(ours.transformer, root / "twin"),
    )
    return ours, theirs


def random_frames(count: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """``count`` random RGB frames (F, H, W, 3) uint8."""
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def latents_of_both(ours: WanPipeline, theirs: WanVACEPipeline, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Our final latents and diffusers' for one set of inputs (``theirs_`` prefixed ones go to diffusers only)."""
    their_inputs = {key.removeprefix("theirs_"): value for key, value in inputs.items() if key.startswith("theirs_")}
    our_inputs = {key: value for key, value in inputs.items() if not key.startswith("theirs_")}
    out = ours(PROMPT, negative_prompt=NEGATIVE, seed=7, shift=3.0, sampler="Flow", progress=False,
               **our_inputs, **SETTINGS)  # fmt: skip
    embeds, negative_embeds = ours._encode_prompts(PROMPT, NEGATIVE)  # diffusers cleans prompt text with ftfy
    their = theirs(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent",
        **their_inputs,
        **SETTINGS,
    ).frames
    return out.latents, their


def test_control_video_matches_diffusers(pair):
    ours, theirs = pair
    control = random_frames(FRAMES)
    mine, their = latents_of_both(
        ours, theirs, control_video=control, theirs_video=[Image.fromarray(frame) for frame in control]
    )
    assert mine.shape == their.shape == (1, 16, 2, HEIGHT // 8, WIDTH // 8)
    assert (mine - their).abs().max().item() <= 1e-4


def test_reference_images_match_diffusers_and_are_dropped(pair, tmp_path):
    ours, theirs = pair
    # Other sizes than the video's: each goes on a white canvas, fitted; two subjects, two latent frames in front.
    first, second = random_frames(1, 24, 48, seed=1)[0], random_frames(1, 40, 24, seed=2)[0]
    paths = [tmp_path / "first.png", tmp_path / "second.png"]
    for path, image in zip(paths, (first, second), strict=True):
        Image.fromarray(image).save(path)
    # diffusers puts each reference in front of the last, so its list is the reverse of the release's order.
    theirs_refs = [Image.fromarray(second), Image.fromarray(first)]
    mine, their = latents_of_both(ours, theirs, ref_image=[str(p) for p in paths], theirs_reference_images=theirs_refs)
    assert their.shape[2] == mine.shape[2] + 2  # diffusers returns the reference frames with the latents
    assert (mine - their[:, :, 2:]).abs().max().item() <= 1e-4


def test_masked_editing_matches_diffusers(pair):
    ours, theirs = pair
    video = random_frames(FRAMES, seed=3)
    mask = np.zeros_like(video)
    mask[:, 8:24, 16:40] = 255  # white = regenerate
    # diffusers takes the source frames as the user prepared them: ours grey out the masked pixels (0 in [-1, 1]).
    # Both as lists of one (F, 3, H, W) tensor in [-1, 1], a form diffusers takes as it is.
    pixels, mask_pixels = (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1 for a in (video, mask))
    greyed = pixels * (mask_pixels[:, :1] < 0)
    mine, their = latents_of_both(
        ours, theirs, video=video, mask=mask, theirs_video=[greyed], theirs_mask=[mask_pixels]
    )
    assert (mine - their).abs().max().item() <= 1e-4


def test_first_and_last_frames_through_the_mask_match_diffusers(pair, tmp_path):
    ours, theirs = pair
    first, last = random_frames(2, seed=4)
    Image.fromarray(first).save(tmp_path / "first.png")
    Image.fromarray(last).save(tmp_path / "last.png")
    # diffusers' documented way: a video holding the known frames (grey between) and a mask black on them.
    video = torch.zeros(FRAMES, 3, HEIGHT, WIDTH)
    video[0], video[-1] = (torch.from_numpy(f).permute(2, 0, 1).float() / 127.5 - 1 for f in (first, last))
    mask = torch.ones(FRAMES, 3, HEIGHT, WIDTH)
    mask[0] = mask[-1] = -1.0
    mine, their = latents_of_both(
        ours,
        theirs,
        image=str(tmp_path / "first.png"),
        end_image=str(tmp_path / "last.png"),
        theirs_video=[video],
        theirs_mask=[mask],
    )
    assert (mine - their).abs().max().item() <= 1e-4
