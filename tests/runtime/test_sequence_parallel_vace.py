"""Sequence parallelism on Wan VACE: the VACE context is split across the ranks like the video tokens.

The tiny VACE pipeline (a control video, with and without a subject image in front) runs two guided steps on 2
gloo ranks under Ulysses 2, Ring 2 and CFG parallelism; every rank's latents must equal one process's within 1e-5
(fp32), for token counts that do and do not divide by 2. The first-block cache, which runs the stack in two
slices, reuses the split hints of the first slice.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from parallel_harness import assert_ranks_match, assert_same_skips, spawn

from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime.cache import FirstBlockCache
from videox_fun.runtime.distributed import init_distributed
from videox_fun.runtime.parallel import ParallelRuntime, setup_parallel

WORLD = 2
PROMPT = "a red circle moving right"


@dataclass(frozen=True)
class VaceCase:
    """One layout on the tiny VACE model at one size, with or without a subject image (one more latent frame)."""

    name: str
    height: int
    width: int
    frames: int
    reference: bool = False
    ulysses: int = 1
    ring: int = 1
    cfg: bool = False
    first_block_cache: bool = False
    steps: int = 2

    @property
    def tokens(self) -> int:
        """Video tokens: (reference +) latent frames x (H/16) x (W/16)."""
        latent_frames = (self.frames - 1) // 4 + 1 + int(self.reference)
        return latent_frames * (self.height // 16) * (self.width // 16)

    def args(self) -> argparse.Namespace:
        """The parallel flags a script would parse for this layout."""
        return argparse.Namespace(
            ulysses_degree=self.ulysses, ring_degree=self.ring, cfg_parallel=self.cfg, device="cpu"
        )


CASES = [
    VaceCase("ulysses2-18tok", 32, 48, 9, ulysses=2),
    VaceCase("ulysses2-27tok", 48, 48, 9, ulysses=2),
    VaceCase("ulysses2-ref-27tok", 48, 48, 5, reference=True, ulysses=2),
    VaceCase("ring2-18tok", 32, 48, 9, ring=2),
    VaceCase("ring2-27tok", 48, 48, 9, ring=2),
    VaceCase("ring2-ref-36tok", 48, 48, 9, reference=True, ring=2),
    VaceCase("cfg2-ref-27tok", 48, 48, 5, reference=True, cfg=True),
    VaceCase("first-block+ulysses2-27tok", 48, 48, 9, ulysses=2, first_block_cache=True, steps=6),
]


def media(root: Path) -> dict[str, Path]:
    """A control video (9 frames, 48 x 48; cut and resized per case) and a subject image of another size."""
    rng = np.random.default_rng(0)
    return {
        "control_video": write_video(rng.integers(0, 256, (9, 48, 48, 3), dtype=np.uint8), root / "control.mp4"),
        "ref_image": write_video(rng.integers(0, 256, (1, 40, 24, 3), dtype=np.uint8), root / "subject.png"),
    }


def generate(
    pipe: WanPipeline, case: VaceCase, files: dict, runtime: ParallelRuntime | None
) -> tuple[torch.Tensor, int]:
    """The case's guided steps (with the first-block cache when asked): final latents and the steps it skipped."""
    cache = FirstBlockCache(pipe.transformer, 0.5) if case.first_block_cache else None
    inputs = {"control_video": str(files["control_video"])}
    if case.reference:
        inputs["ref_image"] = str(files["ref_image"])
    try:
        result = pipe(
            PROMPT,
            mode="vace",
            height=case.height,
            width=case.width,
            num_frames=case.frames,
            num_inference_steps=case.steps,
            guidance_scale=5.0,
            seed=1,
            guidance=runtime.guidance(5.0) if runtime is not None else None,
            progress=False,
            **inputs,
        )
    finally:
        if cache is not None:
            cache.remove()
    return result.latents, cache.stats.skipped if cache is not None else 0


def rank_worker(rank: int, folder: Path, files: dict, out_dir: Path) -> None:
    """Every case on this rank, the hooks attached and removed around each; the results saved for the test."""
    init_distributed("cpu")
    pipe = WanPipeline.from_pretrained(folder)
    results = {}
    for case in CASES:
        runtime = setup_parallel(case.args(), pipe)
        results[case.name], results[case.name + ":skipped"] = generate(pipe, case, files, runtime)
        runtime.remove_hooks()
    results["hooks_left"] = "run_blocks" in pipe.transformer.__dict__
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """Each rank's results (one spawn for every case) and one process's, by case name."""
    root = tmp_path_factory.mktemp("sp_vace")
    folder = build_tiny_model_folder(root / "vace", "vace")
    files = media(root)
    (root / "ranks").mkdir()
    spawn(WORLD, rank_worker, folder, files, root / "ranks")
    pipe = WanPipeline.from_pretrained(folder)
    references = {}
    for case in CASES:
        references[case.name], references[case.name + ":skipped"] = generate(pipe, case, files, None)
    return [torch.load(root / "ranks" / f"rank{rank}.pt") for rank in range(WORLD)], references


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_two_ranks_match_one_process(case: VaceCase, runs: tuple[list[dict], dict]) -> None:
    expected_parity = 0 if case.name.endswith(("18tok", "36tok")) else 1
    assert case.tokens % 2 == expected_parity  # both the even split and the padded one
    assert_ranks_match(case.name, *runs)


def test_first_block_cache_skips_the_same_steps_as_one_process(runs: tuple[list[dict], dict]) -> None:
    assert_same_skips("first-block+ulysses2-27tok:skipped", *runs)


def test_hooks_are_removed(runs: tuple[list[dict], dict]) -> None:
    assert not any(results["hooks_left"] for results in runs[0])
