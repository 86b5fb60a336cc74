"""The VACE context of a Wan VACE model, built as the released code (Wan2.1 ``wan/vace.py``) builds it.

Every VACE task is one *source*: frames (1, 3, F, H, W) in [-1, 1], a generate mask (1, 1, F, H, W)
in [0, 1] (1 = make these pixels) and reference images. The context is (1, 96, R + F', h, w):

- the mask binarised at 0.5 splits the frames: inactive = frames x (1 - m) (kept) and reactive =
  frames x m (to change), each VAE-encoded: 16 + 16 channels;
- the mask itself (as given, not binarised) pixel-unshuffled 8 x 8 to 64 channels and resized to the
  F' latent frames (nearest-exact);
- the R reference images (subjects) in front on the time axis, each encoded to one latent frame
  (16 channels + 16 zeros, a zero mask), in the order given. The pipeline gives its noise R more
  frames too and drops them after sampling.

How the tasks fill the source (:func:`compose_source`): text only = an empty (zero, mid-grey) video
fully to generate; a control video (depth, pose, edges...) = the reactive frames, fully masked; masked
editing = the video with its masked pixels greyed out (VideoX-Fun does this: video x (mask < 0.5));
start / end frames = known frames in the mask. They combine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

SPATIAL = 8  # pixels per latent pixel (Wan2.1 VAE): the mask's 8 x 8 pixel-unshuffle
TEMPORAL = 4  # pixel frames per latent frame after the first


class VideoEncoder(Protocol):
    """What the context needs of a VAE (the Wan VAE's ``encode``): normalised latents of a video."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, z, (F - 1) / 4 + 1, H / 8, W / 8)."""
        ...


def mask_from_video(mask_video: torch.Tensor) -> torch.Tensor:
    """A mask video (1, 3, F, H, W) in [-1, 1] -> generate mask (1, 1, F, H, W) in [0, 1], white = generate.

    Its first channel, as the release reads mask videos (a grey-scale mask has three equal ones).
    """
    return ((mask_video[:, :1].float() + 1) / 2).clamp(0, 1)


def compose_source(
    num_frames: int,
    height: int,
    width: int,
    video: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    control: torch.Tensor | None = None,
    first: torch.Tensor | None = None,
    last: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source frames (1, 3, F, H, W) and generate mask (1, 1, F, H, W) of one task's inputs.

    video + mask: masked editing (the masked pixels greyed out); video alone or control: reactive
    frames to follow (fully masked); none: an empty video. first / last (1, 3, H, W): known frames.
    """
    if control is not None and video is not None:
        raise ValueError("--control-video and --video both give the VACE source frames: give one of them")
    if mask is not None and video is None:
        raise ValueError("--mask marks what to regenerate in --video: give the video too")
    template = next((t for t in (video, control, first, last) if t is not None), None)
    device = template.device if template is not None else None
    frames = torch.zeros(1, 3, num_frames, height, width, device=device)
    generate = torch.ones(1, 1, num_frames, height, width, device=device)
    if video is not None and mask is not None:
        generate = mask.float()
        frames = video.float() * (generate <= 0.5)  # grey (0) where the model is to generate
    elif video is not None or control is not None:
        frames = (video if video is not None else control).float().clone()
    for index, image in ((0, first), (num_frames - 1, last)):
        if image is not None:
            frames[:, :, index] = image.float()
            generate[:, :, index] = 0.0
    return frames, generate


def reference_canvas(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A reference image (1, 3, H0, W0) in [-1, 1] fitted, aspect kept, in the middle of a white (H, W) canvas.

    Resized bilinearly by the smaller of the two scales (as the release and diffusers place subjects).
    """
    source_height, source_width = image.shape[-2:]
    scale = min(height / source_height, width / source_width)
    new_height, new_width = int(source_height * scale), int(source_width * scale)
    resized = F.interpolate(image.float(), size=(new_height, new_width), mode="bilinear", align_corners=False)
    canvas = torch.ones(1, 3, height, width, device=image.device)  # white in [-1, 1]
    top, left = (height - new_height) // 2, (width - new_width) // 2
    canvas[:, :, top : top + new_height, left : left + new_width] = resized
    return canvas


def mask_channels(generate: torch.Tensor) -> torch.Tensor:
    """Generate mask (B, 1, F, H, W) -> (B, 64, F', H/8, W/8): each 8 x 8 pixel block as 64 channels
    (row-major within the block), resized to the latent frames F' = (F + 3) // 4 by nearest-exact."""
    batch, _, frames, height, width = generate.shape
    per_frame = generate.transpose(1, 2).reshape(batch * frames, 1, height, width)  # (B F, 1, H, W)
    blocks = F.pixel_unshuffle(per_frame.float(), SPATIAL)  # (B F, 64, h, w)
    blocks = blocks.view(batch, frames, *blocks.shape[1:]).transpose(1, 2)  # (B, 64, F, h, w)
    latent_frames = (frames + TEMPORAL - 1) // TEMPORAL
    size = (latent_frames, height // SPATIAL, width // SPATIAL)
    return F.interpolate(blocks, size=size, mode="nearest-exact")


def encode_source(vae: VideoEncoder, frames: torch.Tensor, generate: torch.Tensor) -> torch.Tensor:
    """frames (1, 3, F, H, W), generate mask (1, 1, F, H, W) -> inactive + reactive latents (1, 2z, F', h, w)."""
    binary = (generate > 0.5).to(frames.dtype)
    inactive = vae.encode(frames * (1 - binary))  # (1, z, F', h, w) what is kept
    reactive = vae.encode(frames * binary)  # (1, z, F', h, w) what is to change
    return torch.cat([inactive, reactive], dim=1)


def encode_references(vae: VideoEncoder, references: Sequence[torch.Tensor]) -> torch.Tensor:
    """Reference canvases (1, 3, H, W) each -> (1, 2z, R, h, w): one latent frame each, zeros as its reactive half."""
    latents = [vae.encode(image[:, :, None]) for image in references]  # (1, z, 1, h, w) each
    stacked = torch.cat(latents, dim=2)  # (1, z, R, h, w)
    return torch.cat([stacked, torch.zeros_like(stacked)], dim=1)


def vace_context(
    vae: VideoEncoder, frames: torch.Tensor, generate: torch.Tensor, references: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """The VACE context (1, 2z + 64, R + F', h, w) of a source (see the module's docstring)."""
    latents = encode_source(vae, frames, generate)  # (1, 2z, F', h, w)
    masks = mask_channels(generate).to(latents)  # (1, 64, F', h, w)
    if references:
        refs = encode_references(vae, references).to(latents)  # (1, 2z, R, h, w)
        latents = torch.cat([refs, latents], dim=2)
        masks = torch.cat([masks.new_zeros(*masks.shape[:2], len(references), *masks.shape[3:]), masks], dim=2)
    return torch.cat([latents, masks], dim=1)
