"""The CogVideoX VAE: diffusers' ``AutoencoderKLCogVideoX`` (4x8x8, 16 channels) with strict loading and
scaled latents in the transformer's layout.

Pixels are (B, 3, F, H, W) in [-1, 1]; latents are (B, F', 16, H/8, W/8) with F' = (F - 1) / 4 + 1,
multiplied by the config's ``scaling_factor`` (1.15258426 for 2b, 0.7 for 5b and 1.5; no shift),
in the (B, F, C, H, W) layout the CogVideoX transformer takes (the VAE itself works in (B, C, F, H, W)).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX

from ..component import DiffusersVAE


def tiny_vae_config(latent_channels: int = 16, scaling_factor: float = 0.7) -> dict[str, Any]:
    """A small CogVideoX VAE config of the same structure (4 levels: 8x spatial, 4x temporal) for tests."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["CogVideoXDownBlock3D"] * 4,
        "up_block_types": ["CogVideoXUpBlock3D"] * 4,
        "block_out_channels": [8, 8, 16, 16],
        "latent_channels": latent_channels,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "temporal_compression_ratio": 4,
        "scaling_factor": scaling_factor,
    }


class CogVideoXVAE(DiffusersVAE):
    """``encode``: video (B, 3, F, H, W) -> scaled latents (B, F', C, h, w); ``decode`` the reverse.

    ``encode`` takes the posterior's mode (mean), as VideoX-Fun encodes its conditioning videos, so
    the same inputs give the same latents on every run.
    """

    model_class = AutoencoderKLCogVideoX
    family = "CogVideoX"

    @property
    def scaling_factor(self) -> float:
        """Latents are multiplied by this after encoding."""
        return float(self.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        """Channels of a latent frame (16 in every release)."""
        return int(self.config.latent_channels)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame after the first (4)."""
        return int(self.config.temporal_compression_ratio)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel (8: one per downsampling level)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (F', h, w) of a ``num_frames x height x width`` video."""
        s = self.spatial_compression
        return (num_frames - 1) // self.temporal_compression + 1, height // s, width // s

    def encode_unscaled(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> unscaled latents (B, F', C, h, w): the posterior's mode,
        or a sample drawn with ``generator`` when one is given."""
        posterior = self.model.encode(video.to(self.device, self.dtype)).latent_dist
        latents = posterior.sample(generator) if generator is not None else posterior.mode()  # (B, C, F', h, w)
        return latents.permute(0, 2, 1, 3, 4)

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, F', C, h, w)."""
        return self.encode_unscaled(video, generator) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, F', C, h, w) -> video (B, 3, F, H, W), about [-1, 1]."""
        latents = latents.permute(0, 2, 1, 3, 4) / self.scaling_factor  # (B, C, F', h, w)
        return self.model.decode(latents.to(self.device, self.dtype)).sample
