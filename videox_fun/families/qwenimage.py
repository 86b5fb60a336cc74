"""The Qwen-Image family (Qwen-Image text to image and Qwen-Image-Edit) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``QwenImageTransformer2DModel``. T2I or Edit is read off ``model_index.json``
(the pipeline class it names); the VAE must be an ``AutoencoderKLQwenImage``, checked before any weight is read.
Qwen-Image serves t2i, i2i and inpaint; an Edit folder serves edit, which needs the image to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import FOLDER_CONFIG_NAME, read_json_mapping
from . import Family, Mode, Recognised, register

if TYPE_CHECKING:
    import torch

    from ..pipelines.qwenimage import QwenImagePipeline

# The modes, in the order inference prefers them; every one makes an image (written as PNG).
QWENIMAGE_MODES = {
    "t2i": Mode("t2i", folder="images", output="image", description="text to image"),
    "i2i": Mode("i2i", needs=("image",), folder="images_i2i", output="image",
                description="image to image (denoise --strength)"),
    "inpaint": Mode("inpaint", needs=("image", "mask"), folder="images_inpaint", output="image",
                    description="regenerate the white of --mask in --image (denoise --strength)"),
    "edit": Mode("edit", needs=("image",), folder="images_edit", output="image",
                 description="change --image as the prompt says (Qwen-Image-Edit)"),
}  # fmt: skip
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config.
QWENIMAGE_SAMPLERS = ("Flow",)
TRANSFORMER_CLASS = "QwenImageTransformer2DModel"
VAE_CLASS = "AutoencoderKLQwenImage"


class QwenImageFamily(Family):
    """Qwen-Image and Qwen-Image-Edit (diffusers layout)."""

    name = "qwenimage"
    modes = QWENIMAGE_MODES
    samplers = QWENIMAGE_SAMPLERS
    description = "Qwen-Image text-to-image, image-to-image, inpainting and Qwen-Image-Edit (diffusers layout)"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Qwen-Image folder as its config files describe it (None for another family's layout)."""
        from ..models.qwenimage.variants import SIZE_RULES, default_settings, load_config, variant_of

        transformer_path = folder / "transformer" / "config.json"
        if not (folder / "model_index.json").is_file() or not transformer_path.is_file():
            return None
        if read_json_mapping(transformer_path, "transformer config").get("_class_name") != TRANSFORMER_CLASS:
            return None
        variant = variant_of(read_json_mapping(folder / "model_index.json", "model index"), folder)
        own = config_path or (folder / FOLDER_CONFIG_NAME if (folder / FOLDER_CONFIG_NAME).is_file() else None)
        config = load_config(own, default_settings(variant))
        check_vae(folder, config.vae_subpath)
        return Recognised(
            family=self,
            folder=folder,
            config=config,
            variant=variant.name,
            modes=variant.modes,
            defaults=config.defaults,
            sizes=SIZE_RULES,
            note=config.note,
        )

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> QwenImagePipeline:
        """Every component of the folder, as :meth:`QwenImagePipeline.from_pretrained` loads it."""
        from ..pipelines.qwenimage import QwenImagePipeline

        return QwenImagePipeline.from_pretrained(recognised, device=device, dtype=dtype)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        return "a Qwen-Image-Edit model" if mode == "edit" else "a Qwen-Image (text-to-image) model"


def check_vae(folder: Path, subpath: str) -> None:
    """Fail in one line when the folder's VAE is not Qwen-Image's kind (a FLUX VAE beside a Qwen transformer)."""
    path = folder / subpath / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no VAE config at {path} (a Qwen-Image folder needs an {VAE_CLASS})")
    found = read_json_mapping(path, "VAE config").get("_class_name")
    if found != VAE_CLASS:
        raise ValueError(f"{folder}: the transformer is a {TRANSFORMER_CLASS} but the VAE is a {found} ({path}); "
                         f"a Qwen-Image model needs an {VAE_CLASS}")  # fmt: skip


QWENIMAGE = register(QwenImageFamily())
