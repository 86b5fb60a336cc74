"""Conditioning tensors shared by the modes: masks, masked videos, start-frame and camera latents.

Convention: a *generate mask* is 1 where the model must create pixels and 0 where pixels
are known (like the white/black mask videos users draw). The transformer's mask channels
are the opposite (1 = known), packed 4 pixel frames per latent frame, as Wan I2V and the Fun
InP releases expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..io.camera import CameraPose, plucker_embedding


def pack_frames_in_time(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """(B, C, F, H, W) with F = factor*k + 1 -> (B, C*factor, k + 1, H, W).

    The first frame is repeated ``factor`` times (the VAE gives it a latent frame of its own)
    and every following group of ``factor`` frames becomes the channels of one latent frame,
    channel-major (c0f0, c0f1, ..., c1f0, ...), as the Fun mask and camera inputs are laid out.
    """
    b, c, f, h, w = x.shape
    if (f - 1) % factor:
        raise ValueError(f"{f} frames cannot be packed: the count must be {factor}k+1")
    x = torch.cat([x[:, :, :1].expand(-1, -1, factor, -1, -1), x[:, :, 1:]], dim=2)  # (B, C, F+3, H, W)
    x = x.reshape(b, c, x.shape[2] // factor, factor, h, w)  # (B, C, k+1, factor, H, W)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, c * factor, -1, h, w)


def frame_generate_mask(num_frames: int, height: int, width: int, known_frames: tuple[int, ...] = ()) -> torch.Tensor:
    """A generate mask (1, 1, F, H, W): 1 everywhere except the fully known frames."""
    mask = torch.ones(1, 1, num_frames, height, width)
    for index in known_frames:
        mask[:, :, index] = 0.0
    return mask


def camera_condition(poses: Sequence[CameraPose], height: int, width: int) -> torch.Tensor:
    """The Control-Camera models' ``camera`` input (1, 24, F', H, W): Plücker rays of one pose per frame,
    packed in time like the mask channels (F = 4k + 1 frames)."""
    rays = plucker_embedding(poses, height, width, num_frames=len(poses))  # (F, 6, H, W)
    return pack_frames_in_time(rays.permute(1, 0, 2, 3)[None])


def held_timestep_scale(generate_mask: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
    """Per-latent-pixel timestep scale (B, F', h, w) of the models that hold what is known (16x-VAE Wan2.2 5B).

    generate_mask: (B, 1, F, H, W), 1 = generate. As VideoX-Fun's Wan2.2-Fun 5B pipelines: the mask resized
    trilinearly (corners aligned) to the latent grid; a sample whose first frame is fully known gets 0 on
    that frame (held clean) and 1 on the others, whatever else is known. Tokens take the scale of their
    patch's first latent pixel (:func:`token_timesteps`).
    """
    scale = F.interpolate(generate_mask.float(), size=tuple(latent_size), mode="trilinear", align_corners=True)[:, 0]
    first_known = ~scale[:, 0].flatten(1).gt(0).any(dim=1)  # (B,)
    scale[first_known] = 1.0
    scale[first_known, 0] = 0.0
    return scale


def token_timesteps(timesteps: torch.Tensor, scale: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Timesteps (B,) x a per-latent-pixel scale (B|1, F', h, w) -> per-token timesteps (B, L), each token the
    scale of its patch's first latent pixel (Wan2.2's ``mask[:, ::2, ::2] * t``)."""
    _, patch_h, patch_w = patch_size
    per_token = scale[:, :, ::patch_h, ::patch_w].flatten(1).to(timesteps)  # (B|1, L)
    return timesteps[:, None] * per_token


def mask_channels(generate_mask: torch.Tensor, latent_size: tuple[int, int], factor: int = 4) -> torch.Tensor:
    """Generate mask (B, 1, F, H, W) -> the transformer's known-mask channels (B, factor, F_lat, h, w)."""
    known = pack_frames_in_time(1.0 - generate_mask.float(), factor)  # (B, factor, F_lat, H, W)
    return F.interpolate(known, size=(known.shape[2], *latent_size), mode="trilinear", align_corners=False)


def masked_video(video: torch.Tensor, generate_mask: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """Keep the known pixels of video (B, 3, F, H, W) in [-1, 1]; set the rest to ``fill``.

    The Fun InP releases were trained with -1 (black); Wan-AI's I2V uses 0.
    """
    keep = generate_mask < 0.5
    return torch.where(keep, video, torch.full_like(video, fill))


def first_frame_latent(image_latent: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """Put a one-frame latent (B, z, 1, h, w) at latent frame 0 and zeros after it (start image)."""
    out = image_latent.new_zeros(*image_latent.shape[:2], num_latent_frames, *image_latent.shape[3:])
    out[:, :, :1] = image_latent
    return out
