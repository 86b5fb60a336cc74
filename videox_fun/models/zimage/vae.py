"""The Z-Image VAE: FLUX.1's ``AutoencoderKL`` (16 channels, 8x spatial, latents ``(mean - 0.1159) * 0.3611``),
so the FLUX.1 wrapper serves it; only the family named in errors differs."""

from __future__ import annotations

from ..flux.vae import VAE_CLASS_NAME, FluxVAE, tiny_vae_config

__all__ = ["VAE_CLASS_NAME", "ZImageVAE", "tiny_vae_config"]


class ZImageVAE(FluxVAE):
    """``encode``: image (B, 3, H, W) -> normalised latents (B, 16, h, w); ``decode`` the reverse (as FLUX.1)."""

    family = "Z-Image"
