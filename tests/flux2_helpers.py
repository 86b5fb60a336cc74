"""FLUX.2 test helpers, importable as ``flux2_helpers`` (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import torch

# diffusers' names -> BFL's, the inverse of the renames in diffusers' convert_flux2_transformer_checkpoint_to_diffusers
# (written from its tables). Whole-model keys first, then within a double / single block.
TOP = {"x_embedder.": "img_in.", "context_embedder.": "txt_in.", "proj_out.": "final_layer.linear.",
       "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
       "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
       "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
       "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
       "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
       "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
       "single_stream_modulation.linear.": "single_stream_modulation.lin."}  # fmt: skip
DOUBLE = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
          "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
          "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale", "attn.to_out.0.weight": "img_attn.proj.weight",
          "attn.to_add_out.weight": "txt_attn.proj.weight", "ff.linear_in.weight": "img_mlp.0.weight",
          "ff.linear_out.weight": "img_mlp.2.weight", "ff_context.linear_in.weight": "txt_mlp.0.weight",
          "ff_context.linear_out.weight": "txt_mlp.2.weight"}  # fmt: skip
SINGLE = {"attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
          "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}  # fmt: skip
FUSED = {"attn.to_q.weight": "img_attn.qkv.weight", "attn.add_q_proj.weight": "txt_attn.qkv.weight"}


def _block_key(key: str, out: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    _, index, rest = key.split(".", 2)
    if key.startswith("single_transformer_blocks."):
        out[f"single_blocks.{index}.{SINGLE[rest]}"] = state[key]
    elif rest in FUSED:  # q with its k and v, stacked as BFL's fused qkv
        names = [rest, rest.replace("_q", "_k"), rest.replace("_q", "_v")]
        out[f"double_blocks.{index}.{FUSED[rest]}"] = torch.cat(
            [state[f"transformer_blocks.{index}.{n}"] for n in names]
        )
    elif rest in DOUBLE:
        out[f"double_blocks.{index}.{DOUBLE[rest]}"] = state[key]


def diffusers_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-named FLUX.2 state dict in BFL's layout (``flux2-dev.safetensors``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            _block_key(key, out, state)
        elif key == "norm_out.linear.weight":  # diffusers keeps (scale, shift), BFL (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale])
        else:
            prefix = next(p for p in TOP if key.startswith(p))
            out[TOP[prefix] + key[len(prefix) :]] = value
    return out


def diffusers_flux2_pipeline(folder: Path):
    """diffusers' ``Flux2Pipeline`` of diffusers' and transformers' own objects, each read from ``folder`` by its
    loader: the outside reference our FLUX.2 pipeline is compared with."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import AutoTokenizer, Mistral3ForConditionalGeneration

    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler")),
        vae=AutoencoderKLFlux2.from_pretrained(str(folder / "vae")).eval(),
        text_encoder=Mistral3ForConditionalGeneration.from_pretrained(str(folder / "text_encoder")).eval(),
        tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer")),
        transformer=Flux2Transformer2DModel.from_pretrained(str(folder / "transformer")).eval(),
    )
