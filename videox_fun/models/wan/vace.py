"""Wan VACE (Wan2.1-VACE-1.3B / 14B, Wan2.2-VACE-Fun-A14B): the Wan DiT with a context stream beside it.

VACE adds, in the released key names:

- ``vace_patch_embedding``: a Conv3d (``vace_in_dim`` = 96 -> dim) over the VACE context, which the
  pipeline builds as 16 inactive + 16 reactive latent channels + 64 mask channels
  (:mod:`videox_fun.pipelines.vace`);
- ``vace_blocks.N``: Wan blocks, one per entry of ``vace_layers`` (every 2nd of 30 layers for 1.3B,
  every 5th of 40 for 14B and VACE-Fun). The first adds the video tokens through ``before_proj``;
  each turns its output into a *hint* through ``after_proj``;
- hint ``n`` is added, scaled by ``vace_context_scale``, to the output of main block ``vace_layers[n]``.

The main blocks, head and embeddings are :class:`WanTransformer3DModel`'s; this module only adds the
stream and the hints through the block-runner seam (``run_blocks``), so step caches and memory modes
attach as they do to any Wan model. The hints are computed when the stack starts running, from its
input tokens: a step a cache skips skips the VACE stream too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..loading import CheckpointMismatchError
from .keys import CLIP_DIM
from .transformer import WanAttentionBlock, WanTransformer3DModel

logger = logging.getLogger(__name__)

VACE_IN_DIM = 96  # 16 inactive + 16 reactive latent channels + 64 mask channels (8 x 8 pixel-unshuffled)
VACE_KEY = "vace_patch_embedding.weight"  # present in every VACE checkpoint


def every_nth_layer(num_layers: int, step: int) -> list[int]:
    """The VACE layers of the releases: 0, step, 2 * step, ... below ``num_layers``."""
    return list(range(0, num_layers, step))


def is_vace_config(config: Mapping[str, Any]) -> bool:
    """Whether a transformer config describes a VACE model (``vace_layers`` set, or ``model_type: vace``)."""
    return bool(config.get("vace_layers")) or config.get("model_type") == "vace"


def vace_layers_from_weights(num_blocks: int, num_layers: int) -> list[int]:
    """The layers of ``num_blocks`` VACE blocks spread evenly over ``num_layers`` (how every release places them).

    For a checkpoint whose config.json does not list ``vace_layers`` (ComfyUI single files, for one).
    """
    if num_blocks < 1 or num_layers % num_blocks:
        raise CheckpointMismatchError(
            f"{num_blocks} VACE blocks cannot be spread evenly over {num_layers} layers: "
            "give vace_layers in the transformer's config.json"
        )
    return every_nth_layer(num_layers, num_layers // num_blocks)


def vace_config_from_weights(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``vace_layers`` and ``vace_in_dim`` that a checkpoint's weights imply and its config lacks.

    state: key -> tensor (or a header's meta tensor; any value without a shape gives the layers only).
    Returns {} for a non-VACE checkpoint or a config that says it all.
    """
    if VACE_KEY not in state:
        return {}
    found: dict[str, Any] = {}
    if not config.get("vace_layers"):
        count = sum(1 for name in state if name.startswith("vace_blocks.") and name.endswith(".after_proj.weight"))
        found["vace_layers"] = vace_layers_from_weights(count, config["num_layers"])
    shape = getattr(state[VACE_KEY], "shape", None)
    if config.get("vace_in_dim") is None and shape is not None:
        found["vace_in_dim"] = int(shape[1])
    if found:
        logger.info("checkpoint carries a VACE stream that config.json does not describe; using %s", found)
    return found


