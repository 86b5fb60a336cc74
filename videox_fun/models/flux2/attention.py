"""FLUX.2's single-block ("parallel") attention, through the package's one attention dispatch.

The math is diffusers' ``Flux2ParallelSelfAttnProcessor``: one fused projection gives q / k / v and the SwiGLU MLP's
input, RMS q / k norms, the rotary table over the joint text + image stream, and one fused output projection of the
attended tokens beside the MLP's. Its double blocks use FLUX.1's :class:`~..flux.attention.FluxJointAttention` (the
same math as diffusers' ``Flux2AttnProcessor``). The softmax attention runs in
:meth:`~..attention.AttentionSeam.attend`, the seam sequence parallelism replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import AttentionSeam
from ..flux.attention import heads, use_flux_attention, with_rotary


class Flux2ParallelAttention(AttentionSeam):
    """An attention processor for FLUX.2's single blocks (``attn``, a ``Flux2ParallelSelfAttention``)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,  # (B, L_text + L_image, C): the joint stream
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin (L, D)
    ) -> torch.Tensor:
        """The block's update of the joint stream (B, L, C): attention and MLP through the fused output."""
        if attention_mask is not None:
            raise ValueError("FLUX.2 attention takes no mask (every text token is attended to, as released)")
        fused = attn.to_qkv_mlp_proj(hidden_states)  # (B, L, 3 * inner + MLP in)
        qkv, mlp = fused.split([3 * attn.inner_dim, fused.shape[-1] - 3 * attn.inner_dim], dim=-1)
        q, k, v = (heads(part, attn.head_dim) for part in qkv.chunk(3, dim=-1))
        q, k = with_rotary(attn.norm_q(q), attn.norm_k(k), image_rotary_emb)
        out = self.attend(q, k, v).flatten(2).to(q.dtype)  # (B, L, H*D)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


def use_flux2_attention(double_blocks: list[nn.Module], single_blocks: list[nn.Module]) -> None:
    """Give FLUX.2's blocks the package's processors: FLUX's joint one in double blocks, the parallel one in
    single blocks."""
    use_flux_attention([block.attn for block in double_blocks])
    for block in single_blocks:
        block.attn.set_processor(Flux2ParallelAttention())
