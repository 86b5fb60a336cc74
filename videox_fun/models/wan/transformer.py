"""The Wan DiT (Wan2.1, Wan2.2 and the alibaba-pai Fun extensions) in the original key format.

Parameter names follow the released checkpoints (``blocks.N.self_attn.q``, ``head.head``...),
so a Wan-AI / alibaba-pai folder loads as it is; diffusers-format folders are converted on
load (see :mod:`videox_fun.models.wan.keys`). The forward pass is only the math: caching,
offload, parallelism and compilation attach from :mod:`videox_fun.runtime`.

Fun extensions, chosen by the config:
- InP / Control: more input channels (``in_dim``), concatenated by the pipeline as ``y``.
- Control V1.1: ``ref_conv`` embeds a reference-image latent as an extra frame of tokens.
- Control-Camera: ``control_adapter`` adds Pluecker-ray features after the patch embedding.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...config import read_json_mapping
from ..attention import attention
from ..loading import (
    FORMAT_MARKER_KEYS,
    cast_floating,
    load_into,
    public_config,
    read_weights_at,
    strip_prefix,
)
from .keys import (
    CLIP_DIM,
    diffusers_config_to_original,
    diffusers_module_to_original,
    diffusers_to_original_keys,
    has_clip_branch,
    is_diffusers_config,
    is_diffusers_state,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
# diffusers pipeline-level files (and LoRA-merged exports) put the component's name in front.
DIFFUSERS_PREFIXES = ("transformer.",)


def read_transformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A Wan transformer's weights from one file or a (sharded) folder, in the original key names
    (see :func:`transformer_state_to_original` for the layouts read)."""
    path = Path(path)
    return transformer_state_to_original(read_weights_at(path))


def transformer_state_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Wan transformer state (tensors, or meta tensors of a header) in the original key names.

    Reads the layouts people share: the original release (``blocks.N.self_attn.q``), ComfyUI
    single files (``model.diffusion_model.`` prefix, fp8 or not, with their format markers kept)
    and diffusers (``blocks.N.attn1.to_q``, with or without ``transformer.``), converted.
    """
    # The markers carry no wrapper prefix: set aside, they would stop the prefix from being found.
    markers = {key: state[key] for key in FORMAT_MARKER_KEYS if key in state}
    weights = {key: value for key, value in state.items() if key not in markers}
    if is_diffusers_state(weights):
        weights = diffusers_to_original_keys(strip_prefix(weights, DIFFUSERS_PREFIXES))
    else:
        weights = strip_prefix(weights, CHECKPOINT_PREFIXES)
    return {**weights, **markers}


def config_to_original(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A transformer config (a config.json's or a file's metadata) in the original field names, without
    private entries; the layout is read off the fields (diffusers' ``num_attention_heads``... or Wan's)."""
    return diffusers_config_to_original(raw) if is_diffusers_config(raw) else public_config(raw)


