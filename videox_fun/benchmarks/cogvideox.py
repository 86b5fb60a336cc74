"""Our CogVideoX transformer vs diffusers' CogVideoXTransformer3DModel: same weights, same inputs, one process.

Ours is diffusers' class with its attention routed through the package's dispatch (SDPA by default;
flash-attn / SageAttention with ``--attention``), so the ratio measures what that routing costs or
gains. CPU: a small config (4 layers, 8 heads of 64, 390 video + 226 text tokens). GPU (when
present): the CogVideoX-5b config with random weights at 480x720x49 (17,550 video tokens), bf16,
one forward = one half of a CFG step.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel

from ..models.attention import attention_backend
from ..models.cogvideox.transformer import CogVideoXTransformer
from ..models.cogvideox.variants import PRESETS
from ..pipelines.cogvideox import rotary_tables
from .common import built_in, compare_calls

SMALL_CONFIG = {**PRESETS["CogVideoX-5b"], "num_layers": 4, "num_attention_heads": 8, "sample_height": 60}
SMALL_LATENTS = (1, 5, 16, 12, 26)  # (B, F', C, h, w): 5 x 6 x 13 = 390 video tokens
GPU_LATENTS = (1, 13, 16, 60, 90)  # 480 x 720 x 49 frames -> 13 x 30 x 45 = 17,550 video tokens
TEXT_TOKENS = 226


def build_pair(config: dict, dtype: torch.dtype, device: str = "cpu") -> tuple[CogVideoXTransformer, Any]:
    """Our model and diffusers' with identical (random) weights, in ``dtype`` on ``device``."""
    torch.manual_seed(0)
    with built_in(dtype, device):
        ours = CogVideoXTransformer.from_model_config(config).eval()
        theirs = CogVideoXTransformer3DModel.from_config(ours.config).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours.to(dtype), theirs.to(dtype)


def make_inputs(model: CogVideoXTransformer, latent_shape: tuple[int, ...], dtype: torch.dtype, device: str) -> dict:
    """Latents (B, F', C, h, w), a timestep, a text context and the RoPE tables the pipeline would pass."""
    generator = torch.Generator().manual_seed(1)
    config = model.config
    inputs: dict = {
        "hidden_states": torch.randn(latent_shape, generator=generator).to(device, dtype),
        "encoder_hidden_states": torch.randn(1, TEXT_TOKENS, config.text_embed_dim, generator=generator).to(
            device, dtype
        ),
        "timestep": torch.tensor([500], device=device),
        "return_dict": False,
    }
    tables = rotary_tables(config, latent_shape[3:], latent_shape[1], device)
    if tables is not None:
        inputs["image_rotary_emb"] = tuple(part.to(device, dtype) for part in tables)
    return inputs


def compare(ours: CogVideoXTransformer, theirs: Any, inputs: dict, repeats: int, backend: str = "sdpa") -> dict:
    """Both forwards on the same inputs, ours through the attention ``backend``."""

    def ours_call() -> torch.Tensor:
        with attention_backend(backend):
            return ours(**inputs)[0]

    return compare_calls(ours_call, lambda: theirs(**inputs)[0], repeats)


def run(repeats: int = 5) -> dict:
    """The CPU comparison, plus the GPU section (every installed attention backend) when a GPU is present."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = build_pair(SMALL_CONFIG, dtype)
        entry = compare(ours, theirs, make_inputs(ours, SMALL_LATENTS, dtype, "cpu"), repeats)
        results[f"cpu_{str(dtype).removeprefix('torch.')}"] = entry
        print(
            f"cpu {dtype}: ours/diffusers wall median {entry['ratio_wall_s_median']:.3f}, "
            f"max abs diff {entry['max_abs_diff']:.2e}"
        )
    if torch.cuda.is_available():
        from ..models.attention import available_backends

        ours, theirs = build_pair(PRESETS["CogVideoX-5b"], torch.bfloat16, "cuda")
        inputs = make_inputs(ours, GPU_LATENTS, torch.bfloat16, "cuda")
        for backend in available_backends():
            entry = compare(ours, theirs, inputs, max(2, repeats // 2), backend)
            entry["s_per_cfg_step_ours"] = 2 * entry["ours"]["wall_s_median"]
            entry["s_per_cfg_step_diffusers"] = 2 * entry["diffusers"]["wall_s_median"]
            results[f"gpu_CogVideoX-5b_{backend}"] = entry
    return {
        "benchmark": "cogvideox transformer forward, ours vs diffusers, same weights and inputs",
        "small_config": SMALL_CONFIG,
        "small_latents": SMALL_LATENTS,
        "gpu_latents": GPU_LATENTS,
        "results": results,
    }
