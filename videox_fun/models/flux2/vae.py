"""The FLUX.2 VAE: diffusers' ``AutoencoderKLFlux2`` (8x spatial, 32 channels) with strict loading, its latents
patchified 2x2 into 128 channels and normalised by the BatchNorm running statistics the release carries.

Images are (B, 3, H, W) in [-1, 1]; latents (B, 128, H/16, W/16) are ``(patchify(mode) - mean) / sqrt(var +
eps)`` with the ``bn`` buffers (eps 1e-4 in the release), as diffusers' ``Flux2Pipeline`` normalises them. The
transformer reads one token per latent pixel of this 128-channel grid.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLFlux2

from ..component import DiffusersVAE
from ..flux.vae import tiny_vae_config as flux_tiny_vae_config

VAE_CLASS_NAME = "AutoencoderKLFlux2"
PATCH = 2  # the 2x2 patchify of the 32 VAE channels into 128


def tiny_vae_config(latent_channels: int = 32) -> dict[str, Any]:
    """A small FLUX.2 VAE config of the released structure for tests: FLUX.1's tiny levels (8x spatial), with quant
    convs and the BatchNorm over the patchified channels instead of a scale and shift."""
    config = {key: value for key, value in flux_tiny_vae_config(latent_channels).items()
              if key not in ("scaling_factor", "shift_factor", "use_quant_conv", "use_post_quant_conv")}  # fmt: skip
    return {**config, "_class_name": VAE_CLASS_NAME, "batch_norm_eps": 1e-4, "patch_size": [PATCH, PATCH]}


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C * 4, h/2, w/2): each 2x2 patch's pixels as channels, channel-major (diffusers'
    ``Flux2Pipeline._patchify_latents``)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(b, c * PATCH * PATCH, h // PATCH, w // PATCH)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C * 4, h/2, w/2) -> (B, C, h, w): :func:`patchify` undone."""
    b, c4, h, w = latents.shape
    patches = latents.reshape(b, c4 // PATCH**2, PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
    return patches.reshape(b, c4 // PATCH**2, h * PATCH, w * PATCH)


class Flux2VAE(DiffusersVAE):
    """``encode``: image (B, 3, H, W) -> normalised patchified latents (B, 128, H/16, W/16); ``decode`` the reverse."""

    model_class = AutoencoderKLFlux2
    family = "FLUX.2"

    @property
    def latent_channels(self) -> int:
        """Channels of a (patchified) latent the transformer reads: 4 x 32 in the release."""
        return int(self.config.latent_channels) * PATCH * PATCH

    @property
    def spatial_compression(self) -> int:
        """Pixels per (patchified) latent pixel: 8 from the VAE's levels, times the 2x2 patchify."""
        return 2 ** (len(self.config.block_out_channels) - 1) * PATCH

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The BatchNorm running mean and std (1, 128, 1, 1) the latents are normalised with."""
        bn = self.model.bn
        std = torch.sqrt(bn.running_var + self.config.batch_norm_eps)
        return bn.running_mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> normalised latents (B, 128, h, w): the posterior's mode (the same image
        gives the same latents on every run, as diffusers' ``argmax``), or a sample drawn with ``generator``."""
        posterior = self.model.encode(image.to(self.device, self.dtype)).latent_dist
        latents = patchify(posterior.sample(generator) if generator is not None else posterior.mode())
        mean, std = self.statistics()
        return (latents - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, 128, h, w) -> image (B, 3, 16 h, 16 w), about [-1, 1]."""
        mean, std = self.statistics()
        latents = unpatchify(latents.to(self.device, self.dtype) * std + mean)  # (B, 32, 2h, 2w)
        return self.model.decode(latents).sample