class VaceBlock(WanAttentionBlock):
    """A Wan block of the VACE stream (``vace_blocks.N``): the block's math, plus the two projections.

    ``before_proj`` (the first block only) brings the video tokens into the stream; ``after_proj``
    turns the block's output into the hint for the main block at the same layer. Both start at zero,
    as the release initialises them: a fresh VACE stream leaves the base model unchanged.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        first: bool = False,
    ):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        if first:
            self.before_proj = zero_linear(dim)
        self.after_proj = zero_linear(dim)

    def forward(  # type: ignore[override]
        self,
        stream: torch.Tensor,
        x: torch.Tensor,
        e: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """stream (B, L, C) VACE tokens, x (B, L, C) video tokens -> (the stream after the block, its hint)."""
        if hasattr(self, "before_proj"):
            stream = self.before_proj(stream) + x
        stream = super().forward(stream, e, context, context_img, rope, context_bias)
        return stream, self.after_proj(stream)


def zero_linear(dim: int) -> nn.Linear:
    """A dim -> dim linear with zero weight and bias."""
    linear = nn.Linear(dim, dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


@dataclass
class _VaceCall:
    """What one forward pass hands to the block runner: the embedded context and the scales, then the hints."""

    tokens: torch.Tensor  # (B, L, C) the patch-embedded VACE context
    scales: list[float]  # one per VACE layer
    hints: list[torch.Tensor | None] = field(default_factory=list)  # (B, L, C) each, once the stack starts


class WanVACETransformer3DModel(WanTransformer3DModel):
    """A Wan DiT with the VACE context stream. Constructor fields are those of the released ``config.json``
    (``vace_layers``, ``vace_in_dim`` besides Wan's); ``model_type`` is ``vace`` (Wan2.1) or ``t2v`` (VACE-Fun)."""

    _no_split_modules = ("WanAttentionBlock", "VaceBlock")
    original_class_name = "VaceWanModel"
    # The VACE blocks run before the main ones in every pass: offload and block swap see them in that order.
    _block_lists = ("vace_blocks", "blocks")
    # The VACE context is per token, read by run_blocks beside its arguments: sequence parallelism splits it too.
    _sequence_side_streams = "sharded_side_streams"

    @register_to_config
    def __init__(
        self,
        vace_layers: Sequence[int] | None = None,
        vace_in_dim: int | None = None,
        model_type: str = "vace",
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
        if model_type not in ("vace", "t2v"):
            raise ValueError(f"a VACE model is text-to-video based (model_type vace or t2v), got {model_type!r}")
        # The main stack is a T2V one (no CLIP branch); the release's own class hard-codes this too.
        super().__init__(
            "t2v", patch_size, text_len, in_dim, dim, ffn_dim, freq_dim, text_dim, out_dim, num_heads, num_layers,
            window_size, qk_norm, cross_attn_norm, eps, add_ref_conv, in_dim_ref_conv, add_control_adapter,
            in_dim_control_adapter, rope_theta, image_dim, downscale_factor_control_adapter,
        )  # fmt: skip
        # The base class's own registration just recorded model_type t2v: the config keeps the release's.
        self.register_to_config(model_type=model_type)
        layers = every_nth_layer(num_layers, 2) if vace_layers is None else [int(i) for i in vace_layers]
        check_vace_layers(layers, num_layers)
        # The release defaults vace_in_dim to in_dim; every released checkpoint says 96.
        self.vace_patch_embedding = nn.Conv3d(
            in_dim if vace_in_dim is None else vace_in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.vace_blocks = nn.ModuleList(
            VaceBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, first=index == 0)
            for index in range(len(layers))
        )
        self.hint_slots = {layer: slot for slot, layer in enumerate(layers)}  # main layer -> its hint
        self._vace_call: _VaceCall | None = None

    @property
    def vace_layers(self) -> list[int]:
        """The main layers that receive a hint, in VACE-block order."""
        return list(self.hint_slots)

    def embed_vace(self, vace_context: torch.Tensor) -> torch.Tensor:
        """vace_context (B, vace_in_dim, F, H, W) -> tokens (B, L, C), on the same grid as the video's."""
        if vace_context.shape[1] != self.vace_patch_embedding.in_channels:
            raise ValueError(
                f"the VACE context has {vace_context.shape[1]} channels, the model takes "
                f"{self.vace_patch_embedding.in_channels} (inactive + reactive latents + 64 mask channels)"
            )
        dtype = self.vace_patch_embedding.weight.dtype
        return self.vace_patch_embedding(vace_context.to(dtype)).flatten(2).transpose(1, 2)  # (B, L, C)

    def context_scales(self, scale: float | Sequence[float]) -> list[float]:
        """One hint scale per VACE layer from one number or a list (diffusers' per-layer ``conditioning_scale``)."""
        scales = [float(scale)] * len(self.hint_slots) if isinstance(scale, (int, float)) else [float(s) for s in scale]
        if len(scales) != len(self.hint_slots):
            raise ValueError(
                f"vace_context_scale has {len(scales)} values, the model has {len(self.hint_slots)} VACE layers"
            )
        return scales

    @contextlib.contextmanager
    def _hinting(self, tokens: torch.Tensor, scales: list[float]) -> Iterator[None]:
        """Hand the embedded context to :meth:`run_blocks` for one forward pass (its signature is the seam's,
        which runtime hooks call with the main stack's arguments only)."""
        self._vace_call = _VaceCall(tokens, scales)
        try:
            yield
        finally:
            self._vace_call = None

    @contextlib.contextmanager
    def sharded_side_streams(self, shard: Callable[[torch.Tensor, int], torch.Tensor]) -> Iterator[None]:
        """While the block runner runs on this rank's chunk of the tokens: the VACE context tokens (B, L, C) cut
        by ``shard`` (a tensor and its token dimension -> the chunk) the same way, so the stream and its hints
        line up with the video tokens they meet (sequence parallelism's seam)."""
        call = self._vace_call
        if call is None:  # no forward pass under way: nothing to split
            yield
            return
        whole = call.tokens
        call.tokens = shard(whole, 1)  # (B, chunk, C)
        try:
            yield
        finally:
            call.tokens = whole

    def vace_hints(
        self,
        stream: torch.Tensor,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The VACE stream (B, L, C) through every VACE block, beside the video tokens x (B, L, C): one hint each."""
        hints = []
        for block in self.vace_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                stream, hint = self._gradient_checkpointing_func(
                    block, stream, x, e0, context, context_img, rope, context_bias
                )
            else:
                stream, hint = block(stream, x, e0, context, context_img, rope, context_bias)
            hints.append(hint)
        return hints

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
        """The main stack (B, L, C) -> (B, L, C), or its ``blocks`` slice, each hinted layer followed by its hint.

        A slice that starts the stack computes the hints from its input tokens; later slices (the
        first-block cache asks for the rest after block 0) reuse them.
        """
        call = self._vace_call
        if call is None:
            raise RuntimeError("a VACE model's blocks run inside its forward, which gives them the VACE context")
        if call.tokens.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"the VACE stream has {call.tokens.shape[1]} tokens, the video {x.shape[1]}: a hook that splits the "
                "tokens must split the VACE stream too (through sharded_side_streams)"
            )
        start, stop, _ = blocks.indices(len(self.blocks))
        if start == 0:
            call.hints = self.vace_hints(call.tokens, x, e0, context, context_img, rope, context_bias)
        for index in range(start, stop):
            x = super().run_blocks(x, e0, context, context_img, rope, context_bias, blocks=slice(index, index + 1))
            slot = self.hint_slots.get(index)
            if slot is not None:
                x = x + call.hints[slot] * call.scales[slot]
                call.hints[slot] = None  # each hint serves one layer once: let it go as the stack moves on
        return x

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        vace_context: torch.Tensor | None = None,
        vace_context_scale: float | Sequence[float] = 1.0,
        clip_fea: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        camera: torch.Tensor | None = None,
        ref_latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of x (B, 16, F, H, W) given the VACE context (B, 96, F, H, W).

        The context has the latents' frame count, reference frames included (the pipeline prepends
        them to both). ``vace_context_scale`` scales every hint (one number) or each (one per layer).
        Other arguments as :meth:`WanTransformer3DModel.forward`.
        """
        if vace_context is None:
            raise ValueError(
                f"a VACE model needs vace_context (B, {self.vace_patch_embedding.in_channels}, F, H, W); for text "
                "to video the pipeline builds one from an empty video and a full mask"
            )
        if vace_context.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the VACE context covers {tuple(vace_context.shape[2:])} (frames, height, width), the latents "
                f"{tuple(x.shape[2:])}: reference frames go in front of both"
            )
        with self._hinting(self.embed_vace(vace_context), self.context_scales(vace_context_scale)):
            return super().forward(x, t, context, clip_fea, y, camera, ref_latent)


def transformer_class_for(config: Mapping[str, Any]) -> type[WanTransformer3DModel]:
    """The class that builds a transformer config: the VACE model for a VACE config, the Animate model for an
    Animate one (``model_type: animate``), else the plain Wan DiT."""
    from .animate import WanAnimateTransformer3DModel, is_animate_config

    if is_animate_config(config):
        return WanAnimateTransformer3DModel
    return WanVACETransformer3DModel if is_vace_config(config) else WanTransformer3DModel


def check_vace_layers(layers: Sequence[int], num_layers: int) -> None:
    """VACE layers must be increasing, inside the stack and start at 0 (the block with ``before_proj``)."""
    if not layers or layers[0] != 0 or list(layers) != sorted(set(layers)) or layers[-1] >= num_layers:
        raise ValueError(
            f"vace_layers must be increasing layer indices from 0 below num_layers {num_layers}, got {list(layers)}"
        )
