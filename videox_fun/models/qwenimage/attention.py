"""Qwen-Image's dual-stream joint attention, through the package's one attention dispatch.

The math is diffusers' ``QwenDoubleStreamAttnProcessor2_0``: image and text tokens projected by their own weights,
RMS q / k norms of each, complex rotary tables of each stream (image, text), text tokens first in one softmax, the
text's padding left out by ``encoder_hidden_states_mask``. The softmax attention runs in
:meth:`~..attention.AttentionSeam.attend`, the seam sequence parallelism replaces.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from torch import nn

from ..attention import AttentionSeam


def normed(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` through a q / k norm, when the model has one."""
    return x if norm is None else norm(x)


class QwenImageJointAttention(AttentionSeam):
    """An attention processor for the ``attn`` of Qwen-Image's dual-stream blocks."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,  # (B, L_image, C)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, L_text, C)
        encoder_hidden_states_mask: torch.Tensor | None = None,  # (B, L_text) bool, True = a real token
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,  # image (L_image, D/2), text (L_text, D/2)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attended image and text tokens, projected out: (B, L_image, C), (B, L_text, C)."""
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError(
                "Qwen-Image attention needs the text stream and takes its mask as encoder_hidden_states_mask"
            )
        head_dim = attn.inner_dim // attn.heads
        image = [project(hidden_states).unflatten(-1, (-1, head_dim)) for project in (attn.to_q, attn.to_k, attn.to_v)]
        added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        text = [project(encoder_hidden_states).unflatten(-1, (-1, head_dim)) for project in added]
        image[:2] = [normed(norm, t) for norm, t in zip((attn.norm_q, attn.norm_k), image, strict=False)]
        text[:2] = [normed(norm, t) for norm, t in zip((attn.norm_added_q, attn.norm_added_k), text, strict=False)]
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            image[:2] = [apply_rotary_emb_qwen(t, image_freqs, use_real=False) for t in image[:2]]
            text[:2] = [apply_rotary_emb_qwen(t, text_freqs, use_real=False) for t in text[:2]]
        q, k, v = (torch.cat([t, i], dim=1) for t, i in zip(text, image, strict=True))  # (B, L, H, D), text first
        text_len = encoder_hidden_states.shape[1]
        key_mask = None
        if encoder_hidden_states_mask is not None:
            image_keys = encoder_hidden_states_mask.new_ones(hidden_states.shape[:2])
            key_mask = torch.cat([encoder_hidden_states_mask, image_keys], dim=1).bool()  # (B, L)
        out = self.attend(q, k, v, text_len, key_mask).flatten(2).to(q.dtype)  # (B, L, H*D)
        image_out = attn.to_out[0](out[:, text_len:].contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)  # dropout
        return image_out, attn.to_add_out(out[:, :text_len].contiguous())


def use_qwenimage_attention(blocks: list[nn.Module]) -> None:
    """Give each Qwen-Image block's ``attn`` a :class:`QwenImageJointAttention` of its own."""
    for block in blocks:
        block.attn.set_processor(QwenImageJointAttention())
