"""Peak memory and time of each memory mode on one pipeline (accelerator memory needs a GPU).

On a GPU the default model is the Wan2.1-1.3B transformer config (random bf16 weights, tiny
encoders) at 480x832x81, where the modes differ in what they hold; on the CPU it is the packaged
tiny model at its own size, where the modes are checked for identical output.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..pipelines.wan import WanPipeline
from ..registry import resolve_model
from ..runtime.offload import MEMORY_MODES, apply_memory_mode
from .pipeline import GPU_SETTINGS, wan_1_3b_folder


def run(model: str | None = None, steps: int = 2) -> dict:
    """Every mode on the same prompt and seed: peak GPU memory (when present), wall time, weight moves."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workdir = None
    if model is None and device.type == "cuda":
        workdir = Path(tempfile.mkdtemp(prefix="memory-bench-"))
        folder = wan_1_3b_folder(workdir / "wan-1.3b")
        size = {key: GPU_SETTINGS[key] for key in ("height", "width", "num_frames")}
    else:
        folder, size = resolve_model(model), {}
    try:
        result = _run_modes(folder, device, steps, size)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    result["settings"] = {"steps": steps, **size}
    return result


def _run_modes(folder: Path, device: torch.device, steps: int, size: dict) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results, reference = {}, None
    for mode in MEMORY_MODES:
        pipe = WanPipeline.from_pretrained(folder, device="cpu", dtype=dtype)
        log = apply_memory_mode(pipe, mode, device, resident_blocks=1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        latents = pipe("a red circle moving right", num_inference_steps=steps, seed=0, progress=False, **size).latents
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
