"""Shared pieces of the multi-process tests: spawning a gloo world, the cases, the reference runs.

Each spawned rank sets the torchrun environment variables and starts its group through
:func:`videox_fun.runtime.distributed.init_distributed`, exactly as under ``torchrun``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from helpers import max_diff, seeded_transformer

from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime.cache import FirstBlockCache, StepCache, TeaCache
from videox_fun.runtime.distributed import destroy_distributed, init_distributed
from videox_fun.runtime.parallel import (
    ParallelRuntime,
    SequenceParallel,
    build_groups,
    init_parallel,
    setup_parallel,
)
from videox_fun.serve.process import free_port

PROMPT = "a red circle moving right"
FRAMES = 9  # 3 latent frames
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Case:
    """One parallel layout run on one tiny model at one size."""

    name: str
    model: str  # "t2v" or "i2v" (InP with a CLIP branch, given a start image)
    height: int
    width: int
    ulysses: int = 1
    ring: int = 1
    cfg: bool = False
    fsdp: bool = False
    cache: str | None = None  # "first-block" or "teacache", attached after the parallel hooks as generate does
    steps: int = 2

    @property
    def tokens(self) -> int:
        """Video tokens: latent frames x (H/16) x (W/16)."""
        return ((FRAMES - 1) // 4 + 1) * (self.height // 16) * (self.width // 16)

    def args(self) -> argparse.Namespace:
        """The flags a script would parse for this layout."""
        return argparse.Namespace(
            ulysses_degree=self.ulysses,
            ring_degree=self.ring,
            cfg_parallel=self.cfg,
            fsdp_dit=self.fsdp,
            fsdp_text_encoder=self.fsdp,
            device="cpu",
        )


def _enter_world(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # the test machine has few cores for several ranks


def _rank_main(rank: int, world: int, port: int, target, args: tuple) -> None:
    _enter_world(rank, world, port)
    try:
        target(rank, *args)
    finally:
        destroy_distributed()


def spawn(world: int, target, *args) -> None:
    """Run ``target(rank, *args)`` on ``world`` gloo ranks (raises if any rank fails)."""
    mp.spawn(_rank_main, args=(world, free_port(), target, args), nprocs=world, join=True)


def attach_cache(pipe: WanPipeline, case: Case) -> StepCache | None:
    """The case's step cache, at thresholds loose enough that the tiny model skips steps."""
    if case.cache == "first-block":
        return FirstBlockCache(pipe.transformer, 0.5)
    if case.cache == "teacache":
        return TeaCache(pipe.transformer, [0.0, 0.0, 0.0, 1.0, 0.0], 0.5)  # the raw relative change
    return None


def generate(
    pipe: WanPipeline, case: Case, image: Path, runtime: ParallelRuntime | None = None
) -> tuple[torch.Tensor, int]:
    """``case.steps`` guided steps of the pipeline (with the case's cache); the final latents and steps skipped."""
    inputs = {"image": str(image), "mode": "i2v"} if case.model == "i2v" else {"mode": "t2v"}
    guidance = runtime.guidance(5.0) if runtime is not None else None
    cache = attach_cache(pipe, case)
    try:
        result = pipe(
            PROMPT,
            height=case.height,
            width=case.width,
            num_frames=FRAMES,
            num_inference_steps=case.steps,
            guidance_scale=5.0,
            seed=1,
            guidance=guidance,
            progress=False,
            **inputs,
        )
    finally:
        if cache is not None:
            cache.remove()
    return result.latents, cache.stats.skipped if cache is not None else 0


def pipeline_cases(cases: list[Case], folders: dict, image: Path) -> dict:
    """Run every case on this rank (hooks attached, then removed); the latents by case name."""
    pipes: dict[str, WanPipeline] = {}
    results = {}
    for case in cases:
        if case.fsdp:  # sharding is not removable: a fresh pipeline, loaded on the CPU
            pipe = WanPipeline.from_pretrained(folders[case.model])
        else:
            if case.model not in pipes:
                pipes[case.model] = WanPipeline.from_pretrained(folders[case.model])
            pipe = pipes[case.model]
        runtime = setup_parallel(case.args(), pipe)
        results[case.name], results[case.name + ":skipped"] = generate(pipe, case, image, runtime)
        if case.fsdp:
            block = pipe.transformer.blocks[0].self_attn.q.weight
            results[case.name + ":shard_rows"] = block.to_local().shape[0]
        runtime.remove_hooks()
    return results


