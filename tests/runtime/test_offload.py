"""Memory modes: every mode runs the tiny pipeline; the non-fp8 ones give exactly full-load output."""

from __future__ import annotations

import pytest
import torch

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime.offload import MEMORY_MODES, BlockSwap, MoveLog, apply_memory_mode

SETTINGS = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False, "seed": 5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("offload") / "inp", "inp", with_clip=True)


@pytest.fixture(scope="module")
def reference(folder):
    return WanPipeline.from_pretrained(folder)("a red circle moving right", **SETTINGS).latents


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_every_mode_runs_and_non_fp8_modes_match_full_load(folder, reference, mode):
    pipe = WanPipeline.from_pretrained(folder)
    apply_memory_mode(pipe, mode, "cpu", resident_blocks=1)
    latents = pipe("a red circle moving right", **SETTINGS).latents
    if "qfloat8" in mode:
        assert torch.isfinite(latents).all()
        assert (latents - reference).abs().max() < 0.5  # fp8 rounding, not a different video
    else:
        assert torch.equal(latents, reference)


def test_model_cpu_offload_moves_one_component_at_a_time(folder):
    pipe = WanPipeline.from_pretrained(folder)
    log = apply_memory_mode(pipe, "model_cpu_offload", "cpu")
    pipe("x", image=None, **SETTINGS)
    # text encoder, then (CLIP zeros need no encoder) the transformer, then the VAE for decoding
    assert log.order[0] == "text_encoder" and log.order[-1] == "vae" and "transformer" in log.order
    assert log.onloads == len(log.order) and log.offloads == log.onloads - 1


def test_block_swap_prefetches_the_next_block_and_keeps_the_resident_ones(folder):
    pipe = WanPipeline.from_pretrained(folder)
    log = MoveLog()
    swap = BlockSwap(pipe.transformer.blocks, torch.device("cpu"), resident=1, log=log)
    with torch.no_grad():
        pipe.transformer(
            torch.randn(1, 16, 2, 4, 4),
            torch.tensor([500.0]),
            torch.randn(1, 4, 32),
            clip_fea=torch.zeros(1, 257, 24),
            y=torch.zeros(1, 20, 2, 4, 4),
        )
    # block 0 is resident; block 1 is prefetched while block 0 runs, then unloaded after it ran
    assert log.order == ["prefetch 1", "unload 1"]
    swap.remove()
    assert not pipe.transformer.blocks[1]._forward_pre_hooks


def test_unknown_mode_is_named(folder):
    with pytest.raises(ValueError, match="model_half_load"):
        apply_memory_mode(WanPipeline.from_pretrained(folder), "model_half_load", "cpu")


@pytest.fixture(scope="module")
def two_expert_folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("offload") / "a14b", "inp", boundary=0.875)


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_two_expert_models_run_in_every_mode(two_expert_folder, mode):
    settings = {**SETTINGS, "num_inference_steps": 4}  # steps on both sides of the boundary
    reference = WanPipeline.from_pretrained(two_expert_folder)("a red circle moving right", **settings).latents
    pipe = WanPipeline.from_pretrained(two_expert_folder)
    log = apply_memory_mode(pipe, mode, "cpu", resident_blocks=1)
    latents = pipe("a red circle moving right", **settings).latents
    if "qfloat8" in mode:
        assert all(type(t.blocks[0].ffn[0]).__name__ == "Float8Linear" for t in pipe.transformers)
        assert (latents - reference).abs().max() < 0.5
    else:
        assert torch.equal(latents, reference)
    if mode.startswith("model_cpu_offload"):
        assert log.order[-3:] == ["transformer", "transformer_2", "vae"]  # high-noise expert, low-noise, decode