# ----------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------
class WanRMSNorm(nn.Module):
    """RMSNorm computed in fp32 (over the full model dim for q/k, as the release does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> (..., C), normalised over the last dim and scaled by the weight."""
        # torch's fused kernel accumulates in fp32 for half inputs and applies the weight in the same
        # pass (the release rounds to x's dtype before the weight; identical in fp32, closer in bf16).
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the storage dtype (bf16 statistics drift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> (..., C) in x's dtype, normalised in fp32."""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_embedding(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding, cos half first, computed in float64: (N,) -> (N, dim)."""
    half = dim // 2
    positions = positions.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = torch.outer(positions, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim between frame / height / width rotations (128 -> 44, 42, 42)."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


@lru_cache(maxsize=32)
def _rope_tables(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float,
    device: torch.device,
    frame_frequency: tuple[int, float] | None = None,
) -> torch.Tensor:
    tables = []
    for axis, (size, axis_dim) in enumerate(zip(grid, rope_axis_dims(head_dim), strict=True)):
        inv_freq = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
        if axis == 0 and frame_frequency is not None:
            index, value = frame_frequency
            inv_freq[index] = value
        tables.append(torch.outer(torch.arange(size, dtype=torch.float64), inv_freq))  # (size, axis_dim/2)
    f, h, w = grid
    angles = torch.cat(
        [
            tables[0][:, None, None, :].expand(f, h, w, -1),
            tables[1][None, :, None, :].expand(f, h, w, -1),
            tables[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, head_dim // 2)  # (L, D/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def riflex_frequency(num_latent_frames: int, k: int) -> tuple[int, float]:
    """RIFLEx: the k-th (1-based) frame frequency set so one period covers the video, with margin 0.9."""
    return k - 1, 0.9 * 2 * math.pi / num_latent_frames


def rope_for_grid(
    grid: tuple[int, int, int],
    head_dim: int,
    device: torch.device,
    theta: float = 10000.0,
    frame_frequency: tuple[int, float] | None = None,
) -> torch.Tensor:
    """Rotations (L, head_dim/2) complex64 for a (frames, height, width) token grid, row-major.

    frame_frequency: (index, value) replaces one frequency of the frame axis (RIFLEx).
    """
    grid = tuple(int(s) for s in grid)
    return _rope_tables(grid, head_dim, theta, torch.device(device), frame_frequency)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (B, L, H, D) by the unit complex numbers rope (L, D/2).

    One complex multiply in fp32 (as the release does it, in float64 there) instead of the
    several real kernels of the cos/sin form.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, L, H, D/2) complex
    return torch.view_as_real(pairs * rope[None, :, None, :]).flatten(-2).type_as(x)


def merge_text_padding(context: torch.Tensor, text_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Replace the zero padding of a text context by one zero row and a log-multiplicity bias.

    Wan zero-pads every prompt to ``text_len`` (512) rows and attends to all of them. Zero rows all
    embed to the same key and value, and softmax attention over m identical keys equals attention
    over one of them with ``log(m)`` added to its logit. So the result is exact while the text
    embedding and the cross-attention run on the prompt's tokens + 1 instead of 512.

    context: (B, L, D) with L <= text_len. Returns (B, L', D) and a bias (B, L') (0 for real rows,
    log(m) for the merged padding row, -inf for unused rows), or the context padded to text_len and
    None when there is no padding to merge.
    """
    length = context.shape[1]
    positions = torch.arange(length, device=context.device)
    nonzero = context.detach().abs().amax(dim=-1) > 0  # (B, L)
    real = torch.where(nonzero, positions + 1, 0).amax(dim=1)  # (B,) rows up to the last non-zero one
    padding = text_len - real  # (B,) zero rows the released model would attend to
    if int(padding.max()) == 0:
        return F.pad(context, (0, 0, 0, text_len - length)), None
    width = int(real.max()) + 1
    compact = F.pad(context[:, :width], (0, 0, 0, max(0, width - length)))  # (B, L', D)
    slots = torch.arange(width, device=context.device)[None]  # (1, L')
    compact = compact * (slots < real[:, None])[..., None]  # rows past a prompt's end are padding: zero
    merged = torch.where(padding > 0, padding.clamp(min=1).float().log(), float("-inf"))  # (B,)
    bias = torch.where(slots < real[:, None], 0.0, float("-inf"))  # (B, L')
    bias = torch.where(slots == real[:, None], merged[:, None], bias)
    return compact, bias


# ----------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------
class WanSelfAttention(nn.Module):
    """Self-attention over video tokens with 3D RoPE and q/k RMSNorm across all heads."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, H, D)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x (B, L, C), rope (L, D/2) -> (B, L, C)."""
        q = apply_rope(self.heads(self.norm_q(self.q(x))), rope)  # (B, L, H, D)
        k = apply_rope(self.heads(self.norm_k(self.k(x))), rope)
        v = self.heads(self.v(x))
        return self.o(self.attend(q, k, v).flatten(2))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, L, H, D) x3 -> (B, L, H, D); sequence parallelism replaces this to attend across ranks."""
        return attention(q, k, v)


class WanCrossAttention(WanSelfAttention):
    """Cross-attention to the text tokens; i2v models also attend to 257 CLIP image tokens."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6, with_image: bool = False):
        super().__init__(dim, num_heads, qk_norm, eps)
        if with_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None = None,
        context_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, C), context (B, L_text, C), context_img (B, 257, C), context_bias (B, L_text) -> (B, L, C)."""
        q = self.heads(self.norm_q(self.q(x)))  # (B, L, H, D)
        k = self.heads(self.norm_k(self.k(context)))  # (B, L_text, H, D)
        out = attention(q, k, self.heads(self.v(context)), bias=context_bias)
        if context_img is not None:
            k_img = self.heads(self.norm_k_img(self.k_img(context_img)))  # (B, 257, H, D)
            out = out + attention(q, k_img, self.heads(self.v_img(context_img)))
        return self.o(out.flatten(2))


# ----------------------------------------------------------------------------------------
# Transformer block, head and Fun adapters
# ----------------------------------------------------------------------------------------
def modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, in fp32 (one fused kernel)."""
    return torch.addcmul(shift, normed.float(), 1 + scale)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate, accumulated in fp32 and stored in x's dtype."""
    return torch.addcmul(x.float(), y.float(), gate).type_as(x)


class WanAttentionBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated GELU(tanh) FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        with_image: bool = False,
    ):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, qk_norm, eps, with_image=with_image)
        self.norm2 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, L, C); e: (B, 1 or L, 6, C) fp32 time projection; context: (B, L_text, C).

        context_bias: (B, L_text) additive logits of the text keys (merged padding), or None.
        """
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float().unsqueeze(0) + e).unbind(2)
        y = self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa).type_as(x), rope)
        x = gated_residual(x, y, gate_sa)
        x = x + self.cross_attn(self.norm3(x), context, context_img, context_bias)
        y = self.ffn(modulate(self.norm2(x), shift_ff, scale_ff).type_as(x))
        return gated_residual(x, y, gate_ff)


class WanHead(nn.Module):
    """Final modulated LayerNorm + linear back to patch pixels of the latent."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C); e: (B, 1 or L, C) fp32 time embedding -> (B, L, prod(patch) * out_dim)."""
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(modulate(self.norm(x), shift, scale).type_as(x))


