"""Fast CPU routes for two ops that PyTorch runs slowly there: batch-1 ``conv3d`` and ``normalize``.

- PyTorch picks its native ``slow_conv3d`` (im2col + matmul) over oneDNN for a float32 batch-1
  input unless ``C * D * H`` exceeds 20,480. The Wan VAE encodes and decodes one latent frame at
  a time with a 2-frame causal cache, so every 3x3x3 convolution of a video inference lands on
  the slow path on a CPU (74 % of a tiny-model decode); oneDNN computes the same thing 2-4x faster.
- ``F.normalize`` over the channel dim of a (B, C, ...) tensor (the Wan VAE's RMS norm) reduces
  through ``linalg_vector_norm`` across a strided dim, about 70x slower on a CPU than the same
  sum of squares written as ``(x * x).sum(dim)``.

:class:`CPUFastPaths` is a function mode: inside ``with CPUFastPaths():`` eligible calls take the
fast route and everything else (other devices and dtypes, autograd for conv3d) runs unchanged;
no module is modified. ``videox-fun bench vae`` measures it against diffusers' own decode.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FLOATS = (torch.float32, torch.float64)


def _triple(value: int | Sequence[int]) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def onednn_conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor | None:
    """``torch.conv3d`` computed by oneDNN, or ``None`` where that route does not apply.

    input: (B, C, D, H, W) float32 on the CPU. Autograd, other dtypes and string padding
    (``"same"``) are left to PyTorch.
    """
    eligible = (
        torch.backends.mkldnn.is_available()
        and input.device.type == "cpu"
        and input.dim() == 5
        and input.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not isinstance(padding, str)
        and not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
    )
    if not eligible:
        return None
    return torch.ops.aten.mkldnn_convolution(
        input.contiguous(), weight.contiguous(), bias, _triple(padding), _triple(stride), _triple(dilation), groups
    )


def sum_of_squares_normalize(
    input: torch.Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``F.normalize`` (L2) as ``x / sqrt(max(sum(x^2), eps^2))``, or ``None`` where not applicable.

    Same value as ``x / max(||x||, eps)``; differentiable. CPU float32 / float64, p = 2, no ``out``.
    """
    if p != 2 or out is not None or input.device.type != "cpu" or input.dtype not in _FLOATS:
        return None
    return input * (input * input).sum(dim, keepdim=True).clamp_min(eps * eps).rsqrt()


_ROUTES = {torch.conv3d: onednn_conv3d, F.normalize: sum_of_squares_normalize}


class CPUFastPaths(TorchFunctionMode):
    """Within this mode, CPU ``conv3d`` and ``normalize`` calls take the fast routes above."""

    def __torch_function__(
        self, func: Callable, types: Collection[type], args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        """Route ``func`` to its fast path when one applies to these arguments, else call it as is."""
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None:
            result = route(*args, **kwargs)
            if result is not None:
                return result
        return func(*args, **kwargs)
