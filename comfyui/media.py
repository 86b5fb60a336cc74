"""ComfyUI's tensor conventions and the library's, converted in one place.

ComfyUI: IMAGE is float ``[B, H, W, C]`` in 0..1 (a video is a batch of frames), MASK is float
``[B, H, W]`` in 0..1. The library: frames are uint8 ``(F, H, W, 3)``; a mask is a video whose
white pixels mark what to generate.
"""

from __future__ import annotations

import math

import torch


def check_image(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Fail clearly on a tensor that is not a ComfyUI IMAGE (float [B, H, W, C], C 1, 3 or 4)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a ComfyUI IMAGE [B, H, W, C] with C in (1, 3, 4), got {shape}")
    return images


def image_to_frames(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] in 0..1 -> uint8 frames (B, H, W, 3) (grey repeated, alpha dropped)."""
    images = check_image(images, name)
    rgb = images[..., :3] if images.shape[-1] >= 3 else images.expand(*images.shape[:3], 3)
    return (rgb.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> a ComfyUI IMAGE [F, H, W, 3] float32 in 0..1."""
    return frames.float().div(255.0).clamp(0, 1)


def mask_to_frames(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK [B, H, W] (or [H, W]) in 0..1 -> a mask video uint8 (B, H, W, 3), white = generate."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"mask: expected a ComfyUI MASK [B, H, W], got {getattr(mask, 'shape', type(mask))}")
    mask = mask[None] if mask.ndim == 2 else mask
    grey = (mask.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return grey[..., None].expand(*grey.shape, 3).contiguous()


def frames_to_mask(frames: torch.Tensor) -> torch.Tensor:
    """uint8 mask frames (F, H, W) or (F, H, W, 3) -> a ComfyUI MASK [F, H, W] float32 in 0..1."""
    grey = frames[..., 0] if frames.ndim == 4 else frames
    return grey.float().div(255.0)


def size_for_resolution(base_resolution: int, reference: tuple[int, int] | None, multiple: int) -> tuple[int, int]:
    """(height, width) of about ``base_resolution``² pixels in the reference's aspect ratio (square without one).

    VideoX-Fun's samplers pick a size this way from their ``base_resolution`` widget; both sides are
    rounded to the model's size multiple.
    """
    height, width = reference if reference is not None else (1, 1)
    aspect = height / width
    rounded = [
        max(multiple, round(side / multiple) * multiple)
        for side in (base_resolution * math.sqrt(aspect), base_resolution / math.sqrt(aspect))
    ]
    return rounded[0], rounded[1]