class WanImageProjection(nn.Module):
    """Projects 1280-d CLIP tokens into the model dim (``img_emb.proj.{0,1,3,4}``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """clip_tokens (B, 257, in_dim) -> (B, 257, out_dim)."""
        return self.proj(clip_tokens)


class CameraResidualBlock(nn.Module):
    """conv-relu-conv with a skip, as in the Fun Control-Camera adapter."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) -> (N, C, H, W)."""
        return x + self.conv2(F.relu(self.conv1(x)))


def camera_downscale(out_dim: int) -> int:
    """The Control-Camera adapter's pixel-unshuffle factor the releases use: their VAE's spatial compression
    (16 for the Wan2.2 VAE's 48 latent channels, Wan2.2-Fun-5B; 8 for Wan2.1's 16), so the rays meet the
    latent grid."""
    return 16 if out_dim == 48 else 8


class CameraAdapter(nn.Module):
    """Pluecker rays (B, 24, F_lat, H, W) at pixel size -> (B, dim, F_lat, H/(downscale*2), W/(downscale*2))
    token features."""

    def __init__(self, in_dim: int, dim: int, patch: tuple[int, int], downscale: int = 8, num_blocks: int = 1):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(downscale)
        self.conv = nn.Conv2d(in_dim * downscale * downscale, dim, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(*[CameraResidualBlock(dim) for _ in range(num_blocks)])

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        """rays (B, in_dim, F, H, W) -> (B, dim, F, H / (downscale * patch), W / (downscale * patch))."""
        b, c, f, h, w = rays.shape
        frames = rays.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, C, H, W)
        feats = self.residual_blocks(self.conv(self.unshuffle(frames)))  # (B*F, dim, h', w')
        return feats.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4)  # (B, dim, F, h', w')


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
class RunBlocks(Protocol):
    """The signature of :meth:`WanTransformer3DModel.run_blocks`, the seam runtime hooks replace on an instance."""

    def __call__(
        self,
        x: torch.Tensor,  # (B, L, C) tokens
        e0: torch.Tensor,  # (B, 1 or L, 6, C) fp32 time projection
        context: torch.Tensor,  # (B, L_text, C) embedded text
        context_img: torch.Tensor | None,  # (B, 257, C) embedded CLIP tokens
        rope: torch.Tensor,  # (L, D/2) complex rotations
        context_bias: torch.Tensor | None = None,  # (B, L_text) text-key logits
        blocks: slice = slice(None),  # the part of the stack to run
    ) -> torch.Tensor:
        """The tokens (B, L, C) after the ``blocks`` slice of the block stack."""
        ...


