"""fp8 weight storage: bytes against bf16, and output PSNR against fp32, plain vs scaled."""

from __future__ import annotations

import copy

import torch

from ..metrics import psnr
from ..models.wan.transformer import WanTransformer3DModel
from ..models.wan.variants import PRESETS
from ..runtime.fp8 import quantize_to_fp8, weight_bytes
from .transformer import MID_CONFIG, MID_LATENTS, make_inputs

KINDS = {
    "plain": {"scaled": False},
    "scaled_per_tensor": {"scaled": True},
    "scaled_per_channel": {"scaled": True, "per_channel": True},
}


def released_bytes(preset: str = "Wan2.1-T2V-1.3B") -> dict:
    """Stored bytes of a released architecture (built on the meta device) in bf16 and each fp8 kind."""
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(PRESETS[preset]).to(torch.bfloat16)
        bf16 = weight_bytes(model)
        out = {"bf16_bytes": bf16}
        for kind, options in KINDS.items():
            quantized = quantize_to_fp8(copy.deepcopy(model), **options)
            out[f"{kind}_bytes"] = weight_bytes(quantized)
            out[f"{kind}_ratio_to_bf16"] = weight_bytes(quantized) / bf16
    return out


def accuracy(prompt_tokens: int = 24) -> dict:
    """PSNR of each fp8 kind's transformer output against the fp32 model, mid config, random weights."""
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(MID_CONFIG).eval()
    inputs = make_inputs(MID_LATENTS, MID_CONFIG["text_dim"], prompt_tokens, torch.float32)
    with torch.no_grad():
        reference = model(*inputs)
        out = {"fp32_bytes": weight_bytes(model)}
        for kind, options in KINDS.items():
            quantized = quantize_to_fp8(copy.deepcopy(model), **options)
            out[f"{kind}_psnr_db"] = psnr(quantized(*inputs), reference)
            out[f"{kind}_bytes"] = weight_bytes(quantized)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        out["bf16_psnr_db"] = psnr(
            bf16(*(i.to(torch.bfloat16) if i.is_floating_point() else i for i in inputs)), reference
        )
    return out


def run() -> dict:
    """Both parts, JSON-ready."""
    result = {"benchmark": "fp8 weight storage", "Wan2.1-T2V-1.3B": released_bytes(), "mid_config": accuracy()}
    sizes, acc = result["Wan2.1-T2V-1.3B"], result["mid_config"]
    print(
        f"1.3B bytes vs bf16: plain {sizes['plain_ratio_to_bf16']:.3f}, "
        f"scaled {sizes['scaled_per_channel_ratio_to_bf16']:.3f}; PSNR vs fp32: plain {acc['plain_psnr_db']:.1f} dB, "
        f"scaled per tensor {acc['scaled_per_tensor_psnr_db']:.1f} dB, "
        f"per channel {acc['scaled_per_channel_psnr_db']:.1f} dB, bf16 {acc['bf16_psnr_db']:.1f} dB"
    )
    return result
