"""Classifier-free guidance: the per-expert scale of two-expert models, counted passes."""

from __future__ import annotations

import torch

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.pipelines.wan import WanPipeline

SETTINGS = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 4, "seed": 0, "progress": False}


def test_two_expert_scales_do_not_change_a_guidance_the_caller_passed(tmp_path):
    pipe = WanPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "a14b", "t2v", boundary=0.5))
    scales = {"guidance_scale": 4.0, "guidance_scale_2": 2.0}
    own = pipe("x", **SETTINGS, **scales).latents
    given = ClassifierFreeGuidance(scale=4.0)
    passed = pipe("x", **SETTINGS, **scales, guidance=given).latents
    assert given.scale == 4.0 and given.passes == {"cond": 4, "uncond": 4}
    assert torch.equal(passed, own)
    # The low-noise expert's scale is used: another one changes the result.
    assert not torch.equal(pipe("x", **SETTINGS, guidance_scale=4.0, guidance_scale_2=4.0).latents, own)


def test_scale_one_skips_the_unconditional_pass():
    guidance = ClassifierFreeGuidance(scale=5.0)
    calls = []

    def denoise(latents, t, inputs):
        calls.append(latents.shape[0])
        return latents * inputs["context"]

    latents, t = torch.ones(1, 2), torch.zeros(1)
    cond, uncond = {"context": torch.full((1, 2), 3.0)}, {"context": torch.full((1, 2), 1.0)}
    assert torch.equal(guidance(denoise, latents, t, cond, uncond, 0, 4), torch.full((1, 2), 11.0))  # 1 + 5 * 2
    assert torch.equal(guidance(denoise, latents, t, cond, uncond, 1, 4, scale=1.0), torch.full((1, 2), 3.0))
    assert calls == [2, 1] and guidance.passes == {"cond": 2, "uncond": 1}
