"""Z-Image test helpers, importable as ``zimage_helpers`` (``tests/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch

# diffusers' names -> the original Z-Image layout's, the inverse of the renames in diffusers'
# convert_z_image_transformer_checkpoint_to_diffusers (written from its mapping).
RENAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_q.": ".attention.q_norm.",
    ".attention.norm_k.": ".attention.k_norm.",
}


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-named Z-Image state dict in the original layout: renamed keys, q / k / v fused into ``qkv``."""
    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue  # fused with to_q below
        if ".attention.to_q." in key:
            fused = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(fused)
            continue
        for ours, theirs in RENAMES.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out
