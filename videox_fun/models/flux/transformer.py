"""The FLUX.1 transformer: diffusers' ``FluxTransformer2DModel`` with strict loading, BFL single files and the
extension points our runtime features read.

The network is diffusers' (principle 6: the released ``transformer/`` folders use its keys and its config; its
parameter count on the meta device is the released one). What this module adds:

* :meth:`FluxTransformer.from_pretrained`, which builds on the meta device and fails naming every missing,
  unexpected or mis-shaped key (diffusers' own loader only warns about unexpected keys);
* BFL single files (``flux1-dev.safetensors``: ``double_blocks.*``, ``single_blocks.*``, ``img_in``...) read
  through diffusers' own converter (:func:`bfl_to_diffusers`), with their config read off the tensor shapes;
* its attention through the package's dispatch (:mod:`.attention`), the seam sequence parallelism replaces;
* class attributes that say where runtime features attach (blocks, streams, cache indicator, fp8 skips, sequence
  parallelism).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from torch import nn

from ..component import PublishedCacheSet, StrictDiffusersModel
from ..loading import count_blocks, read_weights_at, strip_prefix
from .attention import use_flux_attention

TRANSFORMER_CLASS_NAME = "FluxTransformer2DModel"
# The prefix ComfyUI / original checkpoints put before BFL keys (diffusers' converter strips it too).
BFL_PREFIX = "model.diffusion_model."
# The key every FLUX.1 BFL transformer has (FLUX.2's double blocks have no per-block modulation).
BFL_MARKER = "double_blocks.0.img_mod.lin.weight"
# diffusers' converter splits single-block ``linear1`` at the released sizes (inner 3072, MLP 4 x 3072), whatever
# the file's shapes: smaller models are padded to them and cropped back (:func:`bfl_to_diffusers`).
RELEASED_INNER_DIM = 3072
RELEASED_MLP_DIM = 4 * RELEASED_INNER_DIM
# The released rotary split of the 128-d heads (FLUX.1's config ``axes_dims_rope``).
RELEASED_AXES = {128: (16, 56, 56)}
# TeaCache4FLUX's coefficients (ali-vilab/TeaCache, fitted on FLUX.1-dev; ComfyUI-TeaCache uses them for every FLUX.1),
# highest power first, on the relative L1 change of the first double block's modulated image input (its norm1).
TEACACHE_COEFFICIENTS = [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01]
TEACACHE_INDICATOR = "modulated_input"
# The released architecture (dev and schnell share it), which those coefficients are for.
RELEASED_ARCHITECTURE = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                         "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096}  # fmt: skip
SINGLE_LINEAR1 = re.compile(r"^single_blocks\.\d+\.linear1\.(weight|bias)$")
SINGLE_SPLIT = re.compile(r"^single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp)\.(weight|bias)$")


class FluxTransformer(StrictDiffusersModel, FluxTransformer2DModel):
    """diffusers' FLUX.1 transformer (same keys, same config) with strict loading.

    Input ``hidden_states`` is (B, h/2 * w/2, 64): the 16 latent channels packed 2x2; output the same shape,
    the flow velocity. ``guidance`` (dev only) is the embedded distilled guidance scale, (B,).
    """

    released_class_name = TRANSFORMER_CLASS_NAME
    # Where runtime features attach (read by videox_fun.runtime, never by attribute names of one family).
    _block_lists = ("transformer_blocks", "single_transformer_blocks")
    _repeated_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    # Both block kinds return (encoder_hidden_states, hidden_states): text first, unlike their arguments.
    _block_streams = ("encoder_hidden_states", "hidden_states")
    # The module whose output a step cache compares between steps: timestep + guidance + pooled text embedding.
    # Or (TeaCache4FLUX's, and the default: its published set is fitted on it) the first double block's modulated
    # image input, computed from that block's inputs.
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "time_text_embed"}
    _cache_block_indicators: ClassVar[dict[str, str]] = {TEACACHE_INDICATOR: "modulated_input"}
    _cache_default_indicator = TEACACHE_INDICATOR
    _published_cache_set = PublishedCacheSet(
        "FLUX.1", tuple(TEACACHE_COEFFICIENTS), TEACACHE_INDICATOR, RELEASED_ARCHITECTURE
    )
    # The adaLN modulation layers (norm*.linear) stay in high precision under fp8 storage, as diffusers'
    # _skip_layerwise_casting_patterns keeps "norm".
    _fp8_skip_modules = ("norm",)
    # Sequence parallelism splits both streams (text and image tokens, each padded to the ranks on its own) and the
    # rotary table over them (text first, as the joint attention concatenates them); proj_out's image tokens are
    # gathered; the seam is each block's attention processor.
    _sequence_parallel_shards: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1, "hidden_states": 1,
                                                           "image_rotary_emb": 0}  # fmt: skip
    _sequence_parallel_layout = ("encoder_hidden_states", "hidden_states")
    _sequence_parallel_gather: ClassVar[dict[str, str]] = {"proj_out": "hidden_states"}
    _attention_seam = "attn.processor"

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(FluxTransformer2DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every block's attention goes through the package's dispatch (SDPA / flash / sage) and its seam.
        use_flux_attention([block.attn for block in (*self.transformer_blocks, *self.single_transformer_blocks)])

    @staticmethod
    def modulated_input(block: nn.Module, arguments: Mapping[str, Any]) -> torch.Tensor:
        """The first double block's modulated image input (B, N, dim), from its arguments: its ``norm1`` (layer norm,
        shifted and scaled by the block's adaLN of ``temb``), as the block computes it before its attention (and
        TeaCache4FLUX before the blocks)."""
        return block.norm1(arguments["hidden_states"], emb=arguments["temb"])[0]

    @staticmethod
    def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Weights with diffusers' names from a diffusers file or (sharded) folder, with or without the
        ``transformer.`` prefix, or from a BFL single file (converted) (``--transformer-path``)."""
        path = Path(path)
        state = read_weights_at(path)
        if is_bfl_state(state):
            return bfl_to_diffusers(state, source=str(path))
        return strip_prefix(state, ("transformer.",))

    @staticmethod
    def config_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The config of a diffusers-named (or converted BFL) FLUX.1 state, read off its shapes at the released heads
        (:func:`config_from_state`)."""
        return config_from_state(state)


# -- BFL single files ----------------------------------------------------------------------------------------


def is_bfl_state(state: Mapping[str, Any]) -> bool:
    """Whether the keys are BFL's (``double_blocks.*``...) rather than diffusers'; another model's BFL layout
    (FLUX.2: double blocks without their own modulation) fails in one line."""
    keys = {key.removeprefix(BFL_PREFIX) for key in state}
    if not any(key.startswith(("double_blocks.", "single_blocks.")) for key in keys):
        return False
    if BFL_MARKER not in keys:
        raise ValueError(
            f"a BFL-layout file without {BFL_MARKER} is not a FLUX.1 transformer (FLUX.2 keeps its modulation in "
            "double_stream_modulation_*): give a FLUX.1-dev / schnell file"
        )
    return True


def bfl_to_diffusers(state: Mapping[str, torch.Tensor], source: str = "BFL file") -> dict[str, torch.Tensor]:
    """A FLUX.1 BFL state dict with diffusers' names, through diffusers' own converter
    (``convert_flux_transformer_checkpoint_to_diffusers``); every key of the file must be used.

    The converter splits each single block's fused ``linear1`` (q, k, v, MLP in) at the released sizes. A
    model of another width has its ``linear1`` zero-padded to them first and the four pieces cropped back to
    its own size after, so the converter's key mapping serves every size; released files pass unchanged.
    """
    if not is_bfl_state(state):
        raise ValueError(f"{source}: no BFL keys (double_blocks.*, single_blocks.*): not a BFL FLUX.1 file")
    checkpoint = {key.removeprefix(BFL_PREFIX): value for key, value in state.items()}
    inner = checkpoint["img_in.weight"].shape[0]
    linear2 = checkpoint.get("single_blocks.0.linear2.weight")  # (inner, inner + mlp)
    mlp = linear2.shape[1] - inner if linear2 is not None else RELEASED_MLP_DIM
    resized = (inner, mlp) != (RELEASED_INNER_DIM, RELEASED_MLP_DIM)
    if resized:
        if inner > RELEASED_INNER_DIM or mlp > RELEASED_MLP_DIM:
            raise ValueError(f"{source}: a FLUX transformer wider than the released one (inner {inner}, MLP {mlp})")
        for key in [key for key in checkpoint if SINGLE_LINEAR1.match(key)]:
            checkpoint[key] = pad_linear1(checkpoint[key], inner, mlp)
    try:
        converted = convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    except KeyError as err:
        raise ValueError(f"{source}: not a complete FLUX.1 BFL transformer (no {err.args[0]})") from None
    if checkpoint:  # the converter pops what it maps: anything left would be dropped silently
        raise ValueError(f"{source}: keys a FLUX.1 transformer does not have: {', '.join(sorted(checkpoint)[:12])}")
    if resized:
        converted = {key: crop_split(key, value, inner, mlp) for key, value in converted.items()}
    return converted


def pad_linear1(tensor: torch.Tensor, inner: int, mlp: int) -> torch.Tensor:
    """A single block's ``linear1`` (3 * inner + mlp, ...) placed into the released layout (3 * 3072 + 12288, ...):
    q, k, v and the MLP each at the start of their released slot, zeros after."""
    pieces = torch.split(tensor, (inner, inner, inner, mlp), dim=0)
    slots = (RELEASED_INNER_DIM,) * 3 + (RELEASED_MLP_DIM,)
    padded = tensor.new_zeros((sum(slots), *tensor.shape[1:]))
    start = 0
    for piece, slot in zip(pieces, slots, strict=True):
        padded[start : start + piece.shape[0]] = piece
        start += slot
    return padded


def crop_split(key: str, tensor: torch.Tensor, inner: int, mlp: int) -> torch.Tensor:
    """A converted single-block q / k / v / MLP-in tensor cut back from its released slot to the model's size."""
    if not SINGLE_SPLIT.match(key):
        return tensor
    return tensor[: mlp if ".proj_mlp." in key else inner].clone()


def config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The transformer config of a diffusers-named FLUX.1 state (a converted BFL file), read off its shapes.

    The rotary split of the heads is not in the weights: released 128-d heads take (16, 56, 56); other head
    sizes need the config given.
    """
    inner, in_channels = state["x_embedder.weight"].shape
    head_dim = state["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    if head_dim not in RELEASED_AXES:
        raise ValueError(f"heads of {head_dim} channels are not FLUX.1's (128): give the transformer config")
    return {
        "_class_name": TRANSFORMER_CLASS_NAME,
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None,
        "num_layers": count_blocks(state, "transformer_blocks."),
        "num_single_layers": count_blocks(state, "single_transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": state["context_embedder.weight"].shape[1],
        "pooled_projection_dim": state["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in state,
        "axes_dims_rope": RELEASED_AXES[head_dim],
    }
