"""CogVideoX's joint text + video attention, through the package's one attention dispatch.

The math is diffusers' ``CogVideoXAttnProcessor2_0`` (text tokens first, RoPE on the video part,
one softmax over both); what differs is where the attention itself runs: :meth:`attend`, which
calls :func:`videox_fun.models.attention.attention` (SDPA, flash-attn, SageAttention) and is the
seam sequence parallelism replaces, as Wan's ``self_attn.attend`` is.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from ..attention import attention


class CogVideoXJointAttention:
    """An attention processor for diffusers' CogVideoX ``Attention`` modules (``attn1`` of each block)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,  # (B, L_video, C)
        encoder_hidden_states: torch.Tensor,  # (B, L_text, C)
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin (L_video, D)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attended video and text tokens, (B, L_video, C) and (B, L_text, C)."""
        if attention_mask is not None:
            raise ValueError("CogVideoX attention takes no mask (every text token is attended to, as released)")
        text_len = encoder_hidden_states.shape[1]
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # (B, L_text + L_video, C)
        batch = tokens.shape[0]
        q, k, v = (self._heads(attn, project(tokens), batch) for project in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:  # the video tokens' positions; text tokens have none
            q = torch.cat([q[:, :, :text_len], apply_rotary_emb(q[:, :, text_len:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :text_len], apply_rotary_emb(k[:, :, text_len:], image_rotary_emb)], dim=2)
        out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), text_len)  # (B, L, H, D)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2)))  # (B, L, C); to_out[1] is dropout
        return out[:, text_len:], out[:, :text_len]

    @staticmethod
    def _heads(attn: Attention, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, L, H*D) -> (B, H, L, D)."""
        return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int) -> torch.Tensor:
        """Joint attention of (B, L_text + L_video, H, D) tensors, text tokens first -> (B, L, H, D)."""
        return attention(q, k, v)
