"""The FLUX.2 family (Black Forest Labs' FLUX.2-dev) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``Flux2Transformer2DModel``; the VAE must be an ``AutoencoderKLFlux2``, checked
before any weight is read. A BFL single file (``flux2-dev.safetensors``) replaces a folder's transformer through
``--transformer-path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import Family, Recognised, register
from .diffusers_layout import check_vae, own_config_path, recognised, transformer_config
from .flux import FLUX_MODES, FLUX_SAMPLERS

if TYPE_CHECKING:
    import torch

    from ..pipelines.flux2 import Flux2Pipeline

# The same modes as FLUX.1 (t2i, i2i with --strength, inpaint with --mask), each one PNG image.
FLUX2_MODES = FLUX_MODES
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config.
FLUX2_SAMPLERS = FLUX_SAMPLERS
TRANSFORMER_CLASS = "Flux2Transformer2DModel"
VAE_CLASS = "AutoencoderKLFlux2"


class Flux2Family(Family):
    """FLUX.2-dev (diffusers layout; BFL transformer files through --transformer-path)."""

    name = "flux2"
    modes = FLUX2_MODES
    samplers = FLUX2_SAMPLERS
    description = "FLUX.2-dev text-to-image, image-to-image and inpainting (diffusers layout)"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A FLUX.2 folder as its config files describe it (None for another family's layout)."""
        from ..models.flux2.variants import SIZE_RULES, VARIANT, load_config

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path))
        check_vae(folder, config.vae_subpath, family="FLUX.2", transformer_class=TRANSFORMER_CLASS, vae_class=VAE_CLASS)
        return recognised(self, folder, config, VARIANT, tuple(self.modes), SIZE_RULES)

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> Flux2Pipeline:
        """Every component of the folder, as :meth:`Flux2Pipeline.from_pretrained` loads it."""
        from ..pipelines.flux2 import Flux2Pipeline

        return Flux2Pipeline.from_pretrained(recognised, device=device, dtype=dtype)


FLUX2 = register(Flux2Family())
