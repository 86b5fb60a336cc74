"""The runtime features on Wan2.2-Animate: every memory mode, fp8 storage and both step caches, on a two-segment
video of the tiny random Animate model (the second segment starting from the first one's last frame). Unguided,
as the release samples (guidance 1): each guided pass re-encodes the 512 x 512 face crops, which the tests can
spare; sequence parallelism's tests run guided.

Memory modes move the face adapter, motion and face encoders with the rest of the transformer; the step caches
start afresh for each segment (each is one sampling loop) and skip the face blocks with the main ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_animate_sources

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.animate import AnimateRequests, WanAnimatePipeline
from videox_fun.runtime.cache import FirstBlockCache, StepCache, TeaCache, coefficients_for
from videox_fun.runtime.fp8 import FP8, Float8Linear
from videox_fun.runtime.offload import MEMORY_MODES, apply_memory_mode

FRAMES, SIZE = 9, 32
# Segments of 5 frames overlapping by 1: two of them, of 4 steps each.
SETTINGS = {"clip_len": 5, "num_inference_steps": 4, "guidance_scale": 1.0, "seed": 5, "progress": False}
FP8_TOLERANCE = 0.5  # fp8 weights round to 3 mantissa bits: close, not equal
# The modes copy weights to another device; on CPU a copy alone moves the latents by up to ~6e-7 (a plain run whose
# weights are cloned in place differs as much: the kernels' rounding follows the memory layout), so not bit-equal.
MOVED_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def animate_run(tmp_path_factory) -> tuple[Path, Path, torch.Tensor]:
    """A tiny Animate folder, a preprocessing folder and the latents of a plain run on them."""
    root = tmp_path_factory.mktemp("animate_runtime")
    folder = build_tiny_model_folder(root / "animate", "animate")
    sources = write_animate_sources(root / "sources", FRAMES, SIZE)
    return folder, sources, load(folder)("x", sources, **SETTINGS).latents


def load(folder: Path) -> AnimateRequests:
    """The Animate pipeline as the programmatic entry holds it."""
    return AnimateRequests(WanAnimatePipeline.from_pretrained(folder))


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_memory_modes_run_animate(animate_run, mode):
    # "cpu:0" is another device than the "cpu" the weights load on: the hooks really move them.
    folder, sources, reference = animate_run
    pipe = load(folder)
    log = apply_memory_mode(pipe, mode, torch.device("cpu", 0), resident_blocks=1)
    latents = pipe("x", sources, **SETTINGS).latents
    diff = (latents - reference).abs().max().item()
    print(f"{mode}: max |latents - plain| = {diff:.2e}")
    assert torch.isfinite(latents).all() and diff < (FP8_TOLERANCE if "qfloat8" in mode else MOVED_TOLERANCE)
    if mode.startswith(("model_cpu_offload", "sequential", "model_group")):
        assert log.onloads > 0  # the hooks did move weights


def test_fp8_stores_the_face_adapter_linears_like_the_blocks(animate_run):
    """model_full_load_and_qfloat8: every linear of the face blocks holds fp8 weights, as the main blocks' do; the
    two-segment latents stay within the fp8 tolerance of the full-precision run."""
    folder, sources, reference = animate_run
    pipe = load(folder)
    apply_memory_mode(pipe, "model_full_load_and_qfloat8", "cpu")
    adapter = pipe.transformers[0].face_adapter
    linears = [m for m in adapter.modules() if isinstance(m, (torch.nn.Linear, Float8Linear))]
    assert len(linears) == 3 * len(adapter.fuser_blocks)  # linear1_kv, linear1_q, linear2 of each
    assert all(isinstance(m, Float8Linear) and m.weight.dtype == FP8 for m in linears)
    assert pipe.transformers[0].blocks[0].self_attn.q.weight.dtype == FP8
    latents = pipe("x", sources, **SETTINGS).latents
    diff = (latents - reference).abs().max().item()
    print(f"fp8 blocks and face adapter: max |latents - plain| = {diff:.3f}")
    assert torch.isfinite(latents).all() and diff < FP8_TOLERANCE


def skip_run(folder: Path, sources: Path, make_cache) -> tuple[torch.Tensor, StepCache]:
    """The plain run's settings with the step cache ``make_cache(transformer)`` attached; latents and the cache."""
    pipe = load(folder)
    cache = make_cache(pipe.transformers[0])
    try:
        return pipe("x", sources, **SETTINGS).latents, cache
    finally:
        cache.remove()


def check_segments_start_fresh(cache: StepCache) -> None:
    """Each segment's first pass computes: its cache state does not carry over from the last segment."""
    decisions = cache.stats.decisions
    half = len(decisions) // 2
    assert len(decisions) == 2 * half and decisions[0] and decisions[half]


@pytest.mark.parametrize(
    "make_cache",
    [
        lambda model, threshold: FirstBlockCache(model, threshold),
        lambda model, threshold: TeaCache(model, [0.0, 0.0, 0.0, 1.0, 0.0], threshold),  # the raw relative change
    ],
    ids=["first-block", "teacache"],
)
def test_step_caches_on_animate(animate_run, make_cache):
    folder, sources, reference = animate_run
    latents, never = skip_run(folder, sources, lambda model: make_cache(model, 0.0))
    assert torch.allclose(latents, reference, atol=1e-6) and never.stats.skipped == 0
    latents, often = skip_run(folder, sources, lambda model: make_cache(model, 10.0))
    assert torch.isfinite(latents).all() and often.stats.skipped > 0
    check_segments_start_fresh(often)


def test_teacache_on_animate_needs_fitted_coefficients(animate_run):
    # No TeaCache set is published for Wan2.2-Animate: the error says how to get one (or to use first-block).
    pipe = load(animate_run[0])
    with pytest.raises(ValueError, match=r"no TeaCache coefficients.*calibrate-cache.*first-block cache"):
        coefficients_for(pipe.transformers[0], animate_run[0])


def test_the_programmatic_entry_attaches_scaled_fp8_and_the_first_block_cache(animate_run):
    folder, sources, reference = animate_run
    options = RuntimeOptions(
        device="cpu",
        gpu_memory_mode="model_cpu_offload_and_qfloat8",
        fp8="scaled",
        cache="first-block",
        cache_threshold=10.0,
        num_skip_start_steps=1,
    )
    loaded = load_pipeline(folder, options)
    try:
        transformer = loaded.pipe.transformers[0]
        assert transformer.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
        request = GenerationRequest(
            prompt="x", steps=4, guidance_scale=1.0, seed=5, extra={"src_root_path": sources, "clip_len": 5}
        )
        result = loaded.generate(request, progress=False)
        (cache,) = transformer.generation_hooks
        skipped = cache.stats.skipped
    finally:
        loaded.close()
    assert (result.sidecar["fp8"], result.sidecar["cache"]) == ("scaled", "first-block")
    assert skipped > 0 and torch.isfinite(result.latents).all()
    diff = (result.latents - reference).abs().max().item()
    print(f"entry, scaled fp8 + first-block cache: max |latents - plain| = {diff:.3f}")
    assert diff < 2 * FP8_TOLERANCE  # fp8 rounding and skipped steps
