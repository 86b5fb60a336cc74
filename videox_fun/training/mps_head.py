"""MPS's condition-aware head (Kolors' ``trainer/models/cross_modeling.py``, ``Cross_model``), under its key names.

MPS (Multi-dimensional Preference Score) scores an image against a prompt through CLIP-H features and
this head: the image's token features (queries) attend to the prompt's token features (context), masked
to the prompt tokens that resemble a "condition" text, in ``layer_num`` pairs of

- a cross-attention with one shared key / value head (multi-query) and a parallel SwiGLU feed-forward;
- a parallel self-attention + SwiGLU feed-forward block (PaLM style) with rotary position embeddings.

The released state (VideoX-Fun's ``MPS_overall.pth``: ``cross_model.*`` beside ``model.*`` CLIP-H) names
``layers.{i}.0.fn.*`` (cross-attention) and ``layers.{i}.1.fn.*`` (parallel block); every size is read
from the weights' shapes, so a smaller head of the same design loads too.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models.loading import count_blocks


class SwiGLU(nn.Module):
    """x, gate = halves of the last dimension -> silu(gate) * x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 2 D) -> (..., D)."""
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., 2 d) halves (x1, x2) -> (-x2, x1): the rotation of rotary embeddings."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class CrossAttention(nn.Module):
    """Queries (N, n, D) attend to a context (N, m, D) with one key / value head; plus a parallel feed-forward."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm = nn.LayerNorm(dim)  # Kolors' bias is a zero buffer: the same key, the same math
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_inner * 2, bias=False), SwiGLU(), nn.Linear(ff_inner, dim, bias=False)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, n, D), context (N, m, D) (not normalised: no context norm), mask (N, n, m) additive -> (N, n, D)."""
        x = self.norm(x)
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) * self.scale  # (N, h, n, d)
        k, v = self.to_kv(context).chunk(2, dim=-1)  # (N, m, d) each, shared by every head
        attn = (q @ k.unsqueeze(1).transpose(-1, -2) + mask.unsqueeze(1)).softmax(dim=-1)  # (N, h, n, m)
        out = (attn @ v.unsqueeze(1)).transpose(1, 2).flatten(2)  # (N, n, h d)
        return self.to_out(out) + self.ff(x)


class RotaryEmbedding(nn.Module):
    """Rotary frequencies; ``inv_freq`` is in the released state, so it is a persistent buffer."""

    def __init__(self, dim_head: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)))

    def forward(self, n: int) -> torch.Tensor:
        """Angles (n, dim_head) of positions 0..n-1, the frequencies repeated for both halves."""
        freqs = torch.arange(n, device=self.inv_freq.device, dtype=self.inv_freq.dtype)[:, None] * self.inv_freq
        return torch.cat((freqs, freqs), dim=-1)


class ParallelBlock(nn.Module):
    """One fused projection into multi-query self-attention (rotary q, k) and a SwiGLU feed-forward, summed."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.split = (heads * dim_head, dim_head, dim_head, ff_inner * 2)  # q, k, v, feed-forward
        self.norm = nn.LayerNorm(dim)
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.split), bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, n, D) -> (N, n, D) (no mask: Kolors' head calls it without one)."""
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.split, dim=-1)
        q = q.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (N, h, n, d)
        angles = self.rotary_emb(x.shape[1]).to(x.dtype)  # (n, d)
        q = (q * angles.cos() + rotate_half(q) * angles.sin()) * self.scale
        k = k * angles.cos() + rotate_half(k) * angles.sin()  # (N, n, d)
        attn = (q @ k.unsqueeze(1).transpose(-1, -2)).softmax(dim=-1)  # (N, h, n, n)
        out = (attn @ v.unsqueeze(1)).transpose(1, 2).flatten(2)  # (N, n, h d)
        return self.attn_out(out) + self.ff_out(ff)


class Residual(nn.Module):
    """fn(x, ...) + x; ``fn`` is part of the released key names."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """x (N, n, D) -> (N, n, D)."""
        return self.fn(x, *args) + x


class MPSHead(nn.Module):
    """Kolors' ``Cross_model``: ``layer_num`` x (residual cross-attention, residual parallel block)."""

    def __init__(self, dim: int, layer_num: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Residual(CrossAttention(dim, dim_head, heads, ff_inner)),
                    Residual(ParallelBlock(dim, dim_head, heads, ff_inner)),
                ]
            )
            for _ in range(layer_num)
        )

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> MPSHead:
        """The head whose sizes the state's shapes give (released: dim 1024, 4 layers, 16 heads of 64, ff 4096)."""
        dim_head = state["layers.0.0.fn.to_kv.weight"].shape[0] // 2
        inner, dim = state["layers.0.0.fn.to_q.weight"].shape
        ff_inner = state["layers.0.0.fn.ff.2.weight"].shape[1]
        return cls(dim, count_blocks(state, "layers."), dim_head, inner // dim_head, ff_inner)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """queries (N, n, D), context (N, m, D), additive mask (N, n, m) -> (N, n, D)."""
        for cross, parallel in self.layers:
            queries = parallel(cross(queries, context, mask))
        return queries
