"""The Z-Image family (Tongyi-MAI's Z-Image and Z-Image-Turbo) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``ZImageTransformer2DModel``. Base or Turbo is the folder config's ``variant``,
else read off the folder name; the VAE must be an ``AutoencoderKL`` (FLUX.1's), checked before any weight is
read. An original-layout transformer file replaces a folder's transformer through ``--transformer-path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import Family, Recognised, register
from .diffusers_layout import check_vae, own_config_path, recognised, transformer_config
from .flux import FLUX_MODES, FLUX_SAMPLERS
from .flux import VAE_CLASS as FLUX_VAE_CLASS

if TYPE_CHECKING:
    import torch

    from ..pipelines.zimage import ZImagePipeline

# The same modes as FLUX.1 (t2i, i2i with --strength, inpaint with --mask), each one PNG image.
ZIMAGE_MODES = FLUX_MODES
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config.
ZIMAGE_SAMPLERS = FLUX_SAMPLERS
TRANSFORMER_CLASS = "ZImageTransformer2DModel"


class ZImageFamily(Family):
    """Z-Image and Z-Image-Turbo (diffusers layout; original-layout transformer files through --transformer-path)."""

    name = "zimage"
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    description = "Z-Image / Z-Image-Turbo text-to-image, image-to-image and inpainting (diffusers layout)"
    training_spec = "zimage"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Z-Image folder as its config files describe it (None for another family's layout)."""
        from ..models.zimage.variants import SIZE_RULES, load_config, variant_of

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path), folder)
        check_vae(folder, config.vae_subpath, "Z-Image", TRANSFORMER_CLASS, FLUX_VAE_CLASS)
        return recognised(self, folder, config, variant_of(folder, config.variant).name, tuple(self.modes), SIZE_RULES)

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> ZImagePipeline:
        """Every component of the folder, as :meth:`ZImagePipeline.from_pretrained` loads it."""
        from ..pipelines.zimage import ZImagePipeline

        return ZImagePipeline.from_pretrained(recognised, device=device, dtype=dtype)


ZIMAGE = register(ZImageFamily())