def tiny_transformer(num_heads: int = 3) -> WanTransformer3DModel:
    """A t2v tiny transformer whose head count does not divide by 2 (head dim 12)."""
    return seeded_transformer(tiny_config("t2v", dim=12 * num_heads, num_heads=num_heads))


def transformer_inputs() -> dict:
    """27 video tokens (3 x 3 x 3, odd) with per-token timesteps and a short text context."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 3, 6, 6, generator=generator)
    t = torch.rand(1, 27, generator=generator) * 1000  # per-token timesteps (Wan2.2 TI2V style)
    context = torch.randn(1, 5, 32, generator=generator)
    return {"x": x, "t": t, "context": context}


def transformer_cases(layouts: list[tuple[int, int]]) -> dict:
    """Hooked forward of the 3-head transformer for each (ulysses, ring) layout, and after removing."""
    if not layouts:
        return {}
    model, inputs = tiny_transformer(), transformer_inputs()
    results = {}
    with torch.no_grad():
        for ulysses, ring in layouts:
            hook = SequenceParallel(build_groups(ulysses, ring)).attach(model)
            results[f"transformer-u{ulysses}r{ring}"] = model(**inputs)
            hook.remove()
        results["transformer-removed"] = model(**inputs)
    hooked_attention = any("attend" in block.self_attn.__dict__ for block in model.blocks)
    results["hooks_left"] = "run_blocks" in model.__dict__ or hooked_attention
    return results


def mismatch_message(layout: dict | None) -> dict:
    """The error this rank gets for a layout that does not fill the world."""
    if layout is None:
        return {}
    try:
        init_parallel(argparse.Namespace(device="cpu", **layout))
        return {"mismatch": "no error"}
    except ValueError as err:
        return {"mismatch": str(err)}


def rank_worker(rank: int, folders: dict, image: Path, cases: list[Case], extra: dict, out_dir: Path) -> None:
    """Everything one rank runs: the mismatch check first (before any group exists), then the cases."""
    results = mismatch_message(extra.get("mismatch"))
    init_distributed("cpu")
    results.update(pipeline_cases(cases, folders, image))
    results.update(transformer_cases(extra.get("transformer_layouts", [])))
    torch.save(results, out_dir / f"rank{rank}.pt")


def run_cases(
    world: int, cases: list[Case], root: Path, transformer_layouts: list[tuple[int, int]] = (), mismatch=None
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Tiny t2v and i2v (InP + CLIP) folders, everything on ``world`` ranks in one spawn, and the references.

    transformer_layouts: (ulysses, ring) layouts for the 3-head transformer with per-token timesteps;
    mismatch: a layout that does not fill the world. Returns each rank's results and the
    single-process results by the same names.
    """
    folders = {
        "t2v": build_tiny_model_folder(root / "t2v", "t2v"),
        "i2v": build_tiny_model_folder(root / "i2v", "inp", with_clip=True),
    }
    frame = np.random.default_rng(0).integers(0, 255, (1, 48, 48, 3), dtype=np.uint8)
    image = write_video(frame, root / "start.png")
    (root / "ranks").mkdir()
    extra = {"transformer_layouts": list(transformer_layouts), "mismatch": mismatch}
    spawn(world, rank_worker, folders, image, cases, extra, root / "ranks")
    pipes = {name: WanPipeline.from_pretrained(folder) for name, folder in folders.items()}
    references = {}
    for case in cases:
        references[case.name], references[case.name + ":skipped"] = generate(pipes[case.model], case, image)
    with torch.no_grad():
        references["transformer"] = tiny_transformer()(**transformer_inputs())
    return load_ranks(root / "ranks", world), references


def load_ranks(out_dir: Path, world: int) -> list[dict]:
    """The result dicts saved by each rank."""
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world)]


def assert_ranks_match(name: str, parallel_results: list[dict], references: dict) -> None:
    """Every rank's result ``name`` equals one process's within :data:`TOLERANCE` (each difference printed)."""
    for rank, results in enumerate(parallel_results):
        diff = max_diff(results[name], references[name])
        print(f"{name} rank {rank}: max |parallel - one process| = {diff:.2e}")
        assert diff <= TOLERANCE, f"{name} rank {rank}: max abs diff {diff:.2e}"


def assert_same_skips(name: str, parallel_results: list[dict], references: dict) -> None:
    """A step cache skipped (``name``: the count) some steps in one process, and as many on every rank."""
    assert references[name] > 0  # the threshold makes the cache act
    assert [results[name] for results in parallel_results] == [references[name]] * len(parallel_results)
