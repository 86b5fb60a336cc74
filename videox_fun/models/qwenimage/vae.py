"""The Qwen-Image VAE: diffusers' ``AutoencoderKLQwenImage`` (Wan2.1-style causal 3D, 8x spatial, 16 channels)
run on one frame, with strict loading and normalised latents.

Images are (B, 3, H, W) in [-1, 1]; latents (B, 16, H/8, W/8) are ``(mean - latents_mean) / latents_std`` per
channel (the config's lists), as diffusers' Qwen-Image pipelines normalise them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLQwenImage

from ..component import DiffusersVAE

VAE_CLASS_NAME = "AutoencoderKLQwenImage"


def tiny_vae_config(z_dim: int = 16) -> dict[str, Any]:
    """A small Qwen-Image VAE config of the released structure (4 levels: 8x spatial, causal 3D) for tests."""
    return {"_class_name": VAE_CLASS_NAME, "base_dim": 8, "z_dim": z_dim, "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1, "attn_scales": [], "temperal_downsample": [False, True, True]}  # fmt: skip


class QwenImageVAE(DiffusersVAE):
    """``encode``: image (B, 3, H, W) -> normalised latents (B, 16, h, w); ``decode`` the reverse."""

    model_class = AutoencoderKLQwenImage
    family = "Qwen-Image"

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (16 in the release)."""
        return int(self.config.z_dim)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel (8: one per downsampling level)."""
        return 2 ** len(self.config.temperal_downsample)

    def _stats(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The config's per-channel mean and std, (1, C, 1, 1, 1) on ``latents``' device and dtype."""
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(self.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return mean, std

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w): the posterior's mode (the same image
        gives the same latents on every run), or a sample drawn with ``generator``."""
        posterior = self.model.encode(image[:, :, None].to(self.device, self.dtype)).latent_dist  # one frame
        latents = posterior.sample(generator) if generator is not None else posterior.mode()  # (B, C, 1, h, w)
        mean, std = self._stats(latents)
        return ((latents - mean) / std)[:, :, 0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> image (B, 3, H, W), about [-1, 1]."""
        latents = latents[:, :, None].to(self.device, self.dtype)  # (B, C, 1, h, w)
        mean, std = self._stats(latents)
        return self.model.decode(latents * std + mean).sample[:, :, 0]
