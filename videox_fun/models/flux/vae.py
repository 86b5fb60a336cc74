"""The FLUX.1 VAE: diffusers' ``AutoencoderKL`` (8x spatial, 16 channels) with strict loading and normalised latents.

Images are (B, 3, H, W) in [-1, 1]; latents (B, 16, H/8, W/8) are ``(mean - shift_factor) * scaling_factor``
(0.1159 and 0.3611 in the release), as diffusers' FLUX pipelines normalise them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL

from ..component import DiffusersVAE

VAE_CLASS_NAME = "AutoencoderKL"


def tiny_vae_config(latent_channels: int = 16) -> dict[str, Any]:
    """A small FLUX.1 VAE config of the released structure (4 levels: 8x spatial, no quant convs) for tests."""
    return {
        "_class_name": VAE_CLASS_NAME,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 8, 16, 16],
        "latent_channels": latent_channels,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
        "sample_size": 32,
    }


class FluxVAE(DiffusersVAE):
    """``encode``: image (B, 3, H, W) -> normalised latents (B, 16, h, w); ``decode`` the reverse."""

    model_class = AutoencoderKL
    family = "FLUX.1"

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (16 in the release)."""
        return int(self.config.latent_channels)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel (8: one per downsampling level)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w): the posterior's mode (the same
        image gives the same latents on every run), or a sample drawn with ``generator``."""
        posterior = self.model.encode(image.to(self.device, self.dtype)).latent_dist
        latents = posterior.sample(generator) if generator is not None else posterior.mode()
        return (latents - self.config.shift_factor) * self.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> image (B, 3, H, W), about [-1, 1]."""
        latents = latents / self.config.scaling_factor + self.config.shift_factor
        return self.model.decode(latents.to(self.device, self.dtype)).sample
