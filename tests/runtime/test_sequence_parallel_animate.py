"""Sequence parallelism on Wan2.2-Animate: each rank's face blocks take its chunk of the video tokens.

The tiny Animate model runs two-segment videos (the second segment starting from the first one's last frame) with
two guided steps each on 2 gloo ranks under Ulysses 2 and Ring 2; every rank's final latents must equal one
process's within 1e-5 (fp32). At 48 x 48 a latent frame is 9 tokens and the clip 27: the split cuts a frame in two
and pads the second rank's chunk; at 32 x 32 (4 tokens a frame, 12 in all) it falls between frames. The first-block
cache, which runs the stack in two slices, places both slices' chunks alike.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import write_animate_sources
from parallel_harness import assert_ranks_match, assert_same_skips, spawn

from videox_fun.models.wan.animate import FaceBlock
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.animate import AnimateRequests, WanAnimatePipeline
from videox_fun.runtime.cache import FirstBlockCache
from videox_fun.runtime.distributed import init_distributed
from videox_fun.runtime.parallel import ParallelRuntime, setup_parallel

WORLD = 2
FRAMES, CLIP_LEN = 9, 5  # segments of 5 frames overlapping by 1: two of them, 3 latent frames each with the reference


@dataclass(frozen=True)
class AnimateCase:
    """One layout on the tiny Animate model at one size, animating or replacing."""

    name: str
    size: int
    ulysses: int = 1
    ring: int = 1
    replace: bool = False
    first_block_cache: bool = False
    steps: int = 2

    @property
    def tokens(self) -> int:
        """Video tokens of one segment: (reference + 2) latent frames x (size/16)^2."""
        return (1 + (CLIP_LEN - 1) // 4 + 1) * (self.size // 16) ** 2

    def args(self) -> argparse.Namespace:
        """The parallel flags a script would parse for this layout."""
        return argparse.Namespace(ulysses_degree=self.ulysses, ring_degree=self.ring, cfg_parallel=False, device="cpu")


CASES = [
    AnimateCase("ulysses2-12tok", 32, ulysses=2),
    AnimateCase("ulysses2-27tok", 48, ulysses=2),
    AnimateCase("ring2-12tok", 32, ring=2),
    AnimateCase("ring2-replace-27tok", 48, ring=2, replace=True),
    AnimateCase("first-block+ulysses2-27tok", 48, ulysses=2, first_block_cache=True, steps=6),
]


def generate(
    pipe: AnimateRequests, case: AnimateCase, sources: dict[int, Path], runtime: ParallelRuntime | None
) -> tuple[torch.Tensor, int]:
    """The case's video through the programmatic entry's adapter: the last segment's latents, the steps skipped."""
    cache = FirstBlockCache(pipe.transformers[0], 0.5) if case.first_block_cache else None
    try:
        result = pipe(
            "a person dancing",
            sources[case.size],
            mode="replace" if case.replace else "animate",
            clip_len=CLIP_LEN,
            num_inference_steps=case.steps,
            guidance_scale=5.0,  # both passes: the face-free one too
            guidance=runtime.guidance(5.0) if runtime is not None else None,
            seed=1,
            progress=False,
        )
    finally:
        if cache is not None:
            cache.remove()
    return result.latents, cache.stats.skipped if cache is not None else 0


def rank_worker(rank: int, folder: Path, sources: dict[int, Path], out_dir: Path) -> None:
    """Every case on this rank, the hooks attached and removed around each; the results saved for the test."""
    init_distributed("cpu")
    pipe = AnimateRequests(WanAnimatePipeline.from_pretrained(folder))
    results = {}
    for case in CASES:
        runtime = setup_parallel(case.args(), pipe)
        results[case.name], results[case.name + ":skipped"] = generate(pipe, case, sources, runtime)
        runtime.remove_hooks()
    results["hooks_left"] = "run_blocks" in pipe.transformers[0].__dict__
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """Each rank's results (one spawn for every case) and one process's, by case name."""
    root = tmp_path_factory.mktemp("sp_animate")
    folder = build_tiny_model_folder(root / "animate", "animate")
    sources = {size: write_animate_sources(root / f"sources{size}", FRAMES, size) for size in (32, 48)}
    (root / "ranks").mkdir()
    spawn(WORLD, rank_worker, folder, sources, root / "ranks")
    pipe = AnimateRequests(WanAnimatePipeline.from_pretrained(folder))
    references = {}
    for case in CASES:
        references[case.name], references[case.name + ":skipped"] = generate(pipe, case, sources, None)
    return [torch.load(root / "ranks" / f"rank{rank}.pt") for rank in range(WORLD)], references


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_two_ranks_match_one_process(case: AnimateCase, runs: tuple[list[dict], dict]) -> None:
    assert case.tokens % 2 == (1 if case.name.endswith("27tok") else 0)  # the padded split and the even one
    assert_ranks_match(case.name, *runs)


def test_first_block_cache_skips_the_same_steps_as_one_process(runs: tuple[list[dict], dict]) -> None:
    assert_same_skips("first-block+ulysses2-27tok:skipped", *runs)


def test_hooks_are_removed(runs: tuple[list[dict], dict]) -> None:
    assert not any(results["hooks_left"] for results in runs[0])


@pytest.mark.parametrize("chunk", [14, 10, 9, 4, 1])
def test_a_face_block_on_chunks_gives_the_whole_clip_s_output(chunk):
    # 3 latent frames of 9 tokens: chunks that start and end inside frames, on frame borders, and past the end.
    torch.manual_seed(0)
    block, x, face = FaceBlock(24, 2), torch.randn(2, 27, 24), torch.randn(2, 3, 3, 24)
    padded = F.pad(x, (0, 0, 0, 30))  # (2, 57, 24): zeros after the clip, as a split pads
    parts = [block(padded[:, start : start + chunk], face, start, 9) for start in range(0, 30, chunk)]
    out = torch.cat(parts, dim=1)
    assert torch.allclose(out[:, :27], block(x, face), atol=1e-6)
    assert not out[:, 27:].any()  # padding tokens get nothing
