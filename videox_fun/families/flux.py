"""The FLUX.1 family (Black Forest Labs' FLUX.1-dev and FLUX.1-schnell) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``FluxTransformer2DModel``. dev or schnell is read off that config
(``guidance_embeds``); the VAE must be an ``AutoencoderKL``, checked before any weight is read. A BFL single
file (``flux1-dev.safetensors``) replaces a folder's transformer through ``--transformer-path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import FOLDER_CONFIG_NAME, read_json_mapping
from . import Family, Mode, Recognised, register

if TYPE_CHECKING:
    import torch

    from ..pipelines.flux import FluxPipeline

# The modes, in the order inference prefers them; every one makes an image (written as PNG).
FLUX_MODES = {
    "t2i": Mode("t2i", folder="images", output="image", description="text to image"),
    "i2i": Mode("i2i", needs=("image",), folder="images_i2i", output="image",
                description="image to image (denoise --strength)"),
    "inpaint": Mode("inpaint", needs=("image", "mask"), folder="images_inpaint", output="image",
                    description="regenerate the white of --mask in --image (denoise --strength)"),
}  # fmt: skip
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config.
FLUX_SAMPLERS = ("Flow",)
TRANSFORMER_CLASS = "FluxTransformer2DModel"
VAE_CLASS = "AutoencoderKL"


class FluxFamily(Family):
    """FLUX.1-dev and FLUX.1-schnell (diffusers layout; BFL transformer files through --transformer-path)."""

    name = "flux"
    modes = FLUX_MODES
    samplers = FLUX_SAMPLERS
    description = "FLUX.1-dev / schnell text-to-image, image-to-image and inpainting (diffusers layout)"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A FLUX.1 folder as its config files describe it (None for another family's layout)."""
        from ..models.flux.variants import SIZE_RULES, default_settings, load_config, variant_of

        transformer_path = folder / "transformer" / "config.json"
        if not (folder / "model_index.json").is_file() or not transformer_path.is_file():
            return None
        transformer_config = read_json_mapping(transformer_path, "transformer config")
        if transformer_config.get("_class_name") != TRANSFORMER_CLASS:
            return None
        variant = variant_of(transformer_config)
        own = config_path or (folder / FOLDER_CONFIG_NAME if (folder / FOLDER_CONFIG_NAME).is_file() else None)
        config = load_config(own, default_settings(variant))
        check_vae(folder, config.vae_subpath)
        return Recognised(
            family=self,
            folder=folder,
            config=config,
            variant=variant.name,
            modes=tuple(self.modes),
            defaults=config.defaults,
            sizes=SIZE_RULES,
            note=config.note,
        )

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> FluxPipeline:
        """Every component of the folder, as :meth:`FluxPipeline.from_pretrained` loads it."""
        from ..pipelines.flux import FluxPipeline

        return FluxPipeline.from_pretrained(recognised, device=device, dtype=dtype)


def check_vae(folder: Path, subpath: str, family: str = "FLUX.1", transformer: str = TRANSFORMER_CLASS) -> None:
    """Fail in one line when the folder's VAE is not the ``AutoencoderKL`` that FLUX.1 (and Z-Image, which reuses
    it) needs: a Wan VAE beside the ``transformer`` class of ``family``."""
    path = folder / subpath / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no VAE config at {path} (a {family} folder needs an {VAE_CLASS})")
    found = read_json_mapping(path, "VAE config").get("_class_name")
    if found != VAE_CLASS:
        raise ValueError(f"{folder}: the transformer is a {transformer} but the VAE is a {found} ({path}); "
                         f"a {family} model needs an {VAE_CLASS}")  # fmt: skip


FLUX = register(FluxFamily())
