"""Our pipeline vs diffusers' WanPipeline end to end: same weights, same noise, same sampler.

CPU: a folder of the real components with the mid-size transformer of issue 5 (dim 512, 8 layers),
a tiny UMT5 and a tiny VAE, at 256x256x17 (1,280 video tokens per pass), timed end to end.
GPU: the Wan2.1-1.3B transformer config (random weights, bf16) at 480x832x81 (32,760 tokens),
seconds per denoising step of each pipeline read from its step callback, and peak memory.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel as DiffusersWan

from ..models.wan.keys import original_config_to_diffusers, original_to_diffusers_keys
from ..models.wan.tiny import TINY_TEXT_DIM, build_tiny_model_folder
from ..models.wan.transformer import WanTransformer3DModel
from ..models.wan.variants import PRESETS
from ..pipelines.guidance import ClassifierFreeGuidance
from ..pipelines.schedulers import make_scheduler
from ..pipelines.wan import WanPipeline
from .common import built_in, summarize, synchronize, time_interleaved
from .transformer import MID_CONFIG

SETTINGS = {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 4, "guidance_scale": 5.0}
GPU_SETTINGS = {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 5, "guidance_scale": 5.0}
PROMPT = "a red circle moving right"


def bench_folder(folder: Path, transformer_config: dict, dtype: torch.dtype = torch.float32) -> Path:
    """A model folder with the given transformer (random weights, in ``dtype``) and tiny encoders.

    The text encoder is a tiny UMT5, so ``text_dim`` becomes its width; the text is padded to 512
    rows as diffusers pads it, so the cross-attention costs what it costs with UMT5-XXL.
    """
    build_tiny_model_folder(folder, "t2v")
    torch.manual_seed(0)
    with built_in(dtype):
        transformer = WanTransformer3DModel.from_config({**transformer_config, "text_dim": TINY_TEXT_DIM})
    transformer.save_original(folder)
    return folder


def mid_folder(folder: Path) -> Path:
    """A model folder with the mid-size transformer (text_len 512, as diffusers pads) and tiny encoders."""
    return bench_folder(folder, MID_CONFIG)


def wan_1_3b_folder(folder: Path) -> Path:
    """A model folder with the Wan2.1-T2V-1.3B transformer config (random bf16 weights) and tiny encoders."""
    return bench_folder(folder, PRESETS["Wan2.1-T2V-1.3B"], torch.bfloat16)


def diffusers_twin(ours: WanPipeline) -> DiffusersWanPipeline:
    """diffusers' pipeline holding our pipeline's weights (on the same device, in the same dtype)."""
    config = original_config_to_diffusers(dict(ours.transformer.config))
    reference = next(ours.transformer.parameters())
    with built_in(reference.dtype, reference.device):
        transformer = DiffusersWan.from_config(config).eval()
    transformer.load_state_dict(original_to_diffusers_keys(ours.transformer.state_dict()))
    return DiffusersWanPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", 3.0),
        transformer=transformer,
    )


def run(repeats: int = 3) -> dict:
    """On a GPU the 1.3B per-step comparison; else both pipelines end to end on the mid config."""
    if torch.cuda.is_available():
        return per_step_comparison(repeats)
    return run_cpu(repeats)


def run_cpu(repeats: int = 3) -> dict:
    """Time both pipelines (ours batched and sequential CFG) and compare their latents."""
    folder = mid_folder(Path(tempfile.mkdtemp(prefix="pipe-bench-")) / "mid")
    ours = WanPipeline.from_pretrained(folder)
    theirs = diffusers_twin(ours)
    theirs.set_progress_bar_config(disable=True)

    def run_ours(batched: bool) -> torch.Tensor:
        guidance = ClassifierFreeGuidance(SETTINGS["guidance_scale"], batched=batched)
        return ours(PROMPT, seed=0, sampler="Flow", shift=3.0, guidance=guidance, progress=False, **SETTINGS).latents

    def run_theirs(output_type: str = "np"):
        generator = torch.Generator("cpu").manual_seed(0)
        return theirs(PROMPT, generator=generator, output_type=output_type, **SETTINGS).frames

    # Same latents; then both timed end to end, decoding included (ours returns frames).
    diff = (run_ours(True) - run_theirs("latent")).abs().max().item()
    runs = time_interleaved(
        {
            "ours_batched_cfg": lambda: run_ours(True),
            "ours_sequential_cfg": lambda: run_ours(False),
            "diffusers": run_theirs,
        },
        repeats,
    )
    stats = {name: summarize(r) for name, r in runs.items()}
    result = {
        "benchmark": "wan pipeline end to end, ours vs diffusers WanPipeline",
        "settings": SETTINGS,
        "transformer": MID_CONFIG,
        "latents_max_abs_diff": diff,
        **stats,
        "runs": runs,
    }
    for name in ("ours_batched_cfg", "ours_sequential_cfg"):
        result[f"ratio_{name}_wall_median"] = stats[name]["wall_s_median"] / stats["diffusers"]["wall_s_median"]
        result[f"ratio_{name}_cpu_median"] = stats[name]["cpu_s_median"] / stats["diffusers"]["cpu_s_median"]
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k.endswith("diff")}, indent=1))
    return result


def step_seconds(generate: Callable[[Callable[[], None]], object]) -> list[float]:
    """Seconds between consecutive step callbacks of one generation (the first step's warm-up excluded).

    ``generate(mark)`` runs one generation calling ``mark()`` at each step.
    """
    stamps: list[float] = []

    def mark() -> None:
        synchronize()
        stamps.append(time.perf_counter())

    generate(mark)
    return [later - earlier for earlier, later in itertools.pairwise(stamps)]


def per_step_comparison(
    repeats: int = 2,
    device: str | torch.device = "cuda",
    transformer_config: dict | None = None,
    settings: dict | None = None,
) -> dict:
    """Seconds per denoising step (cond + uncond) and peak memory, ours vs diffusers.

    Defaults: the Wan2.1-1.3B config at 480x832x81 in bf16 (the GPU section of issue 5); a smaller
    config, settings and the CPU let the same code run in the tests.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    transformer_config = transformer_config or PRESETS["Wan2.1-T2V-1.3B"]
    settings = settings or GPU_SETTINGS
    workdir = Path(tempfile.mkdtemp(prefix="pipe-bench-steps-"))
    try:
        folder = bench_folder(workdir / "model", transformer_config, dtype)
        ours = WanPipeline.from_pretrained(folder, device=device, dtype=dtype)
        theirs = diffusers_twin(ours)
        theirs.set_progress_bar_config(disable=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def run_ours(batched: bool):
        guidance = ClassifierFreeGuidance(settings["guidance_scale"], batched=batched)
        return lambda mark: ours(
            PROMPT,
            seed=0,
            sampler="Flow",
            shift=3.0,
            guidance=guidance,
            progress=False,
            callback=lambda *_: mark(),
            **settings,
        )

    def run_theirs(mark):
        def on_step_end(pipe, step, timestep, kwargs):
            mark()
            return {}

        generator = torch.Generator("cpu").manual_seed(0)
        return theirs(PROMPT, generator=generator, output_type="latent", callback_on_step_end=on_step_end, **settings)

    contenders = {"ours_batched_cfg": run_ours(True), "ours_sequential_cfg": run_ours(False), "diffusers": run_theirs}
    steps: dict[str, list[float]] = {name: [] for name in contenders}
    peaks: dict[str, int] = {}
    with torch.no_grad():
        for _ in range(repeats):  # interleaved rounds; the first step of each run is left out
            for name, generate in contenders.items():
                if on_gpu:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                steps[name].extend(step_seconds(generate))
                if on_gpu:
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    result = {
        "benchmark": f"wan pipeline s/step, ours vs diffusers WanPipeline, {dtype}",
        "settings": settings,
        "transformer": {**transformer_config, "text_dim": TINY_TEXT_DIM},
        "step_s": steps,
        "peak_gpu_bytes": peaks,
    }
    for name in contenders:
        result[f"s_per_step_{name}"] = statistics.median(steps[name])
    for name in ("ours_batched_cfg", "ours_sequential_cfg"):
        result[f"ratio_{name}"] = result[f"s_per_step_{name}"] / result["s_per_step_diffusers"]
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("s_per", "ratio", "peak"))}, indent=1))
    return result
