"""fp8 weight storage: what is stored in fp8, bytes saved, plain vs scaled accuracy, fp8_scaled files."""

from __future__ import annotations

import torch
from helpers import seeded_transformer
from safetensors.torch import save_file

from videox_fun.metrics import psnr
from videox_fun.models.wan.transformer import WanTransformer3DModel, read_transformer_weights
from videox_fun.models.wan.variants import PRESETS, tiny_config
from videox_fun.runtime.fp8 import (
    FP8,
    Float8Linear,
    dequantize_fp8_state,
    load_state_with_fp8,
    quantize_to_fp8,
    weight_bytes,
)


def model_and_inputs(seed: int = 0):
    model = seeded_transformer(tiny_config("t2v", dim=256, ffn_dim=512, num_heads=4), seed)
    inputs = (torch.randn(1, 16, 2, 8, 8), torch.tensor([700.0]), torch.randn(1, 8, 32))
    return model, inputs


def test_only_block_linears_are_stored_in_fp8():
    model, _ = model_and_inputs()
    quantize_to_fp8(model)
    assert isinstance(model.blocks[0].self_attn.q, Float8Linear) and model.blocks[0].ffn[2].weight.dtype == FP8
    assert model.text_embedding[0].weight.dtype == torch.float32  # embeddings stay high precision
    assert model.blocks[0].modulation.dtype == torch.float32 and model.blocks[0].norm3.weight.dtype == torch.float32


def test_released_size_weight_bytes_are_about_half_of_bf16():
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(PRESETS["Wan2.1-T2V-1.3B"]).to(torch.bfloat16)
        bf16 = weight_bytes(model)
        quantize_to_fp8(model, scaled=True)
    assert weight_bytes(model) / bf16 <= 0.55


def test_scaled_fp8_is_closer_to_full_precision_than_plain():
    model, inputs = model_and_inputs()
    with torch.no_grad():
        reference = model(*inputs)
        plain_model, _ = model_and_inputs()
        scaled_model, _ = model_and_inputs()
        plain = quantize_to_fp8(plain_model)(*inputs)
        scaled = quantize_to_fp8(scaled_model, scaled=True, per_channel=True)(*inputs)
    assert psnr(scaled, reference) > psnr(plain, reference) > 15


def test_fp8_scaled_single_file_loads_like_comfyui_shares_it(tmp_path):
    model, inputs = model_and_inputs()
    quantize_to_fp8(model, scaled=True)
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["scaled_fp8"] = torch.zeros(2, dtype=FP8)  # the format marker ComfyUI writes
    save_file(state, str(tmp_path / "wan_fp8_scaled.safetensors"))
    with torch.device("meta"):
        loaded = WanTransformer3DModel.from_config(model.config)
    path = tmp_path / "wan_fp8_scaled.safetensors"
    load_state_with_fp8(loaded, read_transformer_weights(path), source=str(path))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*inputs), model(*inputs))
    # Widened for training: the full-precision model computes what the fp8 one does.
    widened, _ = model_and_inputs(seed=1)
    widened.load_state_dict(dequantize_fp8_state(read_transformer_weights(path)))
    with torch.no_grad():
        assert torch.allclose(widened(*inputs), model(*inputs), atol=1e-5)
