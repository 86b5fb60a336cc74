"""Helpers every benchmark uses: interleaved timing, PSNR, machine facts, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Run each function once per round, ``repeats`` rounds after one warm-up round.

    Interleaving makes load from other processes hit every contender alike; wall time and this
    process's CPU time are both kept (on a shared machine the CPU time is the steadier).
    """
    times = {name: {"wall_s": [], "cpu_s": []} for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                synchronize()
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                synchronize()
                times[name]["wall_s"].append(time.perf_counter() - wall)
                times[name]["cpu_s"].append(time.process_time() - cpu)
    return times


@contextmanager
def built_in(dtype: torch.dtype, device: str | torch.device = "cpu") -> Iterator[None]:
    """Modules created inside get their parameters in ``dtype`` on ``device`` from the start.

    A 14B model built in fp32 and cast afterwards needs 56 GB at once; built in bf16, 28 GB.
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def summarize(runs: dict[str, list[float]]) -> dict[str, float]:
    """Median and minimum of each kind of time."""
    out = {}
    for kind, values in runs.items():
        out[f"{kind}_median"] = statistics.median(values)
        out[f"{kind}_min"] = min(values)
    return out


def synchronize() -> None:
    """Wait for queued GPU work so timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(result: dict, path: Path | None) -> None:
    """Print a short line and write the full result as JSON when a path is given."""
    result = {**result, "machine": machine()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


def compare_calls(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], repeats: int) -> dict:
    """Time two calls of the same computation interleaved; medians, minima, ratios (ours / theirs) and the
    largest difference of their outputs."""
    with torch.no_grad():
        diff = (ours().float() - theirs().float()).abs().max()
    runs = time_interleaved({"ours": ours, "diffusers": theirs}, repeats)
    entry: dict = {"max_abs_diff": diff.item(), "runs": runs}
    stats = {name: summarize(r) for name, r in runs.items()}
    entry.update(stats)
    for key in stats["ours"]:
        entry[f"ratio_{key}"] = stats["ours"][key] / stats["diffusers"][key]
    return entry
