"""Ulysses and Ring on CogVideoX (joint text + video attention, diffusers' block loop) on 2 gloo ranks.

The tiny CogVideoX-Fun InP pipeline runs two guided steps with its blocks hooked
(:class:`~videox_fun.runtime.parallel.JointSequenceParallel`); every rank's latents must match the
single-process run within 1e-5 (fp32), for video token counts that do and do not divide by 2.
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
from videox_fun.runtime.distributed import init_distributed
from videox_fun.runtime.parallel import JointSequenceParallel, setup_parallel

# (name, ulysses, ring, height, width): 9 frames = 3 latent frames, 2x2 patches of the 8x latents.
CASES = [
    ("ulysses2-12tok", 2, 1, 32, 32),
    ("ulysses2-27tok", 2, 1, 48, 48),
    ("ring2-12tok", 1, 2, 32, 32),
    ("ring2-27tok", 1, 2, 48, 48),
]


def run(pipe: CogVideoXPipeline, height: int, width: int) -> torch.Tensor:
    """Two guided steps of t2v; the final latents."""
    settings = {"height": height, "width": width, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 6.0}
    return pipe("a red circle moving right", seed=1, progress=False, **settings).latents


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


def test_step_caches_are_refused_with_block_hook_parallelism(tmp_path):
    """One process stands in for a group: the hooked seams are what the refusal reads."""
    from videox_fun.runtime.options import refuse_cache_under_block_hook_parallelism
    from videox_fun.runtime.parallel import build_groups

    pipe = CogVideoXPipeline.from_pretrained(build_tiny_cogvideox_folder(tmp_path / "inp", "inp"))
    refuse_cache_under_block_hook_parallelism(pipe.transformer)  # not split: nothing to refuse
    groups = build_groups(1, 1)
    groups.ulysses_degree = 2  # a layout as a 2-rank group would have; attaching needs no collective
    hook = JointSequenceParallel(groups).attach(pipe.transformer)
    try:
        with pytest.raises(ValueError, match="--cache with --ulysses-degree"):
            refuse_cache_under_block_hook_parallelism(pipe.transformer)
    finally:
        hook.remove()
