"""Our pipeline against diffusers' own WanPipeline, same weights, same noise, and a diffusers-layout folder."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from helpers import diffusers_pipeline, diffusers_twin

from videox_fun.config import DIFFUSERS_LAYOUT, ModelConfig
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.schedulers import make_scheduler
from videox_fun.pipelines.wan import WanPipeline

SETTINGS = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 5.0}


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory):
    # diffusers pads prompts to 512 tokens, so this tiny model keeps the released text_len.
    folder = build_tiny_model_folder(tmp_path_factory.mktemp("t2v") / "t2v", "t2v")
    config = json.loads((folder / "config.json").read_text())
    config["text_len"] = 512
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def latents_of_both(ours: WanPipeline, theirs: DiffusersWanPipeline, settings: dict):
    """Our output and diffusers' latents for one prompt, seed and set of settings (Flow sampler, shift 3)."""
    prompt, negative = "a red circle moving right", "a blue square"
    out = ours(prompt, negative_prompt=negative, seed=7, shift=3.0, sampler="Flow", progress=False, **settings)
    generator = torch.Generator("cpu").manual_seed(7)
    theirs_out = theirs(prompt, negative_prompt=negative, generator=generator, output_type="latent", **settings)
    return out, theirs_out.frames


def test_t2v_latents_match_diffusers_wan_pipeline(t2v_folder, tmp_path):
    ours = WanPipeline.from_pretrained(t2v_folder)
    out, their_latents = latents_of_both(ours, diffusers_pipeline(ours, tmp_path), SETTINGS)
    our_latents = out.latents
    assert our_latents.shape == their_latents.shape
    assert (our_latents - their_latents).abs().max().item() <= 1e-4


def test_diffusers_layout_folder_gives_the_same_video(t2v_folder, tmp_path):
    ours = WanPipeline.from_pretrained(t2v_folder)
    root = tmp_path / "diffusers_layout"
    diffusers_pipeline(ours, tmp_path).save_pretrained(str(root))
    assert (root / "model_index.json").is_file()
    loaded = WanPipeline.from_pretrained(root)
    assert loaded.config == ModelConfig.from_dict(DIFFUSERS_LAYOUT)
    # The same sampling settings: the tiny folder states shift 3, a diffusers folder takes the default (5).
    first = ours("a cyan disc", seed=3, shift=3.0, progress=False, **SETTINGS).latents
    second = loaded("a cyan disc", seed=3, shift=3.0, progress=False, **SETTINGS).latents
    assert torch.allclose(first, second, atol=1e-5)


@pytest.mark.parametrize("boundary", [0.875, 0.5])
def test_two_expert_latents_match_diffusers_boundary_ratio(tmp_path, boundary):
    folder = build_tiny_model_folder(tmp_path / "a14b", "t2v", boundary=boundary)
    for expert in ("high_noise_model", "low_noise_model"):  # diffusers pads prompts to 512 tokens
        config = json.loads((folder / expert / "config.json").read_text())
        (folder / expert / "config.json").write_text(json.dumps({**config, "text_len": 512}))
    ours = WanPipeline.from_pretrained(folder)
    assert ours.transformer_2 is not None and ours.boundary == boundary
    low = diffusers_twin(ours.transformer_2, tmp_path, "low")
    theirs = diffusers_pipeline(ours, tmp_path, transformer_2=low, boundary_ratio=boundary)
    settings = {**SETTINGS, "num_inference_steps": 6, "guidance_scale": 4.0, "guidance_scale_2": 2.0}
    out, their_latents = latents_of_both(ours, theirs, settings)
    assert out.settings["guidance_scale_2"] == 2.0 and out.settings["boundary"] == boundary
    assert (out.latents - their_latents).abs().max().item() <= 1e-4
    # Both experts ran: the same call with the high-noise expert alone gives other latents.
    alone = WanPipeline.from_pretrained(folder)
    alone.transformer_2 = None
    single, _ = latents_of_both(alone, theirs, settings)
    assert (single.latents - out.latents).abs().max().item() > 1e-3


def test_ti2v_first_frame_i2v_matches_diffusers_expand_timesteps(tmp_path):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    folder = build_tiny_model_folder(tmp_path / "ti2v", "t2v")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "ti2v", "text_len": 512}))
    ours = WanPipeline.from_pretrained(folder)
    assert ours.variant.first_frame and "i2v" in ours.variant.modes
    theirs = WanImageToVideoPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", shift=3.0),
        transformer=diffusers_twin(ours.transformer, tmp_path),
        expand_timesteps=True,
    )
    pixels = torch.Generator().manual_seed(0)
    image = (torch.rand(SETTINGS["height"], SETTINGS["width"], 3, generator=pixels) * 255).to(torch.uint8).numpy()
    Image.fromarray(image).save(tmp_path / "start.png")
    out = ours("a red circle moving right", negative_prompt="a blue square", image=str(tmp_path / "start.png"),
               seed=7, shift=3.0, sampler="Flow", progress=False, **SETTINGS)  # fmt: skip
    # Embeddings in, as diffusers' i2v pipeline cleans prompt text with ftfy (not a dependency here).
    embeds, negative_embeds = ours._encode_prompts("a red circle moving right", "a blue square")
    their_latents = theirs(
        image=Image.fromarray(image),
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent",
        **SETTINGS,
    ).frames
    assert out.settings["mode"] == "i2v"
    assert (out.latents - their_latents).abs().max().item() <= 1e-4
    first = ours.vae.encode(ours._image_tensor(str(tmp_path / "start.png"), 32, 48)[:, :, None]).cpu()
    assert torch.allclose(out.latents[:, :, :1], first, atol=1e-5)  # the image is the first latent frame
