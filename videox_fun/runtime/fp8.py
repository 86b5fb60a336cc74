"""float8 weight storage for the transformer blocks' linear layers, plain or scaled.

Which layers: the linears inside the model's declared ``_block_lists`` and ``_fp8_side_modules`` less its
``_fp8_skip_modules`` (:mod:`videox_fun.runtime.points`). Which models: the pipeline's transformers and the
components declared to run beside them (a Fun control stream), :func:`fp8_stored_models`.

Weights are stored as ``float8_e4m3fn`` (1 byte) and widened to the input's dtype for the
matmul; biases, embeddings, norms and modulation stay in high precision. The *scaled* variant
keeps a per-tensor or per-output-channel scale (amax / 448) so small weights use the whole fp8
range instead of falling into its subnormals; it is also how ComfyUI's ``*_fp8_scaled``
single-file checkpoints store Wan (``weight`` in fp8 + ``scale_weight``), which load here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..models.loading import FORMAT_MARKER_KEYS, load_into
from . import points

if TYPE_CHECKING:
    from ..families import Pipeline

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def is_fp8(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state stores weights in float8 (ComfyUI's ``*_fp8_e4m3fn*`` / ``*_fp8_scaled`` files)."""
    return any(t.dtype == FP8 for t in state.values()) or any(k in FORMAT_MARKER_KEYS for k in state)


class Float8Linear(nn.Module):
    """``nn.Linear`` with its weight stored in float8 (and an optional ``scale_weight``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale_shape: tuple | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if scale_shape is not None:
            self.register_buffer("scale_weight", torch.ones(scale_shape))
        else:
            self.scale_weight = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scaled: bool = False, per_channel: bool = False) -> Float8Linear:
        """Quantise a linear layer; ``scaled`` keeps amax/448 per tensor (or per output row)."""
        weight = linear.weight.detach().float()
        scale_shape = ((weight.shape[0], 1) if per_channel else ()) if scaled else None
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, scale_shape)
        layer.to(linear.weight.device)
        layer.store_weight(weight)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def store_weight(self, weight: torch.Tensor) -> None:
        """Quantise a full-precision (out, in) weight into this layer, refitting its scale if it has one."""
        weight = weight.detach().float()
        if self.scale_weight is not None:
            per_channel = self.scale_weight.numel() > 1
            amax = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().amax()
            scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
            self.scale_weight.copy_(scale.reshape(self.scale_weight.shape))
            weight = weight / scale
        self.weight.data = weight.clamp(-FP8_MAX, FP8_MAX).to(FP8)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype`` (times its scale)."""
        weight = self.weight.to(dtype)
        return weight * self.scale_weight.to(dtype) if self.scale_weight is not None else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features) in x's dtype, through the dequantized weight."""
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        """The sizes and the fp8 scaling (plain, or the scale's shape) shown in the module's repr."""
        kind = "plain" if self.scale_weight is None else f"scaled {tuple(self.scale_weight.shape)}"
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 {kind}"


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def block_linears(model: nn.Module) -> list[str]:
    """Names of the linear layers inside the model's declared ``_block_lists`` and ``_fp8_side_modules`` (what
    fp8 storage applies to), less those matching its ``_fp8_skip_modules``.

    Only the repeated blocks (and block-like modules running between them, as Animate's face blocks) hold most
    of the weights; embeddings, heads and whatever the model skips stay in high precision, where rounding would
    shift every token.
    """
    feature = "fp8 storage (*_and_qfloat8)"
    stored = [*points.block_lists(model, feature), *points.fp8_side_modules(model, feature)]
    inside = {id(m) for module in stored for m in module.modules()}
    skip = points.fp8_skip(model, feature)
    return [
        name
        for name, module in model.named_modules()
        if id(module) in inside and isinstance(module, nn.Linear) and not points.fp8_skipped(name, skip)
    ]


def fp8_stored_models(pipe: Pipeline) -> list[nn.Module]:
    """The models the ``*_and_qfloat8`` modes store in fp8: the denoising transformers, and the components that run
    beside them (``_runs_beside_transformer``: a Fun control stream, part of VideoX-Fun's control transformer,
    which its qfloat8 modes store too)."""
    beside = [module for module, _ in pipe.components().values() if points.runs_beside_transformer(module)]
    return [*pipe.transformers, *beside]


def quantize_to_fp8(model: nn.Module, scaled: bool = False, per_channel: bool = False) -> nn.Module:
    """Store every block linear of a transformer (:func:`block_linears`) in float8, in place; returns the model."""
    for name in block_linears(model):
        _replace(model, name, Float8Linear.from_linear(model.get_submodule(name), scaled, per_channel))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, as stored."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def prepare_for_fp8_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn the linears that a checkpoint stores in fp8 into :class:`Float8Linear` of the right kind.

    Returns the state without the format's marker keys and input scales (we compute in high
    precision, so an activation scale has no use), each dropped with a log line, never silently.
    """
    dropped = [k for k in state if k in FORMAT_MARKER_KEYS or k.endswith(".scale_input")]
    if dropped:
        logger.info("fp8 checkpoint: not used for high-precision compute: %s", ", ".join(dropped[:4]))
    state = {k: v for k, v in state.items() if k not in dropped}
    for key, tensor in state.items():
        if not key.endswith(".weight") or tensor.dtype != FP8:
            continue
        name = key.removesuffix(".weight")
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{key} is stored in fp8 but {name} is a {type(linear).__name__}, not a linear layer")
        scale = state.get(f"{name}.scale_weight")
        layer = Float8Linear(
            linear.in_features, linear.out_features, linear.bias is not None, None if scale is None else scale.shape
        )
        _replace(model, name, layer)
    return state


def load_state_with_fp8(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load a state dict whose block linears may be stored in (scaled) fp8, strictly.

    Linears the state holds in fp8 become :class:`Float8Linear` first (ComfyUI's
    ``wan2.1_*_fp8_scaled.safetensors`` files); a full-precision state loads as it is.
    """
    return load_into(model, prepare_for_fp8_state(model, state), source=source)


def dequantize_fp8_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state with fp8 weights widened to ``dtype`` (times their ``scale_weight``), for full-precision use.

    Format markers and input scales go; the result loads into a model without :class:`Float8Linear`.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in FORMAT_MARKER_KEYS or key.endswith((".scale_input", ".scale_weight")):
            continue
        if key.endswith(".weight") and tensor.dtype == FP8:
            scale = state.get(key.removesuffix(".weight") + ".scale_weight")
            tensor = tensor.to(dtype) * (scale.to(dtype) if scale is not None else 1)
        out[key] = tensor
    return out
