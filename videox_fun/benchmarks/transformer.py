"""Our Wan transformer vs diffusers' WanTransformer3DModel: same weights, same inputs, one process.

CPU: the mid-size config of issue 5 (dim 512, 8 layers, 8 heads, 1,280 video tokens) in fp32 and
bf16. GPU (when present): the Wan2.1-1.3B and 14B configs with random weights at 480x832x81
(32,760 tokens), bf16, one forward = one half of a CFG step.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from ..models.wan.keys import original_config_to_diffusers, original_to_diffusers_keys
from ..models.wan.transformer import WanTransformer3DModel
from ..models.wan.variants import PRESETS
from .common import built_in, compare_calls

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
MID_LATENTS = (1, 16, 5, 32, 32)  # 5 x 16 x 16 = 1,280 tokens
GPU_LATENTS = (1, 16, 21, 60, 104)  # 480 x 832 x 81 frames -> 21 x 30 x 52 = 32,760 tokens


def build_pair(config: dict, dtype: torch.dtype, device: str = "cpu") -> tuple[WanTransformer3DModel, DiffusersWan]:
    """Our model and diffusers' with identical (random) weights, in ``dtype`` on ``device``."""
    torch.manual_seed(0)
    with built_in(dtype, device):
        ours = WanTransformer3DModel.from_config(config).eval()
        theirs = DiffusersWan.from_config(original_config_to_diffusers(config)).eval()
    theirs.load_state_dict(original_to_diffusers_keys(ours.state_dict()))
    return ours.to(dtype), theirs.to(dtype)


def make_inputs(
    latent_shape: tuple[int, ...], text_dim: int, prompt_tokens: int, dtype: torch.dtype, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, timestep and a text context as the pipelines make it: a prompt zero-padded to 512 rows.

    Returns x ``latent_shape`` (B, C, F, H, W), t (1,) and context (1, 512, text_dim)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(latent_shape, generator=generator)
    context = torch.zeros(1, 512, text_dim)
    context[:, :prompt_tokens] = torch.randn(1, prompt_tokens, text_dim, generator=generator)
    return x.to(device, dtype), torch.tensor([500.0], device=device), context.to(device, dtype)


def compare(
    ours: WanTransformer3DModel,
    theirs: DiffusersWan,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    repeats: int,
) -> dict:
    """Time both on the same inputs; medians, minima, ratios (ours / diffusers) and the output difference."""
    x, t, context = inputs
    return compare_calls(lambda: ours(x, t, context), lambda: theirs(x, t, context, return_dict=False)[0], repeats)


def run(repeats: int = 7, prompt_tokens: int = 24) -> dict:
    """The CPU comparison, plus the GPU section when a GPU is present."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = build_pair(MID_CONFIG, dtype)
        entry = compare(ours, theirs, make_inputs(MID_LATENTS, MID_CONFIG["text_dim"], prompt_tokens, dtype), repeats)
        results[f"cpu_{str(dtype).removeprefix('torch.')}"] = entry
        print(
            f"cpu {dtype}: ours/diffusers wall median {entry['ratio_wall_s_median']:.3f}, "
            f"cpu-time median {entry['ratio_cpu_s_median']:.3f}, max abs diff {entry['max_abs_diff']:.2e}"
        )
    if torch.cuda.is_available():
        for name in ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B"):
            ours, theirs = build_pair(PRESETS[name], torch.bfloat16, "cuda")
            inputs = make_inputs(GPU_LATENTS, 4096, prompt_tokens, torch.bfloat16, "cuda")
            entry = compare(ours, theirs, inputs, max(2, repeats // 3))
            entry["s_per_cfg_step_ours"] = 2 * entry["ours"]["wall_s_median"]
            entry["s_per_cfg_step_diffusers"] = 2 * entry["diffusers"]["wall_s_median"]
            results[f"gpu_{name}"] = entry
            del ours, theirs
            torch.cuda.empty_cache()
    return {
        "benchmark": "wan transformer forward, ours vs diffusers, same weights and inputs",
        "mid_config": MID_CONFIG,
        "mid_latents": MID_LATENTS,
        "prompt_tokens": prompt_tokens,
        "results": results,
    }
