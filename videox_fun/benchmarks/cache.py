"""Step caching: speed-up against quality, a curve over thresholds, for TeaCache and first-block cache.

Each prompt runs uncached and then cached at every threshold with the same seed; the JSON has the
wall-time ratio, the share of block-stack evaluations, the PSNR of the decoded video against the
uncached one and, with the toy world's evaluator, the accuracy of both. ``--plot`` draws the curve.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import load_pipeline
from ..families import Pipeline
from ..io.video import write_video
from ..metrics import psnr
from ..runtime.cache import CALIBRATION_FILE, FirstBlockCache, StepCache, TeaCache, coefficients_for

TEACACHE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
# A cached video identical to the uncached one has infinite PSNR; it counts as this in the mean and
# the minimum, so one identical video does not make a figure infinite (nor the JSON non-standard).
IDENTICAL_PSNR_DB = 100.0
FIRST_BLOCK_THRESHOLDS = (0.02, 0.05, 0.1, 0.2)


def toy_prompts(count: int) -> list[str]:
    """Evenly spread toy-world captions over colour x shape x direction (seen and held-out)."""
    from ..toyworld.world import caption, combinations

    specs = combinations("all")
    picks = np.linspace(0, len(specs) - 1, count).round().astype(int)
    return [caption(specs[i]) for i in picks]


TIMES = ("wall_s", "sampling_s", "denoising_s")


def generate_one(
    pipe: Pipeline, prompt: str, seed: int, steps: int | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """One video with the model config's defaults (``steps``: another step count): its frames and three times.

    wall_s: the whole call. sampling_s: until the last denoising step ends (text encoding,
    conditioning and the loop; the VAE decode follows). denoising_s: from the first transformer
    call to the end of the last step, the loop alone, which is all a step cache can shorten.
    """
    marks: dict[str, float] = {}

    def first_call(*_) -> None:
        marks.setdefault("first_call", time.perf_counter())

    def step_done(*_) -> None:
        marks["last_step"] = time.perf_counter()

    handle = pipe.transformers[0].register_forward_pre_hook(first_call)  # the first expert runs the first step
    try:
        begin = time.perf_counter()
        out = pipe(prompt, seed=seed, progress=False, callback=step_done, num_inference_steps=steps)
        end = time.perf_counter()
    finally:
        handle.remove()
    times = {
        "wall_s": end - begin,
        "sampling_s": marks["last_step"] - begin,
        "denoising_s": marks["last_step"] - marks["first_call"],
    }
    return out.frames, times


def psnr_summary(quality: list[float]) -> dict:
    """Mean and minimum PSNR (dB) of cached videos against uncached ones, identical ones at IDENTICAL_PSNR_DB."""
    capped = np.minimum(quality, IDENTICAL_PSNR_DB)
    return {
        "psnr_db_mean": float(np.mean(capped)),
        "psnr_db_min": float(np.min(capped)),
        "identical_videos": int(np.isinf(quality).sum()),
    }


def whole_call_ceiling(uncached: dict[str, float]) -> float:
    """The whole call's speed-up if the denoising loop cost nothing (Amdahl's bound for any cache).

    Text encoding, the VAE decode and the video write are untouched by step caching, so no
    threshold can make the whole call faster than ``wall / (wall - loop)``.
    """
    return uncached["wall_s"] / (uncached["wall_s"] - uncached["denoising_s"])


def write_videos(folder: Path, prompts: list[str], videos: list, fps: int) -> None:
    """Each video (seed = index) with a sidecar naming its prompt, for the toy-world evaluator."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (prompt, frames) in enumerate(zip(prompts, videos, strict=True)):
        path = write_video(frames, folder / f"{seed:08d}.mp4", fps=fps)
        path.with_suffix(".json").write_text(json.dumps({"prompt": prompt, "seed": seed}))


def toy_accuracy(folder: Path) -> dict:
    """The toy-world evaluator's summary of a folder of generated videos."""
    from ..toyworld.evaluate import evaluate_folder

    report = evaluate_folder(folder, progress=False)
    return {split: report[split] for split in ("seen", "held_out", "all")}


Setting = tuple[str, float | None]  # (cache kind, threshold); ("uncached", None) is the reference


