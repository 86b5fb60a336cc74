"""torch.compile of the repeated transformer blocks, and RIFLEx for videos longer than trained.

Compiling each block (regional compilation) instead of the whole model compiles one graph that
all blocks share: start-up stays short and shape changes recompile one block, not the model.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..models.wan.transformer import rope_axis_dims, rope_for_grid
from . import points


def compile_blocks(
    model: nn.Module, backend: str = "inductor", mode: str | None = None, dynamic: bool = False
) -> nn.Module:
    """Compile, in place, every block whose class the model declares in ``_repeated_blocks``; returns the model.

    Raises :class:`~videox_fun.runtime.points.ExtensionPointError` for a model that declares none.
    """
    for block in points.repeated_blocks(model, "compile (--compile)"):
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    return model


def riflex_frequency(num_latent_frames: int, k: int) -> tuple[int, float]:
    """RIFLEx: the k-th (1-based) frame frequency set so one period covers the video, with margin 0.9."""
    return k - 1, 0.9 * 2 * math.pi / num_latent_frames


def apply_riflex(model: nn.Module, k: int) -> None:
    """Make the frame-axis RoPE of ``model`` extrapolate to any length (Zhao et al., 2025).

    The intrinsic frequency k (the one whose period is closest to the trained length; 6 for the
    Wan2.1 releases at 81 frames) is lowered so that a longer video does not wrap around it.
    """
    head_dim, theta = model.head_dim, model.config.rope_theta
    frame_frequencies = rope_axis_dims(head_dim)[0] // 2
    if not 1 <= k <= frame_frequencies:
        raise ValueError(
            f"--riflex-k must be between 1 and {frame_frequencies} (the frame frequencies of this model's RoPE, "
            f"head_dim {head_dim}), got {k}"
        )

    @functools.wraps(model.rotary)
    def rotary(grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        return rope_for_grid(grid, head_dim, device, theta, frame_frequency=riflex_frequency(int(grid[0]), k))

    model.rotary = rotary


def remove_riflex(model: nn.Module) -> None:
    """Back to the trained RoPE."""
    if "rotary" in model.__dict__:
        del model.rotary
