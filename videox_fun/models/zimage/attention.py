"""Z-Image's single-stream attention, through the package's one attention dispatch.

The math is diffusers' ``ZSingleStreamAttnProcessor`` (q / k / v of the one stream of image + caption tokens, RMS
q / k norms, complex rotary embedding per token, a key-padding mask when a batch's sequences differ in length);
the softmax attention itself runs in :meth:`~..attention.AttentionSeam.attend` (SDPA, flash-attn, SageAttention),
the seam sequence parallelism replaces.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from ..attention import AttentionSeam


def apply_complex_rotary(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D) rotated by ``freqs_cis`` (B, L, D/2) complex, in fp32 (diffusers' order: pairs of channels)."""
    with torch.autocast("cuda", enabled=False):
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, L, H, D/2)
        return torch.view_as_real(pairs * freqs_cis.unsqueeze(2)).flatten(3).type_as(x)


class ZImageAttention(AttentionSeam):
    """An attention processor for the ``attention`` of Z-Image's blocks (main layers and refiners)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,  # (B, L, C)
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, L) bool, True = a real token
        freqs_cis: torch.Tensor | None = None,  # (B, L, D/2) complex
    ) -> torch.Tensor:
        """The attended tokens (B, L, C)."""
        if encoder_hidden_states is not None or (attention_mask is not None and attention_mask.ndim != 2):
            raise ValueError("Z-Image attention is self-attention over one stream with a (B, L) key mask")
        projections = (attn.to_q, attn.to_k, attn.to_v)
        q, k, v = (project(hidden_states).unflatten(-1, (attn.heads, -1)) for project in projections)  # (B, L, H, D)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if freqs_cis is not None:
            q, k = apply_complex_rotary(q, freqs_cis), apply_complex_rotary(k, freqs_cis)
        out = self.attend(q, k, v, 0, attention_mask).flatten(2).to(q.dtype)  # (B, L, H*D)
        out = attn.to_out[0](out)
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out  # to_out[1]: dropout


def use_zimage_attention(blocks: list[nn.Module]) -> None:
    """Give each Z-Image block's ``attention`` a :class:`ZImageAttention` of its own."""
    for block in blocks:
        block.attention.set_processor(ZImageAttention())
