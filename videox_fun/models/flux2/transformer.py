"""The FLUX.2 transformer: diffusers' ``Flux2Transformer2DModel`` with strict loading, BFL single files and the
extension points our runtime features read.

The network is diffusers' (principle 6: the released ``transformer/`` folder uses its keys and config; on the meta
device the released config counts 32,223,281,152 parameters). What this module adds:

* strict loading (every missing, unexpected or mis-shaped key named; :class:`~..component.StrictDiffusersModel`);
* BFL single files (``flux2-dev.safetensors``: ``img_in``, ``txt_in``, ``time_in``, ``guidance_in``,
  ``double_stream_modulation_*``, ``single_stream_modulation``, ``double_blocks.*``, ``single_blocks.*``,
  ``final_layer``) read through diffusers' own ``convert_flux2_transformer_checkpoint_to_diffusers``, with the
  config read off the tensor shapes; a FLUX.1 file is refused in one line;
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
from diffusers import Flux2Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

from ..component import StrictDiffusersModel
from ..loading import count_blocks, read_weights_at, strip_prefix
from .attention import use_flux2_attention

TRANSFORMER_CLASS_NAME = "Flux2Transformer2DModel"
BFL_PREFIX = "model.diffusion_model."  # ComfyUI's prefix before BFL keys
# The key diffusers' single-file loader recognises a BFL FLUX.2 file by: the single blocks' shared modulation.
BFL_MARKER = "single_stream_modulation.lin.weight"
# What a FLUX.1 BFL file has and a FLUX.2 one lacks: per-block modulation of the double blocks.
FLUX1_MARKER = "double_blocks.0.img_mod.lin.weight"
# A key of every diffusers-named FLUX.2 transformer (FLUX.1's is norm1.linear inside each block).
DIFFUSERS_MARKER = "single_stream_modulation.linear.weight"
# The released rotary split of the 128-d heads over (t, h, w, l) and its theta (not in the weights).
RELEASED_AXES = {128: (32, 32, 32, 32)}
RELEASED_ROPE_THETA = 2000
RELEASED_EPS = 1e-6


class Flux2Transformer(StrictDiffusersModel, Flux2Transformer2DModel):
    """diffusers' FLUX.2 transformer (same keys, same config) with strict loading; ``from_single_file`` reads BFL
    files (:meth:`read_weights`).

    Input ``hidden_states`` (B, N, 128): one token per latent pixel of the 2x2-patchified 32-channel latents;
    ``img_ids`` (N, 4) and ``txt_ids`` (L, 4) are (t, h, w, l) positions; ``guidance`` (B,) the embedded guidance
    scale; ``timestep`` (B,) in [0, 1]. Output (B, N, 128): the flow velocity.
    """

    released_class_name = TRANSFORMER_CLASS_NAME
    # Where runtime features attach (read by videox_fun.runtime, never by attribute names of one family).
    _block_lists = ("transformer_blocks", "single_transformer_blocks")
    _repeated_blocks = ("Flux2TransformerBlock", "Flux2SingleTransformerBlock")
    # Double blocks return (text, image); single blocks one joint stream, text then image (the forward joins them).
    _block_streams: ClassVar[dict[str, tuple[str, ...]]] = {
        "transformer_blocks": ("encoder_hidden_states", "hidden_states"),
        "single_transformer_blocks": ("hidden_states",),
    }
    # The module whose output a step cache compares between steps: the timestep + guidance embedding.
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "time_guidance_embed"}
    # The shared modulation layers and norms stay in high precision under fp8 storage (diffusers'
    # _skip_layerwise_casting_patterns keeps "norm"; FLUX.2's modulation lives outside the blocks).
    _fp8_skip_modules = ("norm", "modulation")
    # Sequence parallelism splits both streams (text and image tokens, each padded to the ranks on its own) and the
    # rotary table over them (text first). The forward joins the two streams for the single blocks and cuts the
    # text off by its whole length after them: the last block's joint stream is gathered whole, before that cut.
    _sequence_parallel_shards: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1, "hidden_states": 1,
                                                           "image_rotary_emb": 0}  # fmt: skip
    _sequence_parallel_layout = ("encoder_hidden_states", "hidden_states")
    _attention_seam = "attn.processor"

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(Flux2Transformer2DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every block's attention goes through the package's dispatch (SDPA / flash / sage) and its seam.
        use_flux2_attention(list(self.transformer_blocks), list(self.single_transformer_blocks))

    @staticmethod
    def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Weights with diffusers' names from a diffusers file or (sharded) folder, with or without the
        ``transformer.`` prefix, or from a BFL single file (converted) (``--transformer-path``)."""
        path = Path(path)
        state = read_weights_at(path)
        if is_bfl_state(state, str(path)):
            return bfl_to_diffusers(state, source=str(path))
        state = strip_prefix(state, ("transformer.",))
        if DIFFUSERS_MARKER not in state:
            sample = ", ".join(sorted(state)[:3])
            raise ValueError(f"{path}: not a FLUX.2 transformer (no {DIFFUSERS_MARKER}; its keys start {sample})")
        return state

    @staticmethod
    def config_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The config of a diffusers-named FLUX.2 state, read off its shapes (:func:`config_from_state`)."""
        return config_from_state(state)


# -- BFL single files ----------------------------------------------------------------------------------------


def is_bfl_state(state: Mapping[str, Any], source: str = "file") -> bool:
    """Whether the keys are BFL's (``double_blocks.*``...) rather than diffusers'; a FLUX.1 BFL file (per-block
    modulation, no ``single_stream_modulation``) fails in one line."""
    keys = {key.removeprefix(BFL_PREFIX) for key in state}
    if not any(key.startswith(("double_blocks.", "single_blocks.")) for key in keys):
        return False
    if BFL_MARKER not in keys:
        kind = "a FLUX.1 transformer" if FLUX1_MARKER in keys else "not a FLUX.2 transformer"
        raise ValueError(f"{source}: a BFL-layout file without {BFL_MARKER}: {kind}; give a FLUX.2-dev file")
    return True


def bfl_to_diffusers(state: Mapping[str, torch.Tensor], source: str = "BFL file") -> dict[str, torch.Tensor]:
    """A FLUX.2 BFL state dict with diffusers' names, through diffusers' own converter; keys it does not know pass
    through under their own names, so strict loading names them."""
    if not is_bfl_state(state, source):
        raise ValueError(f"{source}: no BFL keys (double_blocks.*, single_blocks.*): not a BFL FLUX.2 file")
    checkpoint = {key.removeprefix(BFL_PREFIX): value for key, value in state.items()}  # the converter pops
    try:
        return convert_flux2_transformer_checkpoint_to_diffusers(checkpoint)
    except KeyError as err:  # a block key the converter's tables do not hold
        raise ValueError(f"{source}: not a FLUX.2 BFL transformer (unknown key part {err.args[0]!r})") from None


def config_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The transformer config of a diffusers-named FLUX.2 state (a converted BFL file), read off its shapes.

    The rotary split of the heads, its theta and the norms' eps are not in the weights: released 128-d heads take
    (32, 32, 32, 32), theta 2000, eps 1e-6; other head sizes need the config given.
    """
    inner, in_channels = state["x_embedder.weight"].shape  # (inner, 128)
    head_dim = state["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    if head_dim not in RELEASED_AXES:
        raise ValueError(f"heads of {head_dim} channels are not FLUX.2's (128): give the transformer config")
    mlp_in = state["transformer_blocks.0.ff.linear_in.weight"].shape[0]  # (2 * mlp, inner): SwiGLU gate + value
    return {
        "_class_name": TRANSFORMER_CLASS_NAME,
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": state["proj_out.weight"].shape[0],
        "num_layers": count_blocks(state, "transformer_blocks."),
        "num_single_layers": count_blocks(state, "single_transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": state["context_embedder.weight"].shape[1],
        "timestep_guidance_channels": state["time_guidance_embed.timestep_embedder.linear_1.weight"].shape[1],
        "mlp_ratio": mlp_in / 2 / inner,
        "axes_dims_rope": RELEASED_AXES[head_dim],
        "rope_theta": RELEASED_ROPE_THETA,
        "eps": RELEASED_EPS,
        "guidance_embeds": "time_guidance_embed.guidance_embedder.linear_1.weight" in state,
    }
