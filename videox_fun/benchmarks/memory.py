"""Peak memory and time of each memory mode on one pipeline (accelerator memory needs a GPU)."""

from __future__ import annotations

import time

import torch

from ..pipelines.wan import WanPipeline
from ..registry import resolve_model
from ..runtime.offload import MEMORY_MODES, apply_memory_mode


def run(model: str | None = None, steps: int = 4) -> dict:
    """Every mode on the same prompt and seed: peak GPU memory (when present), wall time, weight moves."""
    folder = resolve_model(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results, reference = {}, None
    for mode in MEMORY_MODES:
        pipe = WanPipeline.from_pretrained(folder, device="cpu", dtype=dtype)
        log = apply_memory_mode(pipe, mode, device, resident_blocks=1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        latents = pipe("a red circle moving right", num_inference_steps=steps, seed=0, progress=False).latents
        entry = {
            "wall_s": time.perf_counter() - started,
            "onloads": log.onloads,
            "offloads": log.offloads,
            "prefetches": log.prefetches,
        }
        if device.type == "cuda":
            entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        reference = latents if reference is None else reference
        entry["max_abs_diff_vs_full_load"] = (latents - reference).abs().max().item()
        results[mode] = entry
        print(f"{mode}: {entry}")
        del pipe
    note = None if device.type == "cuda" else "no GPU here: accelerator memory not measured, modes run on the CPU"
    return {"benchmark": "memory modes", "model": folder.name, "device": str(device), "note": note, "modes": results}