class WanTransformer3DModel(ModelMixin, ConfigMixin):
    """The Wan video DiT. Constructor fields are those of the released ``config.json``."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    _no_split_modules = ("WanAttentionBlock",)
    # Extension points the runtime features read (videox_fun.runtime.points): where the block stack
    # is, which block class repeats, what TeaCache may compare across steps, and the seam that runs
    # the stack (step caches and sequence parallelism wrap it). fp8 stores every block linear:
    # nothing inside the blocks is skipped (modulation and norms are not linears).
    _block_lists = ("blocks",)
    _repeated_blocks = ("WanAttentionBlock",)
    _cache_indicators: ClassVar[dict[str, str]] = {
        "time_embedding": "time_embedding",
        "time_projection": "time_projection",
    }
    _fp8_skip_modules = ()
    _block_runner = "run_blocks"
    original_class_name: ClassVar[str] = "WanModel"  # the release's class, written in config.json

    @register_to_config
    def __init__(
        self,
        model_type: str = "t2v",
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 16,
        dim: int = 2048,
        ffn_dim: int = 8192,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 16,
        num_layers: int = 32,
        window_size: tuple[int, int] = (-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        add_ref_conv: bool = False,
        in_dim_ref_conv: int = 16,
        add_control_adapter: bool = False,
        in_dim_control_adapter: int = 24,
        rope_theta: float = 10000.0,
        image_dim: int | None = CLIP_DIM,
        downscale_factor_control_adapter: int | None = None,
    ):
        super().__init__()
        if model_type not in ("t2v", "i2v", "ti2v", "flf2v"):
            raise ValueError(f"model_type must be t2v, i2v, ti2v or flf2v, got {model_type!r}")
        if tuple(window_size) != (-1, -1):
            raise NotImplementedError("local-window attention (window_size != (-1, -1)) is not in any release")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.patch_size = tuple(patch_size)
        with_image = has_clip_branch(model_type, image_dim)
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            WanAttentionBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, with_image)
            for _ in range(num_layers)
        )
        self.head = WanHead(dim, out_dim, self.patch_size, eps)
        if with_image:
            self.img_emb = WanImageProjection(image_dim, dim)
        if add_ref_conv:
            self.ref_conv = nn.Conv2d(in_dim_ref_conv, dim, kernel_size=self.patch_size[1:], stride=self.patch_size[1:])
        if add_control_adapter:
            # VideoX-Fun's field; a config without it gets the releases' factor for its VAE (16 for Wan2.2-Fun-5B).
            downscale = downscale_factor_control_adapter or camera_downscale(out_dim)
            self.control_adapter = CameraAdapter(in_dim_control_adapter, dim, self.patch_size[1:], downscale)
        self.gradient_checkpointing = False

    # -- properties used by pipelines ---------------------------------------------------
    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.config.dim // self.config.num_heads

    @property
    def uses_clip(self) -> bool:
        """Whether cross-attention expects 257 CLIP image tokens (Wan2.1 i2v and Fun releases)."""
        return hasattr(self, "img_emb")

    # -- pieces of forward, kept apart so runtime hooks can wrap them -------------------
    def embed_time(self, t: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t: (B,) or per-token (B, L) in [0, 1000] -> e (B, 1|L, C) and e0 (B, 1|L, 6, C), fp32."""
        per_token = t if t.dim() == 2 else t[:, None]  # (B, 1|L)
        if per_token.shape[1] not in (1, num_tokens):
            raise ValueError(f"per-token timesteps have length {per_token.shape[1]}, the video has {num_tokens} tokens")
        sin = sinusoidal_embedding(self.config.freq_dim, per_token.flatten())  # (B*L, freq_dim)
        weight_dtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(sin.to(weight_dtype)).float()  # (B*L, C)
        e0 = self.time_projection(e.to(weight_dtype)).float()  # (B*L, 6C)
        e = e.unflatten(0, per_token.shape)  # (B, 1|L, C)
        return e, e0.unflatten(0, per_token.shape).unflatten(-1, (6, self.config.dim))

    def embed_context(
        self, context: torch.Tensor, clip_fea: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Text (B, L<=text_len, text_dim), zero-padded to text_len as released; CLIP (B, 257, 1280).

        Returns the embedded text (B, L', C), the CLIP tokens (B, 257, C) or None, and the text-key bias
        (B, L') of :func:`merge_text_padding` or None.
        """
        if context.shape[1] > self.config.text_len:
            raise ValueError(f"text context has {context.shape[1]} tokens, more than text_len {self.config.text_len}")
        context, bias = merge_text_padding(context, self.config.text_len)
        dtype = self.text_embedding[0].weight.dtype
        text = self.text_embedding(context.to(dtype))  # (B, L', C)
        if not self.uses_clip:
            return text, None, bias
        if clip_fea is None:
            raise ValueError(
                f"this Wan variant has an image (CLIP) branch: pass clip_fea (B, 257, {self.config.image_dim}); "
                "the pipeline passes zeros when no image is given"
            )
        return text, self.img_emb(clip_fea.to(dtype)), bias

    def embed_video(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        camera: torch.Tensor | None,
        ref_latent: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[int, int, int], int]:
        """Latents (+ conditions) -> tokens (B, L, C), the token grid, and the number of prefix tokens."""
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        if x.shape[1] != self.config.in_dim:
            raise ValueError(
                f"the transformer takes {self.config.in_dim} input channels (latent + conditions), got {x.shape[1]}: "
                f"check that the mode matches the variant (see videox_fun.models.wan.variants)"
            )
        dtype = self.patch_embedding.weight.dtype
        tokens = self.patch_embedding(x.to(dtype))  # (B, C, F, h, w)
        if camera is not None:
            if not hasattr(self, "control_adapter"):
                raise ValueError(
                    "camera input given, but this variant has no control_adapter (use a Control-Camera model)"
                )
            tokens = tokens + self.control_adapter(camera.to(dtype))
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, L, C)
        prefix = 0
        if ref_latent is not None:
            if not hasattr(self, "ref_conv"):
                raise ValueError("ref_latent given, but this variant has no ref_conv (use a Fun V1.1 Control model)")
            ref = self.ref_conv(ref_latent.to(dtype)).flatten(2).transpose(1, 2)  # (B, h*w, C)
            tokens = torch.cat([ref, tokens], dim=1)
            grid = (grid[0] + 1, grid[1], grid[2])  # the reference is frame 0 for RoPE
            prefix = ref.shape[1]
        return tokens, grid, prefix

    def enable_riflex(self, k: int) -> None:
        """RIFLEx: lower the k-th (1-based) frame frequency of the RoPE so one period covers the whole
        video (margin 0.9), and longer videos than trained do not wrap around (6 for Wan2.1 at 81 frames)."""
        head_dim, theta = self.head_dim, self.config.rope_theta
        frame_frequencies = rope_axis_dims(head_dim)[0] // 2
        if not 1 <= k <= frame_frequencies:
            raise ValueError(
                f"--riflex-k must be between 1 and {frame_frequencies} (the frame frequencies of this model's RoPE, "
                f"head_dim {head_dim}), got {k}"
            )

        @functools.wraps(self.rotary)
        def rotary(grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
            return rope_for_grid(grid, head_dim, device, theta, frame_frequency=riflex_frequency(int(grid[0]), k))

        self.rotary = rotary

    def disable_riflex(self) -> None:
        """Back to the trained RoPE."""
        if "rotary" in self.__dict__:
            del self.rotary

    def published_cache_coefficients(self, indicator: str, two_experts: bool) -> tuple[list[float] | None, str]:
        """TeaCache coefficients published for this architecture (None when none), and a hint for the error."""
        from .teacache import coefficients_for_architecture

        return coefficients_for_architecture(self.config, indicator, two_experts)

    def rotary(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """RoPE rotations (L, head_dim/2) of a token grid; RIFLEx replaces this method."""
        return rope_for_grid(grid, self.head_dim, device, self.config.rope_theta)

    def run_blocks(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
        blocks: slice = slice(None),
    ) -> torch.Tensor:
        """The block stack (B, L, C) -> (B, L, C), or the ``blocks`` slice of it.

        The seam runtime hooks wrap: step caches replace its result, sequence parallelism shards
        its tokens. A hook that needs part of the stack (the first-block cache) asks for a slice
        through this method, so the hooks under it still apply.
        """
        for block in self.blocks[blocks]:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, e0, context, context_img, rope, context_bias)
            else:
                x = block(x, e0, context, context_img, rope, context_bias)
        return x

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, L, prod(patch) * C_out) -> (B, C_out, F, H, W)."""
        (pf, ph, pw), (f, h, w) = self.patch_size, grid
        x = tokens.reshape(tokens.shape[0], f, h, w, pf, ph, pw, self.config.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(tokens.shape[0], self.config.out_dim, f * pf, h * ph, w * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        camera: torch.Tensor | None = None,
        ref_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        x: (B, C_lat, F, H, W) noisy latents; t: (B,) or per-token (B, L) timesteps in [0, 1000];
        context: (B, L_text, text_dim); clip_fea: (B, 257, 1280) for i2v variants;
        y: (B, in_dim - C_lat, F, H, W) conditioning channels; camera: (B, 24, F, 8H, 8W) Pluecker
        rays (Control-Camera); ref_latent: (B, 16, H, W) reference latent (Control V1.1).
        Returns (B, out_dim, F, H, W).
        """
        tokens, grid, prefix = self.embed_video(x, y, camera, ref_latent)
        if t.dim() == 2 and prefix:  # the reference tokens take the last token's timestep, as VideoX-Fun's
            t = torch.cat([t[:, -1:].expand(-1, prefix), t], dim=1)
        e, e0 = self.embed_time(t, tokens.shape[1])
        context, context_img, context_bias = self.embed_context(context, clip_fea)
        rope = self.rotary(grid, tokens.device)
        tokens = self.run_blocks(tokens, e0, context, context_img, rope, context_bias)
        tokens = self.head(tokens, e)[:, prefix:]
        return self.unpatchify(tokens, (grid[0] - (1 if prefix else 0), grid[1], grid[2]))

    # -- loading -----------------------------------------------------------------------
    @staticmethod
    def lora_module_name(name: str) -> str | None:
        """A LoRA file's module name in diffusers' layout -> ours (None when it names no module of ours)."""
        return diffusers_module_to_original(name)

    @staticmethod
    def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
        """Weights for this class from a file or (sharded) folder in any layout people share
        (``--transformer-path``): see :func:`read_transformer_weights`."""
        return read_transformer_weights(path)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        **config_overrides: Any,
    ) -> WanTransformer3DModel:
        """Load a released folder (original Wan layout or diffusers layout, single or sharded).

        Every key and shape is checked; a mismatch raises ``CheckpointMismatchError`` naming the keys.
        """
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        raw = read_json_mapping(config_path, "transformer config")
        state = read_transformer_weights(folder)
        config = config_to_original(raw)
        config.update(config_overrides)
        config.update(infer_fun_extras(state, config))
        with torch.device("meta"):
            model = cls.class_for_config(config).from_config(config)
        # Cast before loading: the meta-built model takes the tensors as they are (no second copy).
        load_into(model, cast_floating(state, torch_dtype), source=str(folder))
        return model.to(device).eval()

    @classmethod
    def class_for_config(cls, config: Mapping[str, Any]) -> type[WanTransformer3DModel]:
        """The class that builds ``config``: this one, or from the plain Wan DiT the subclass a config calls
        for (VACE, with ``vace_layers``), so a folder loads as what it is."""
        if cls is not WanTransformer3DModel:
            return cls
        from .vace import transformer_class_for

        return transformer_class_for(config)

    def save_original(self, folder: str | Path, max_shard_bytes: int = 10 * 2**30) -> None:
        """Write the original (Wan-AI / alibaba-pai) layout: config.json + (sharded) safetensors."""
        from ..loading import save_sharded

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = public_config(self.config)
        config = {"_class_name": self.original_class_name, **config}
        with open(folder / "config.json", "w") as f:
            json.dump(config, f, indent=2)
        save_sharded(self.state_dict(), folder, max_shard_bytes)


def infer_fun_extras(state: dict[str, torch.Tensor], config: dict) -> dict:
    """What the weights say and config.json does not: Fun extras (enabled, with a note), a CLIP-less
    i2v (Wan2.2 I2V-A14B keeps ``model_type: i2v`` but ships no ``img_emb``), a VACE stream, and Animate."""
    from .animate import animate_config_from_weights
    from .vace import vace_config_from_weights

    found = {}
    clip_declared = has_clip_branch(config.get("model_type", "t2v"), config.get("image_dim", CLIP_DIM))
    if clip_declared and not any(key.startswith("img_emb.") for key in state):
        found["image_dim"] = None
    if "ref_conv.weight" in state and not config.get("add_ref_conv"):
        found["add_ref_conv"] = True
        found["in_dim_ref_conv"] = state["ref_conv.weight"].shape[1]
    if "control_adapter.conv.weight" in state and not config.get("add_control_adapter"):
        found["add_control_adapter"] = True
        downscale = config.get("downscale_factor_control_adapter") or camera_downscale(config["out_dim"])
        found["in_dim_control_adapter"] = state["control_adapter.conv.weight"].shape[1] // downscale**2
    if found:
        logger.info("checkpoint carries Fun extras not named in config.json; enabling %s", found)
    return {**found, **vace_config_from_weights(state, config), **animate_config_from_weights(state, config)}
