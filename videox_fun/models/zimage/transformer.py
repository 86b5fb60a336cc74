"""The Z-Image transformer: diffusers' ``ZImageTransformer2DModel`` with strict loading, original-layout single
files and the extension points our runtime features read.

The network is diffusers' (principle 6: the released ``transformer/`` folders use its keys and config; on the meta
device it counts the released 6,154,908,736 parameters). It takes a list of latents (C, 1, h, w), one per image,
patchifies them 2x2 itself, refines image and caption tokens apart (``noise_refiner``, ``context_refiner``) and runs
one stream of image + caption tokens through ``layers``. What this module adds:

* strict loading (every missing, unexpected or mis-shaped key named; :class:`~..component.StrictDiffusersModel`);
* the original Z-Image layout (``x_embedder``, ``final_layer``, fused ``attention.qkv``, ``attention.out``,
  ``q_norm`` / ``k_norm``; ComfyUI's ``model.diffusion_model.`` prefix) read through diffusers' own
  ``convert_z_image_transformer_checkpoint_to_diffusers``, with its config read off the tensor shapes;
* its attention through the package's dispatch (:mod:`.attention`), the seam sequence parallelism replaces;
* class attributes that say where runtime features attach.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

from ..component import StrictDiffusersModel
from ..loading import count_blocks, read_weights_at, strip_prefix
from .attention import use_zimage_attention

TRANSFORMER_CLASS_NAME = "ZImageTransformer2DModel"
ORIGINAL_PREFIX = "model.diffusion_model."  # ComfyUI's prefix (diffusers' converter strips it too)
# A key both layouts share, which no other family's transformer has: the caption embedder's projection.
MARKER = "cap_embedder.1.weight"
# The released rotary split of the 128-d heads and its position table lengths (model-facts: axes_lens
# [1536, 512, 512], where the class default is 1024 for the first axis).
RELEASED_AXES = {128: ([32, 48, 48], [1536, 512, 512])}
PATCH, F_PATCH = 2, 1


class ZImageTransformer(StrictDiffusersModel, ZImageTransformer2DModel):
    """diffusers' Z-Image transformer (same keys, same config) with strict loading.

    ``forward(x, t, cap_feats)``: ``x`` a list of latents (C, 1, h, w), ``t`` (B,) in [0, 1] (1 = clean),
    ``cap_feats`` a list of caption features (L_i, cap_feat_dim); returns a list of (C, 1, h, w) predictions of
    ``clean - noise`` (the negated flow velocity).
    """

    released_class_name = TRANSFORMER_CLASS_NAME
    # Where runtime features attach (read by videox_fun.runtime): the main single-stream stack of image +
    # caption tokens; the two small refiner stacks before it run on their own streams.
    _block_lists = ("layers",)
    _repeated_blocks = ("ZImageTransformerBlock",)
    # The module whose output a step cache compares between steps: the timestep embedding (adaLN input).
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "t_embedder"}
    # The adaLN modulation layers stay in high precision under fp8 storage (as FLUX.1 keeps its norm*.linear); the
    # refiners' blocks (the same block class, before the main stack) are stored too, as VideoX-Fun's qfloat8 modes
    # store the whole transformer but its pad tokens (which are no linears: they stay here too).
    _fp8_skip_modules = ("adaLN_modulation",)
    _fp8_side_modules = ("noise_refiner", "context_refiner", "siglip_refiner")
    # A block carries one stream, ``x``: the image tokens then the caption tokens, each padded to 32 by the model.
    _block_streams = ("x",)
    # No text stream reaches the blocks: a step cache keys a pass that the guidance names no branch of (the batched
    # one) by its rotary table, the same every step (sequential passes are named "cond" / "uncond").
    _cache_context_argument = "freqs_cis"
    # Sequence parallelism splits that stream (and its per-token key mask, rotary table and omni noise mask); the
    # control hints the forward adds after main blocks are split on entry alike; the final layer's output is
    # gathered (after the last hint); the seam is each block's attention processor.
    _sequence_parallel_shards: ClassVar[dict[str, int]] = {"x": 1, "attn_mask": 1, "freqs_cis": 1, "noise_mask": 1}
    _sequence_parallel_inputs: ClassVar[dict[str, int]] = {"controlnet_block_samples": 1}
    _sequence_parallel_gather: ClassVar[dict[str, str]] = {f"all_final_layer.{PATCH}-{F_PATCH}": "x"}
    _attention_seam = "attention.processor"

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(ZImageTransformer2DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every block's attention goes through the package's dispatch (SDPA / flash / sage) and its seam.
        refiners = [*self.noise_refiner, *self.context_refiner, *(getattr(self, "siglip_refiner", None) or [])]
        use_zimage_attention([*refiners, *self.layers])

    @staticmethod
    def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Weights with diffusers' names from a diffusers file or (sharded) folder, with or without the
        ``transformer.`` prefix, or from an original-layout single file (converted) (``--transformer-path``)."""
        path = Path(path)
        state = read_weights_at(path)
        if is_original_state(state):
            return original_to_diffusers(state, source=str(path))
        state = strip_prefix(state, ("transformer.",))
        check_is_zimage(state, str(path))
        return state

    @staticmethod
    def config_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The config of a diffusers-named (or converted original-layout) Z-Image state, read off its shapes
        (:func:`config_from_state`)."""
        return config_from_state(state)


def check_is_zimage(state: Mapping[str, Any], source: str) -> None:
    """Fail in one line when the weights are not a Z-Image transformer's (a FLUX or Wan file given instead)."""
    if MARKER not in state:
        sample = ", ".join(sorted(state)[:3])
        raise ValueError(f"{source}: not a Z-Image transformer (no {MARKER}; its keys start {sample})")


