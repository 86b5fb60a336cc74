"""FLUX.1 test helpers, importable as ``flux_helpers`` (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' FLUX.1 converter, written from its mapping: diffusers names -> BFL's."""
    out = {}
    renames = {"time_text_embed.timestep_embedder.linear_": "time_in.", "time_text_embed.text_embedder.linear_":
               "vector_in.", "time_text_embed.guidance_embedder.linear_": "guidance_in.", "context_embedder.":
               "txt_in.", "x_embedder.": "img_in.", "proj_out.": "final_layer.linear."}  # fmt: skip
    for key, value in state.items():
        for prefix, bfl in renames.items():
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if bfl.endswith("in.") and prefix.endswith("linear_"):
                    rest = {"1": "in_layer", "2": "out_layer"}[rest[0]] + rest[1:]
                out[bfl + rest] = value
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(state[f"norm_out.linear.{suffix}"])
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
              "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
              "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}  # fmt: skip
    norms = {"norm_q": "query_norm", "norm_k": "key_norm"}
    for i in range(len({k.split(".")[1] for k in state if k.startswith("transformer_blocks.")})):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for suffix in ("weight", "bias"):
            for ours, theirs in double.items():
                out[f"{b}{theirs}.{suffix}"] = state[f"{d}{ours}.{suffix}"]
            out[f"{b}img_attn.qkv.{suffix}"] = torch.cat([state[f"{d}attn.to_{x}.{suffix}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{suffix}"] = torch.cat([state[f"{d}attn.add_{x}_proj.{suffix}"] for x in "qkv"])
        for ours, theirs in norms.items():
            out[f"{b}img_attn.norm.{theirs}.scale"] = state[f"{d}attn.{ours}.weight"]
            out[f"{b}txt_attn.norm.{theirs}.scale"] = state[f"{d}attn.{ours.replace('_', '_added_')}.weight"]
    for i in range(len({k.split(".")[1] for k in state if k.startswith("single_transformer_blocks.")})):
        s, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for suffix in ("weight", "bias"):
            out[f"{b}modulation.lin.{suffix}"] = state[f"{s}norm.linear.{suffix}"]
            pieces = [state[f"{s}attn.to_{x}.{suffix}"] for x in "qkv"] + [state[f"{s}proj_mlp.{suffix}"]]
            out[f"{b}linear1.{suffix}"] = torch.cat(pieces)
            out[f"{b}linear2.{suffix}"] = state[f"{s}proj_out.{suffix}"]
        for ours, theirs in norms.items():
            out[f"{b}norm.{theirs}.scale"] = state[f"{s}attn.{ours}.weight"]
    return out
