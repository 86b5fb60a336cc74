"""Differentiable rewards of the toy world: they need no download and judge what the prompt asks.

Built for reward fine-tuning (issue #21): each takes decoded videos ``(B, 3, F, H, W)`` in [-1, 1]
with gradients and the prompts (toy-world captions), and returns one reward per video ``(B,)`` in
[0, 1] for the colour, in [-1, 1] for the motion, higher is better. They are soft versions of the
model-free evaluator (:mod:`videox_fun.toyworld.evaluate`): the foreground is a sigmoid of the
brightest channel around the evaluator's threshold instead of a hard mask, so every pixel passes a
gradient.

- :class:`ColourReward`: 1 - the distance of the foreground's mean colour to the prompt's palette
  colour (RGB in [0, 1], divided by sqrt(3));
- :class:`MotionReward`: the foreground centroid's travel from the first to the last frames (a
  share of the frame size), projected on the prompt's direction: a temporal reward, which image
  rewards cannot give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .evaluate import DEFAULT_RULES
from .world import DIRECTIONS, PALETTE, parse_caption

# The evaluator's foreground threshold (brightest channel, 0-255) in [0, 1], and the sigmoid's width.
FOREGROUND = DEFAULT_RULES.foreground / 255.0
SOFTNESS = 0.05
EDGE_FRAMES = DEFAULT_RULES.edge_frames  # frames averaged at each end of the motion


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames in [-1, 1] -> [0, 1], clamped (the values a video file would hold)."""
    return ((frames.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def foreground_weights(frames: torch.Tensor) -> torch.Tensor:
    """Soft foreground (B, F, H, W) in (0, 1) of frames (B, 3, F, H, W) in [-1, 1]: bright pixels ~1, black ~0."""
    brightest = to_unit(frames).amax(dim=1)  # (B, F, H, W)
    return torch.sigmoid((brightest - FOREGROUND) / SOFTNESS)


@dataclass
class ColourReward:
    """How close the foreground's mean colour is to the prompt's colour: (B,) in [0, 1]."""

    name: str = "toy_colour"
    max_reward: float = 1.0

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1], one toy-world caption per video -> rewards (B,)."""
        weights = foreground_weights(frames)[:, None]  # (B, 1, F, H, W)
        total = weights.flatten(1).sum(dim=1).clamp_min(1e-6)  # (B,)
        mean_rgb = (to_unit(frames) * weights).flatten(2).sum(dim=2) / total[:, None]  # (B, 3)
        target = torch.tensor([PALETTE[parse_caption(p).colour] for p in prompts], dtype=torch.float32) / 255.0
        distance = (mean_rgb - target.to(mean_rgb.device)).norm(dim=1)  # (B,)
        return 1.0 - distance / math.sqrt(3.0)


@dataclass
class MotionReward:
    """How far the foreground's centroid travels along the prompt's direction, as a share of the frame: (B,)."""

    name: str = "toy_motion"
    max_reward: float = 1.0

    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """frames (B, 3, F, H, W) in [-1, 1] with F >= 2, one toy-world caption per video -> rewards (B,)."""
        centroids = soft_centroids(foreground_weights(frames))  # (B, F, 2) as (x, y) in [0, 1]
        k = max(1, min(EDGE_FRAMES, centroids.shape[1] // 4))
        travel = centroids[:, -k:].mean(dim=1) - centroids[:, :k].mean(dim=1)  # (B, 2)
        direction = torch.tensor([DIRECTIONS[parse_caption(p).direction] for p in prompts], dtype=torch.float32)
        return (travel * direction.to(travel.device)).sum(dim=1)


def soft_centroids(weights: torch.Tensor) -> torch.Tensor:
    """Weighted centroid (x, y) per frame (B, F, 2), as shares of the width / height, of soft masks (B, F, H, W)."""
    _, _, height, width = weights.shape
    ys = (torch.arange(height, device=weights.device, dtype=weights.dtype) + 0.5) / height  # (H,)
    xs = (torch.arange(width, device=weights.device, dtype=weights.dtype) + 0.5) / width  # (W,)
    total = weights.sum(dim=(2, 3)).clamp_min(1e-6)  # (B, F)
    x = (weights.sum(dim=2) * xs).sum(dim=2) / total  # (B, F)
    y = (weights.sum(dim=3) * ys).sum(dim=2) / total  # (B, F)
    return torch.stack([x, y], dim=-1)


BUILTIN_REWARDS = {"toy_colour": ColourReward, "toy_motion": MotionReward}