def run(
    model: str | None = None, prompts: int = 8, skip_start: int = 1, evaluate: bool = True, steps: int | None = None
) -> dict:
    """The curve for one model of any family (default: the built-in tiny InP model), at its default step count
    unless ``steps`` is given."""
    loaded = load_pipeline(model)
    pipe, folder = loaded.pipe, loaded.folder
    defaults = loaded.recognised.defaults
    texts = toy_prompts(prompts)
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    runs = sweep(pipe, folder, texts, skip_start, steps)
    base = runs[("uncached", None)]
    if evaluate:
        write_videos(work / "uncached", texts, base["videos"], defaults.fps)
    result = {
        "benchmark": "step caching: speed-up vs quality (settings interleaved per prompt)",
        "model": folder.name,
        "calibration": (folder / CALIBRATION_FILE).is_file(),
        "prompts": texts,
        "steps": steps or defaults.steps,
        "num_skip_start_steps": skip_start,
        "uncached": {
            **{name: base[name] for name in TIMES},
            "whole_call_ceiling": whole_call_ceiling(base),
            **({"toy": toy_accuracy(work / "uncached")} if evaluate else {}),
        },
        "curves": {"teacache": [], "first-block": []},
    }
    for (kind, threshold), cached in runs.items():
        if threshold is None:
            continue
        point = curve_point(threshold, cached, base)
        if evaluate:
            out_dir = work / f"{kind}-{threshold}"
            write_videos(out_dir, texts, cached["videos"], defaults.fps)
            point["toy"] = toy_accuracy(out_dir)
        result["curves"][kind].append(point)
        print(
            f"{kind} {threshold}: {point['evaluation_ratio']:.2f}x fewer block stacks, "
            f"{point['speedup']:.2f}x faster ({point['sampling_speedup']:.2f}x sampling, "
            f"{point['denoising_speedup']:.2f}x denoising loop), "
            f"PSNR {point['psnr_db_mean']:.1f} dB"
        )
    return result


def attach_caches(pipe: Pipeline, folder: Path, kind: str, threshold: float, skip_start: int) -> list[StepCache]:
    """One cache of ``kind`` on each transformer (each expert of a two-expert model skips by its own change)."""
    two_experts = len(pipe.transformers) > 1
    if kind == "teacache":
        return [
            TeaCache(
                t, coefficients_for(t, folder, two_experts=two_experts), threshold, num_skip_start_steps=skip_start
            )
            for t in pipe.transformers
        ]
    return [FirstBlockCache(t, threshold, num_skip_start_steps=skip_start) for t in pipe.transformers]


def sweep(
    pipe: Pipeline, folder: Path, texts: list[str], skip_start: int, steps: int | None = None
) -> dict[Setting, dict]:
    """Every prompt uncached and at every cache threshold: videos, summed times and block counts by setting.

    One untimed video first (one-time set-up), then every setting in turn for each prompt: load
    from other processes then hits all settings alike instead of whichever ran during a spike.
    """
    settings: list[Setting] = [("uncached", None)]
    settings += [("teacache", th) for th in TEACACHE_THRESHOLDS]
    settings += [("first-block", th) for th in FIRST_BLOCK_THRESHOLDS]
    runs = {key: {"videos": [], **dict.fromkeys(TIMES, 0.0), "computed": 0, "skipped": 0} for key in settings}
    pipe(texts[0], seed=0, progress=False, num_inference_steps=steps)
    for seed, prompt in enumerate(tqdm(texts, desc="cache bench (prompts x settings)")):
        for kind, threshold in settings:
            caches = attach_caches(pipe, folder, kind, threshold, skip_start) if threshold is not None else []
            frames, times = generate_one(pipe, prompt, seed, steps)
            record = runs[(kind, threshold)]
            record["videos"].append(frames)
            for name, seconds in times.items():
                record[name] += seconds
            for cache in caches:
                cache.remove()
                record["computed"] += cache.stats.computed
                record["skipped"] += cache.stats.skipped
    return runs


def curve_point(threshold: float, cached: dict, base: dict) -> dict:
    """One threshold's speed-ups (whole call, sampling, loop), block evaluations and PSNR against ``base``."""
    quality = [
        psnr(torch.as_tensor(v), torch.as_tensor(r), peak=255.0)
        for v, r in zip(cached["videos"], base["videos"], strict=True)
    ]
    return {
        "threshold": threshold,
        "wall_s": cached["wall_s"],
        "speedup": base["wall_s"] / cached["wall_s"],
        "sampling_s": cached["sampling_s"],
        "sampling_speedup": base["sampling_s"] / cached["sampling_s"],
        "denoising_s": cached["denoising_s"],
        "denoising_speedup": base["denoising_s"] / cached["denoising_s"],
        "block_evaluations": cached["computed"],
        "block_evaluations_skipped": cached["skipped"],
        "evaluation_ratio": (cached["computed"] + cached["skipped"]) / max(cached["computed"], 1),
        **psnr_summary(quality),
    }


def plot(result: dict, path: Path) -> None:
    """Speed-up (whole call, solid; denoising loop, dashed) against PSNR for each cache, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, points in result["curves"].items():
        psnrs = [p["psnr_db_mean"] for p in points]
        (line,) = ax.plot(psnrs, [p["speedup"] for p in points], "o-", label=f"{kind}, whole call")
        ax.plot(psnrs, [p["denoising_speedup"] for p in points], "s--", color=line.get_color(), label=f"{kind}, loop")
        for p in points:
            ax.annotate(str(p["threshold"]), (p["psnr_db_mean"], p["denoising_speedup"]), fontsize=7)
    ceiling = result["uncached"].get("whole_call_ceiling")
    if ceiling is not None:
        ax.axhline(ceiling, color="grey", linestyle=":", label="whole call if the loop cost 0")
    ax.set_xlabel(f"PSNR vs uncached video (dB; identical = {IDENTICAL_PSNR_DB:.0f})")
    ax.set_ylabel("wall-time speed-up")
    ax.set_title(f"step caching on {result['model']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
