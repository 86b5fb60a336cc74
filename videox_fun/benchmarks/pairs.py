"""One forward of our model against diffusers' class on the same weights and inputs, as a case of a benchmark.

The image-family (:mod:`.images`) and Wan-stream (:mod:`.streams`) benchmarks build many such pairs, each a few
GB at released widths on a GPU: a case is built, measured and let go before the next is built, and a case that
fails (out of memory, a diffusers change) is recorded with its error while the others still run.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .common import compare_calls, synchronize


@dataclass
class Pair:
    """Our model and diffusers' holding the same weights, and one forward of each on the same inputs.

    Each call returns the output as one tensor (whatever the class's own return type), so the two can be
    subtracted; ``facts`` says what was built (config, blocks kept, token counts) for the JSON.
    """

    ours: nn.Module
    theirs: nn.Module
    ours_call: Callable[[], torch.Tensor]
    theirs_call: Callable[[], torch.Tensor]
    facts: dict[str, Any] = field(default_factory=dict)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def parameter_count(model: nn.Module) -> int:
    """How many parameters a model has."""
    return sum(p.numel() for p in model.parameters())


def single_call(call: Callable[[], torch.Tensor]) -> dict[str, float | int]:
    """One more call, alone: the largest output magnitude (beside the difference it says whether the compared
    output carries anything) and, on a GPU, its peak memory: the absolute peak (both models' weights are
    resident) and what the call added over what was allocated before it (activations and workspace)."""
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if on_gpu else 0
    with torch.no_grad():
        output = call()
    entry: dict[str, float | int] = {"output_abs_max": output.float().abs().max().item()}
    if on_gpu:
        synchronize()
        peak = torch.cuda.max_memory_allocated()
        entry.update(peak_bytes=peak, peak_over_weights_bytes=peak - before)
    return entry


def measure(pair: Pair, repeats: int) -> dict[str, Any]:
    """Times (interleaved medians and minima), ratios ours / diffusers, the largest output difference, each
    call's output magnitude and peak memory, and the parameter count, with the pair's facts."""
    entry = {**pair.facts, "parameters": parameter_count(pair.ours)}
    entry.update(compare_calls(pair.ours_call, pair.theirs_call, repeats))
    entry["single_call"] = {"ours": single_call(pair.ours_call), "diffusers": single_call(pair.theirs_call)}
    return entry


def run_cases(
    cases: Mapping[str, Callable[[], Pair]], repeats: int | Callable[[str], int]
) -> tuple[dict[str, Any], list[str]]:
    """Build and measure each case in turn, letting each go before the next is built.

    ``repeats`` is a count, or a function of the case name (GPU cases at released widths take fewer). Returns
    the entries by case name (a failed case's entry holds its ``error``) and the names of the failed cases.
    """
    results: dict[str, Any] = {}
    failed: list[str] = []
    for name, build in cases.items():
        count = repeats(name) if callable(repeats) else repeats
        pair = None
        try:
            pair = build()
            results[name] = measure(pair, count)
        except Exception as err:  # one case's failure (out of memory...) must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            failed.append(name)
        finally:
            pair = None  # its models go before the next case is built
            release_memory()
        print(summary_line(name, results[name]))
    return results, failed


def summary_line(name: str, entry: Mapping[str, Any]) -> str:
    """One printed line per case: the wall-time ratio, the difference and (GPU) the peaks, or the error."""
    if "error" in entry:
        return f"{name}: FAILED {entry['error']}"
    line = (
        f"{name}: ours/diffusers wall median {entry['ratio_wall_s_median']:.3f} "
        f"({entry['ours']['wall_s_median'] * 1e3:.1f} ms vs {entry['diffusers']['wall_s_median'] * 1e3:.1f} ms), "
        f"max abs diff {entry['max_abs_diff']:.2e}"
    )
    ours, theirs = entry["single_call"]["ours"], entry["single_call"]["diffusers"]
    line += f" (|output| <= {ours['output_abs_max']:.3g})"
    if "peak_bytes" in ours:
        line += f", peak GiB {ours['peak_bytes'] / 2**30:.2f} vs {theirs['peak_bytes'] / 2**30:.2f}"
    return line


def release_memory() -> None:
    """Free what the last case held (its models are unreachable once its pair is dropped)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
