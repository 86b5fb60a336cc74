"""Our pipeline against diffusers' own WanPipeline, same weights, same noise, and a diffusers-layout folder."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel as DiffusersWan

from videox_fun.config import DIFFUSERS_LAYOUT, ModelConfig
from videox_fun.models.wan.keys import original_config_to_diffusers
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


def diffusers_pipeline(ours: WanPipeline, tmp_path) -> DiffusersWanPipeline:
    """diffusers' WanPipeline holding the same weights as ``ours``."""
    config = {"_class_name": "WanTransformer3DModel", **original_config_to_diffusers(dict(ours.transformer.config))}
    ours.transformer.save_original(tmp_path / "single")
    transformer = DiffusersWan.from_single_file(
        str(tmp_path / "single" / "diffusion_pytorch_model.safetensors"), config=_write_config(config, tmp_path)
    ).eval()
    return DiffusersWanPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", shift=3.0),
        transformer=transformer,
    )


def _write_config(config: dict, tmp_path) -> str:
    folder = tmp_path / "diffusers_config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_t2v_latents_match_diffusers_wan_pipeline(t2v_folder, tmp_path):
    ours = WanPipeline.from_pretrained(t2v_folder)
    theirs = diffusers_pipeline(ours, tmp_path)
    prompt, negative = "a red circle moving right", "a blue square"
    our_latents = ours(
        prompt, negative_prompt=negative, seed=7, shift=3.0, sampler="Flow", progress=False, **SETTINGS
    ).latents
    their_latents = theirs(
        prompt,
        negative_prompt=negative,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent",
        **SETTINGS,
    ).frames
    assert our_latents.shape == their_latents.shape
    assert (our_latents - their_latents).abs().max().item() <= 1e-4


def test_diffusers_layout_folder_gives_the_same_video(t2v_folder, tmp_path):
    ours = WanPipeline.from_pretrained(t2v_folder)
    root = tmp_path / "diffusers_layout"
    diffusers_pipeline(ours, tmp_path).save_pretrained(str(root))
    assert (root / "model_index.json").is_file()
    loaded = WanPipeline.from_pretrained(root)
    assert loaded.config == ModelConfig.from_dict(DIFFUSERS_LAYOUT)
    first = ours("a cyan disc", seed=3, progress=False, **SETTINGS).latents
    second = loaded("a cyan disc", seed=3, progress=False, **SETTINGS).latents
    assert torch.allclose(first, second, atol=1e-5)
