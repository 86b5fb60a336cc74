"""Ulysses and Ring on CogVideoX (joint text + video attention, diffusers' block loop) on 2 gloo ranks.

The tiny CogVideoX-Fun InP pipeline runs two guided steps with its blocks hooked
(:class:`~videox_fun.runtime.parallel.JointSequenceParallel`); every rank's latents must match the
single-process run within 1e-5 (fp32), for video token counts that do and do not divide by 2.
With a step cache on top (TeaCache, first-block cache) over 6 steps, every rank skips the same
steps as one process with the same cache and ends with the same latents.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import max_diff
from parallel_harness import TOLERANCE, spawn

from videox_fun.api import RuntimeOptions
from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder
from videox_fun.pipelines.cogvideox import CogVideoXPipeline
from videox_fun.runtime.cache import FirstBlockCache, StepCache, TeaCache
from videox_fun.runtime.distributed import init_distributed
from videox_fun.runtime.parallel import JointSequenceParallel, setup_parallel

# (name, ulysses, ring, height, width): 9 frames = 3 latent frames, 2x2 patches of the 8x latents.
CASES = [
    ("ulysses2-12tok", 2, 1, 32, 32),
    ("ulysses2-27tok", 2, 1, 48, 48),
    ("ring2-12tok", 1, 2, 32, 32),
    ("ring2-27tok", 1, 2, 48, 48),
]


# (name, ulysses, ring, cache): 27 video tokens (48x48), split unevenly over the 2 ranks.
CACHED_CASES = [
    ("ulysses2-teacache", 2, 1, "teacache"),
    ("ulysses2-first-block", 2, 1, "first-block"),
    ("ring2-first-block", 1, 2, "first-block"),
]
CACHED_STEPS = 6


def run(pipe: CogVideoXPipeline, height: int, width: int, steps: int = 2) -> torch.Tensor:
    """``steps`` guided steps of t2v; the final latents."""
    settings = {"height": height, "width": width, "num_frames": 9, "num_inference_steps": steps, "guidance_scale": 6.0}
    return pipe("a red circle moving right", seed=1, progress=False, **settings).latents


def attach_cache(pipe: CogVideoXPipeline, kind: str) -> StepCache:
    """A step cache at a threshold where the tiny model skips some of its 6 steps and computes others."""
    if kind == "teacache":
        return TeaCache(pipe.transformer, [0.0, 0.0, 0.0, 1.0, 0.0], 1.0)  # the raw relative change
    return FirstBlockCache(pipe.transformer, 0.3)


def run_cached(pipe: CogVideoXPipeline, kind: str) -> tuple[torch.Tensor, list[bool]]:
    """The cached run's final latents and its compute (True) / skip (False) decisions, cache removed after."""
    cache = attach_cache(pipe, kind)
    try:
        return run(pipe, 48, 48, CACHED_STEPS), list(cache.stats.decisions)
    finally:
        cache.remove()


def rank_worker(rank: int, folder: Path, out_dir: Path) -> None:
    """Every case on this rank, hooks attached and removed around each."""
    init_distributed("cpu")
    pipe = CogVideoXPipeline.from_pretrained(folder)
    results = {}
    for name, ulysses, ring, height, width in CASES:
        runtime = setup_parallel(RuntimeOptions(device="cpu", ulysses_degree=ulysses, ring_degree=ring), pipe)
        results["hooked:" + name] = isinstance(runtime.hooks[0], JointSequenceParallel)
        results[name] = run(pipe, height, width)
        runtime.remove_hooks()
    for name, ulysses, ring, kind in CACHED_CASES:  # parallelism first, then the cache, as load_pipeline does
        runtime = setup_parallel(RuntimeOptions(device="cpu", ulysses_degree=ulysses, ring_degree=ring), pipe)
        results[name] = run_cached(pipe, kind)
        runtime.remove_hooks()
    seam = pipe.transformer.transformer_blocks[0].attn1.processor
    results["hooks_left"] = "attend" in vars(seam) or bool(pipe.transformer.transformer_blocks[0]._forward_pre_hooks)
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cog-sp")
    folder = build_tiny_cogvideox_folder(root / "inp", "inp")
    (root / "ranks").mkdir()
    spawn(2, rank_worker, folder, root / "ranks")
    ranks = [torch.load(root / "ranks" / f"rank{rank}.pt") for rank in range(2)]
    pipe = CogVideoXPipeline.from_pretrained(folder)
    references = {name: run(pipe, height, width) for name, _, _, height, width in CASES}
    references |= {name: run_cached(pipe, kind) for name, _, _, kind in CACHED_CASES}
    return ranks, references


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_match_one_process(case, runs):
    ranks, references = runs
    name = case[0]
    for rank, results in enumerate(ranks):
        assert results["hooked:" + name], "CogVideoX has no block runner: the block-hook sequence parallelism attaches"
        diff = max_diff(results[name], references[name])
        assert diff <= TOLERANCE, f"{name} rank {rank}: max abs diff {diff:.2e}"


def test_hooks_come_off(runs):
    ranks, _ = runs
    assert not any(results["hooks_left"] for results in ranks)


@pytest.mark.parametrize("case", CACHED_CASES, ids=[c[0] for c in CACHED_CASES])
def test_step_caches_skip_alike_on_every_rank(case, runs):
    """Every rank takes one process's decisions (some steps skipped) and ends with its latents."""
    ranks, references = runs
    name = case[0]
    latents, decisions = references[name]
    assert not all(decisions) and sum(decisions) > 2, f"{name}: the threshold should skip some steps: {decisions}"
    for rank, results in enumerate(ranks):
        rank_latents, rank_decisions = results[name]
        assert rank_decisions == decisions, f"{name} rank {rank}"
        diff = max_diff(rank_latents, latents)
        assert diff <= TOLERANCE, f"{name} rank {rank}: max abs diff {diff:.2e}"


def test_the_split_stream_measure_comes_off_with_the_hooks(tmp_path):
    """One process stands in for a group: attaching needs no collective."""
    from videox_fun.runtime.cache import SHARDED_RELATIVE_L1
    from videox_fun.runtime.parallel import build_groups

    pipe = CogVideoXPipeline.from_pretrained(build_tiny_cogvideox_folder(tmp_path / "inp", "inp"))
    groups = build_groups(1, 1)
    groups.ulysses_degree = 2  # a layout as a 2-rank group would have
    hook = JointSequenceParallel(groups).attach(pipe.transformer)
    assert callable(getattr(pipe.transformer, SHARDED_RELATIVE_L1))
    hook.remove()
    assert not hasattr(pipe.transformer, SHARDED_RELATIVE_L1)
