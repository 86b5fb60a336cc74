"""The FLUX.1 family (Black Forest Labs' FLUX.1-dev and FLUX.1-schnell) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``FluxTransformer2DModel``. dev or schnell is read off that config
(``guidance_embeds``); the VAE must be an ``AutoencoderKL``, checked before any weight is read. A BFL single
file (``flux1-dev.safetensors``) replaces a folder's transformer through ``--transformer-path``.
"""

from __future__ import annotations

from pathlib import Path

from . import Recognised, register
from .diffusers_layout import (
    FLOW_SAMPLERS,
    IMAGE_MODES,
    DiffusersImageFamily,
    check_vae,
    own_config_path,
    recognised,
    transformer_config,
)

# The shared image modes (t2i, i2i with --strength, inpaint with --mask) and Flow sampler.
FLUX_MODES = IMAGE_MODES
FLUX_SAMPLERS = FLOW_SAMPLERS
TRANSFORMER_CLASS = "FluxTransformer2DModel"
VAE_CLASS = "AutoencoderKL"


class FluxFamily(DiffusersImageFamily):
    """FLUX.1-dev and FLUX.1-schnell (diffusers layout; BFL transformer files through --transformer-path)."""

    name = "flux"
    modes = FLUX_MODES
    samplers = FLUX_SAMPLERS
    description = "FLUX.1-dev / schnell text-to-image, image-to-image and inpainting (diffusers layout)"
    training_spec = "flux"
    pipeline = "videox_fun.pipelines.flux:FluxPipeline"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A FLUX.1 folder as its config files describe it (None for another family's layout)."""
        from ..models.flux.variants import SIZE_RULES, default_settings, load_config, variant_of

        transformer = transformer_config(folder, TRANSFORMER_CLASS)
        if transformer is None:
            return None
        variant = variant_of(transformer)
        config = load_config(own_config_path(folder, config_path), default_settings(variant))
        check_vae(folder, config.vae_subpath, "FLUX.1", TRANSFORMER_CLASS, VAE_CLASS)
        return recognised(self, folder, config, variant.name, tuple(self.modes), SIZE_RULES)


FLUX = register(FluxFamily())
