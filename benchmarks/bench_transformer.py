"""Our Wan transformer vs diffusers' WanTransformer3DModel: same weights, same inputs, one process.

The two models run interleaved (ours, theirs, ours, ...) so that load from other processes hits
both alike; the JSON reports the median and the minimum of each and their ratios.

    python benchmarks/bench_transformer.py --out benchmarks/results/transformer_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from videox_fun.models.wan.keys import original_config_to_diffusers, original_to_diffusers_keys
from videox_fun.models.wan.transformer import WanTransformer3DModel

# The mid-size config of issue 5: dim 512, 8 layers, 8 heads; 1,280 video tokens (5 x 16 x 16).
MID_CONFIG = {
    "model_type": "t2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 16,
    "dim": 512,
    "ffn_dim": 2048,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 8,
    "num_layers": 8,
}
LATENT_SHAPE = (1, 16, 5, 32, 32)


def build_pair(config: dict, dtype: torch.dtype) -> tuple[WanTransformer3DModel, DiffusersWan]:
    """Our model and diffusers' with identical weights, in ``dtype``."""
    torch.manual_seed(0)
    ours = WanTransformer3DModel.from_config(config).eval()
    theirs = DiffusersWan.from_config(original_config_to_diffusers(config)).eval()
    theirs.load_state_dict(original_to_diffusers_keys(ours.state_dict()))
    return ours.to(dtype), theirs.to(dtype)


def make_inputs(prompt_tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, timestep and a text context as the pipelines make it: a prompt zero-padded to 512 rows."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(LATENT_SHAPE, generator=generator).to(dtype)
    context = torch.zeros(1, 512, MID_CONFIG["text_dim"])
    context[:, :prompt_tokens] = torch.randn(1, prompt_tokens, MID_CONFIG["text_dim"], generator=generator)
    return x, torch.tensor([500.0]), context.to(dtype)


def time_interleaved(fns: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Run each function once per round, ``repeats`` rounds after one warm-up round.

    Wall time and this process's CPU time are both kept: on a shared machine the CPU time is
    the steadier of the two.
    """
    times = {name: {"wall_s": [], "cpu_s": []} for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                times[name]["wall_s"].append(time.perf_counter() - wall)
                times[name]["cpu_s"].append(time.process_time() - cpu)
    return times


def compare(ours: WanTransformer3DModel, theirs: DiffusersWan, inputs: tuple, repeats: int) -> dict:
    """Time both models on the same inputs; medians, minima and ratios (ours / diffusers)."""
    x, t, context = inputs
    with torch.no_grad():
        diff = (ours(x, t, context).float() - theirs(x, t, context, return_dict=False)[0].float()).abs().max()
    times = time_interleaved(
        {"ours": lambda: ours(x, t, context), "diffusers": lambda: theirs(x, t, context, return_dict=False)},
        repeats,
    )
    entry: dict = {"max_abs_diff": diff.item()}
    for name, kinds in times.items():
        entry[name] = {
            f"{kind}_{stat.__name__}": stat(v) for kind, v in kinds.items() for stat in (statistics.median, min)
        }
        entry[name]["runs"] = kinds
    for key in ("wall_s_median", "wall_s_min", "cpu_s_median", "cpu_s_min"):
        entry[f"ratio_{key.removesuffix('_s_median').removesuffix('_s_min')}_{key.rsplit('_', 1)[1]}"] = (
            entry["ours"][key] / entry["diffusers"][key]
        )
    return entry


def run(repeats: int, prompt_tokens: int) -> dict:
    """Both dtypes; returns the JSON-ready result."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = build_pair(MID_CONFIG, dtype)
        entry = compare(ours, theirs, make_inputs(prompt_tokens, dtype), repeats)
        results[str(dtype).removeprefix("torch.")] = entry
        ratios = ", ".join(f"{k.removeprefix('ratio_')} {v:.3f}" for k, v in entry.items() if k.startswith("ratio_"))
        print(f"{dtype}: ours/diffusers {ratios}; max abs diff {entry['max_abs_diff']:.2e}")
    return {
        "benchmark": "wan transformer forward, ours vs diffusers, same weights and inputs",
        "config": MID_CONFIG,
        "latent_shape": LATENT_SHAPE,
        "video_tokens": 1280,
        "prompt_tokens": prompt_tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per model (default 7)")
    parser.add_argument("--prompt-tokens", type=int, default=24, help="real prompt tokens before padding")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args()
    result = run(args.repeats, args.prompt_tokens)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
