"""What every family's pipeline shares: the output record, input media as tensors, seeded noise,
the settings a call resolves to, and the correction of sizes a model cannot take."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.video import frames_to_tensor, read_image, read_video

logger = logging.getLogger(__name__)

ImageLike = str | Path | torch.Tensor | np.ndarray
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationOutput:
    """Frames uint8 (F, H, W, 3), the final latents and the settings used (for the sidecar)."""

    frames: torch.Tensor
    latents: torch.Tensor
    settings: dict


@dataclass(frozen=True)
class SamplingSettings:
    """What one call samples with, after the model config's defaults and the size corrections."""

    mode: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float
    shift: float
    sampler: str

    def record(self, seed: int) -> dict:
        """The settings as the sidecar JSON records them."""
        return {
            "mode": self.mode,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "seed": seed,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }


def corrected(name: str, value: int, fixed: int, why: str) -> int:
    """Return ``fixed`` and tell the user when it differs from what they asked."""
    if fixed != value:
        logger.warning("%s %d is not %s; using %d", name, value, why, fixed)
    return fixed


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``seed``: the same video on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device)


def video_tensor(
    source: ImageLike, num_frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A video (path or uint8 (F, H, W, 3)) -> (1, 3, F, H, W) in [-1, 1], cut or padded to F frames."""
    frames = read_video(source, size=(height, width)) if isinstance(source, (str, Path)) else torch.as_tensor(source)
    if frames.shape[0] < num_frames:
        logger.warning("the video has %d frames, %d are needed: repeating the last", frames.shape[0], num_frames)
        frames = torch.cat([frames, frames[-1:].expand(num_frames - frames.shape[0], -1, -1, -1)])
    video = frames_to_tensor(frames[:num_frames])[None]  # (1, 3, F, H', W')
    if video.shape[-2:] != (height, width):
        video = F.interpolate(video[0].transpose(0, 1), size=(height, width), mode="bicubic").transpose(0, 1)[None]
    return video.clamp(-1, 1).to(device, dtype)


def image_tensor(source: ImageLike, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An image (path or uint8 (H, W, 3)) -> (1, 3, H, W) in [-1, 1]."""
    pixels = read_image(source, size=(height, width)) if isinstance(source, (str, Path)) else torch.as_tensor(source)
    return video_tensor(pixels[None], 1, height, width, device, dtype)[:, :, 0]
