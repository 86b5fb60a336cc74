"""FLUX's joint text + image attention, through the package's one attention dispatch.

The math is diffusers' ``FluxAttnProcessor`` (and ``Flux2AttnProcessor``, the same for FLUX.2's double blocks):
q / k / v of the image tokens and, in double blocks, of the text tokens by their own projections, RMS q / k norms,
text tokens first, one rotary table over text + image; single blocks hand in the joint stream and project its
output themselves. The softmax attention runs in :meth:`~..attention.AttentionSeam.attend` (SDPA, flash-attn,
SageAttention), the seam sequence parallelism replaces.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from ..attention import AttentionSeam


def heads(projected: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, L, H, D)."""
    return projected.unflatten(-1, (-1, head_dim))


def with_rotary(q: torch.Tensor, k: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> tuple:
    """q and k (B, L, H, D) rotated by the (cos, sin) tables (L, D) of their tokens (none: as they are)."""
    if rotary is None:
        return q, k
    return apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)


class FluxJointAttention(AttentionSeam):
    """An attention processor for FLUX.1's double and single blocks and FLUX.2's double blocks (``attn``)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,  # (B, L_image, C); single blocks: the joint (B, L_text + L_image, C)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, L_text, C), double blocks
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin (L_text + L_image, D)
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Double blocks: the attended image and text tokens, projected out; single blocks: the attended joint
        stream (B, L, H*D), which the block projects."""
        if attention_mask is not None:
            raise ValueError("FLUX attention takes no mask (every text token is attended to, as released)")
        q, k, v = (heads(project(hidden_states), attn.head_dim) for project in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        text_len = 0
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            text_q, text_k, text_v = (heads(project(encoder_hidden_states), attn.head_dim) for project in added)
            text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
            q, k, v = torch.cat([text_q, q], 1), torch.cat([text_k, k], 1), torch.cat([text_v, v], 1)
        q, k = with_rotary(q, k, image_rotary_emb)
        out = self.attend(q, k, v, text_len).flatten(2).to(q.dtype)  # (B, L, H*D), text first
        if encoder_hidden_states is None:
            return out
        image = attn.to_out[1](attn.to_out[0](out[:, text_len:]))  # to_out[1] is dropout
        return image, attn.to_add_out(out[:, :text_len])


def use_flux_attention(attentions: list[nn.Module]) -> None:
    """Give each of FLUX's ``attn`` modules (double blocks; FLUX.1's single blocks) a :class:`FluxJointAttention`."""
    for attn in attentions:
        attn.set_processor(FluxJointAttention())
