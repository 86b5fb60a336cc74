"""The Qwen-Image transformer: diffusers' ``QwenImageTransformer2DModel`` with strict loading and the extension
points our runtime features read.

Released folders are in the diffusers layout only (diffusers' single-file mapping for Qwen-Image is the identity),
so the network, its keys and its config are diffusers' (principle 6). Qwen-Image and every Edit release share one
config (60 dual-stream blocks, 24 heads of 128, text 3584, rotary split (16, 56, 56)): 20,430,401,088 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers import QwenImageTransformer2DModel
from torch import nn

from ..component import PublishedCacheSet, StrictDiffusersModel
from .attention import use_qwenimage_attention

TRANSFORMER_CLASS_NAME = "QwenImageTransformer2DModel"
# VideoX-Fun's TeaCache coefficients for Qwen-Image, highest power first: its ``cache_utils.get_teacache_coefficients``
# returns them for every model name holding "qwen-image" (Qwen-Image, -2512, the Edit releases), copied there from
# chenpipi0807/ComfyUI-TeaCache; fitted on the relative L1 change of the first block's modulated image input.
TEACACHE_COEFFICIENTS = [-4.50000000e02, 2.80000000e02, -4.50000000e01, 3.20000000e00, -2.00000000e-02]
TEACACHE_INDICATOR = "modulated_input"
# The released architecture (shared by every Qwen-Image release), which those coefficients are for.
RELEASED_ARCHITECTURE = {"patch_size": 2, "in_channels": 64, "num_layers": 60, "attention_head_dim": 128,
                         "num_attention_heads": 24, "joint_attention_dim": 3584}  # fmt: skip


class QwenImageTransformer(StrictDiffusersModel, QwenImageTransformer2DModel):
    """diffusers' Qwen-Image MMDiT (same keys, same config) with strict loading.

    ``hidden_states`` is (B, N, 64): 16 latent channels packed 2x2 per token (Edit: the noisy tokens followed by
    the edit image's tokens); ``img_shapes`` gives each image's (frames, rows, columns) of tokens for the rotary
    positions; the output (B, N, 64) is the flow velocity of every token.
    """

    released_class_name = TRANSFORMER_CLASS_NAME
    # Where runtime features attach (read by videox_fun.runtime, never by attribute names of one family).
    _block_lists = ("transformer_blocks",)
    _repeated_blocks = ("QwenImageTransformerBlock",)
    # A block returns (encoder_hidden_states, hidden_states): text first, unlike its arguments.
    _block_streams = ("encoder_hidden_states", "hidden_states")
    # What a step cache compares between steps: the timestep embedding, or (VideoX-Fun's TeaCache, and the default:
    # its published set is fitted on it) the first block's modulated image input, computed from that block's inputs.
    _cache_indicators: ClassVar[dict[str, str]] = {"time_embedding": "time_text_embed"}
    _cache_block_indicators: ClassVar[dict[str, str]] = {TEACACHE_INDICATOR: "modulated_input"}
    _cache_default_indicator = TEACACHE_INDICATOR
    _published_cache_set = PublishedCacheSet(
        "Qwen-Image", tuple(TEACACHE_COEFFICIENTS), TEACACHE_INDICATOR, RELEASED_ARCHITECTURE
    )
    # The modulation and norm layers stay in high precision under fp8 storage, as diffusers'
    # _skip_layerwise_casting_patterns ("pos_embed", "norm") keeps them.
    _fp8_skip_modules = ("norm", "mod")
    # Sequence parallelism splits both streams (text and image tokens, each padded to the ranks on its own), the
    # text's key mask, the per-image-token modulation index (Edit-2511) and each stream's rotary table; proj_out's
    # image tokens are gathered; the seam is each block's attention processor.
    _sequence_parallel_shards: ClassVar[dict[str, object]] = {
        "encoder_hidden_states": 1,
        "hidden_states": 1,
        "encoder_hidden_states_mask": (1, "encoder_hidden_states"),
        "modulate_index": (1, "hidden_states"),
        "image_rotary_emb": [(0, "hidden_states"), (0, "encoder_hidden_states")],
    }
    _sequence_parallel_layout = ("encoder_hidden_states", "hidden_states")
    _sequence_parallel_gather: ClassVar[dict[str, str]] = {"proj_out": "hidden_states"}
    _attention_seam = "attn.processor"

    # diffusers reads the constructor's fields off its signature: keep the base class's (functools.wraps).
    @functools.wraps(QwenImageTransformer2DModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every block's attention goes through the package's dispatch (SDPA / flash / sage) and its seam.
        use_qwenimage_attention(list(self.transformer_blocks))

    @staticmethod
    def modulated_input(block: nn.Module, arguments: Mapping[str, Any]) -> torch.Tensor:
        """The first block's modulated image input (B, N, dim), from its arguments: its image norm, shifted and scaled
        by the first half of its image modulation (per token with Edit-2511's ``modulate_index``), as the block
        computes it before its attention (and VideoX-Fun's TeaCache before the blocks)."""
        shift_scale_gate = block.img_mod(arguments["temb"]).chunk(2, dim=-1)[0]  # (B, 3 * dim)
        normed = block.img_norm1(arguments["hidden_states"])
        return block._modulate(normed, shift_scale_gate, arguments.get("modulate_index"))[0]

    @classmethod
    def from_state(
        cls,
        config: Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
        source: str,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> QwenImageTransformer:
        """The strict meta-device load, then the rotary tables rebuilt: they are plain tensors of ``pos_embed``
        (neither parameters nor buffers, so not in the checkpoint), left without data by the meta build."""
        model = super().from_state(config, state, source, torch_dtype, device)
        rope = model.pos_embed
        with torch.device(device):
            model.pos_embed = type(rope)(theta=rope.theta, axes_dim=list(rope.axes_dim), scale_rope=rope.scale_rope)
        return model