def is_original_state(state: Mapping[str, Any]) -> bool:
    """Whether the keys are the original Z-Image layout's (``x_embedder.*``, fused ``attention.qkv``)."""
    keys = (key.removeprefix(ORIGINAL_PREFIX) for key in state)
    return any(key.startswith("x_embedder.") or ".attention.qkv." in key for key in keys)


def original_to_diffusers(state: Mapping[str, torch.Tensor], source: str = "Z-Image file") -> dict[str, torch.Tensor]:
    """An original-layout Z-Image state dict with diffusers' names, through diffusers' own converter.

    The converter renames key by key (unknown keys pass through, so strict loading names them) and drops the
    unused ``norm_final.weight`` of the original files.
    """
    checkpoint = dict(state)  # the converter pops what it reads
    check_is_zimage({key.removeprefix(ORIGINAL_PREFIX): None for key in checkpoint}, source)
    return convert_z_image_transformer_checkpoint_to_diffusers(checkpoint)


def config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The transformer config of a diffusers-named Z-Image state, read off its shapes.

    The rotary split of the heads is not in the weights: released 128-d heads take (32, 48, 48) with position
    tables (1536, 512, 512); other head sizes need the config given.
    """
    dim, patch_in = state[f"all_x_embedder.{PATCH}-{F_PATCH}.weight"].shape  # (dim, 2 * 2 * 1 * C)
    head_dim = state["layers.0.attention.norm_q.weight"].shape[0]
    if head_dim not in RELEASED_AXES:
        raise ValueError(f"heads of {head_dim} channels are not Z-Image's (128): give the transformer config")
    axes_dims, axes_lens = RELEASED_AXES[head_dim]
    siglip = state.get("siglip_embedder.1.weight")
    return {
        "_class_name": TRANSFORMER_CLASS_NAME,
        "all_patch_size": [PATCH],
        "all_f_patch_size": [F_PATCH],
        "in_channels": patch_in // (PATCH * PATCH * F_PATCH),
        "dim": dim,
        "n_layers": count_blocks(state, "layers."),
        "n_refiner_layers": count_blocks(state, "noise_refiner."),
        "n_heads": dim // head_dim,
        "n_kv_heads": state["layers.0.attention.to_k.weight"].shape[0] // head_dim,
        "cap_feat_dim": state[MARKER].shape[1],
        "siglip_feat_dim": None if siglip is None else siglip.shape[1],
        "axes_dims": axes_dims,
        "axes_lens": axes_lens,
    }
