"""The Qwen-Image family (Qwen-Image text to image, Qwen-Image-Edit, Qwen-Image-Edit-2509 / 2511) as the family
layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``QwenImageTransformer2DModel``. T2I, Edit or Edit-2509 is read off
``model_index.json`` (the pipeline class it names: ``QwenImageEditPlusPipeline`` for Edit-2509, and for Edit-2511,
told apart by its transformer's ``zero_cond_t``); the VAE must be an ``AutoencoderKLQwenImage``, checked before any
weight is read. Qwen-Image serves t2i, i2i and inpaint; an Edit folder serves edit, which needs the image to change
(``--image``); Edit-2509 / 2511 read up to 2 more pictures (``--ref-image``, after ``--image``: Picture 1, 2, 3 of
the prompt).

VideoX-Fun's Fun control file (Qwen-Image-2512-Fun-Controlnet-Union) adds to Qwen-Image the modes ``control`` (a
control image) and, with a file that reads a mask (the release's 132 channels), ``control_inpaint``: the file
comes per request (``--control-path``) or from the folder config (``control_path``); its header is checked
(another base's control file is one line) before any weight is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import read_json_mapping
from . import Mode, Recognised, listed_images, register
from .diffusers_layout import (
    FLOW_SAMPLERS,
    IMAGE_MODES,
    DiffusersImageFamily,
    check_vae,
    own_config_path,
    recognised,
    transformer_config,
)
from .fun_control import (
    CONTROL_MODE_TABLE,
    CONTROL_MODES,
    CONTROL_SOURCE,
    control_file_check,
    control_settings,
    control_variant,
    side_release_reader,
)

if TYPE_CHECKING:
    from ..models.qwenimage.variants import QwenImageVariant

# The shared image modes, Edit's and the Fun control ones, in the order inference prefers them.
QWENIMAGE_MODES = {
    **IMAGE_MODES,
    "edit": Mode("edit", needs=("image",), allows=("ref_image",), folder="images_edit", output="image",
                 description="change --image as the prompt says (Qwen-Image-Edit; Edit-2509 also reads up to 2 "
                             "more pictures through --ref-image)"),
    **CONTROL_MODE_TABLE,
}  # fmt: skip
QWENIMAGE_SAMPLERS = FLOW_SAMPLERS
TRANSFORMER_CLASS = "QwenImageTransformer2DModel"
VAE_CLASS = "AutoencoderKLQwenImage"
READ_CONTROL = side_release_reader("videox_fun.models.qwenimage.control", "QwenImageControl")


def folder_variant(folder: Path) -> QwenImageVariant:
    """The variant a folder's ``model_index.json`` names; Qwen-Image-Edit-2511's folder names Edit-2509's pipeline
    and tells itself by its transformer's ``zero_cond_t`` (the pictures' tokens modulated at timestep 0, which
    diffusers' transformer reads off the same config)."""
    from ..models.qwenimage.variants import EDIT_PLUS, variant_of

    variant = variant_of(read_json_mapping(folder / "model_index.json", "model index"), folder)
    if variant == EDIT_PLUS and (transformer_config(folder, TRANSFORMER_CLASS) or {}).get("zero_cond_t"):
        return replace(variant, name="Qwen-Image-Edit-2511")
    return variant


def check_pictures(variant: str, most: int, count: int) -> None:
    """Fail in one line when an edit gives more pictures (``--image`` and ``--ref-image``) than ``variant`` reads:
    ``most`` 1 for Qwen-Image-Edit, 3 for Edit-2509 (its release card's 1 to 3)."""
    if count > most == 1:
        raise ValueError(f"{variant} edits one picture (--image); several pictures (--ref-image) need a "
                         "Qwen-Image-Edit-2509 model")  # fmt: skip
    if count > most:
        raise ValueError(f"{variant} reads at most {most} pictures (--image and --ref-image together), got {count}")


class QwenImageFamily(DiffusersImageFamily):
    """Qwen-Image, Qwen-Image-Edit and Qwen-Image-Edit-2509 / 2511 (diffusers layout)."""

    name = "qwenimage"
    modes = QWENIMAGE_MODES
    samplers = QWENIMAGE_SAMPLERS
    description = ("Qwen-Image text-to-image, image-to-image, inpainting, Fun control, Qwen-Image-Edit and "
                   "Qwen-Image-Edit-2509 (diffusers layout)")  # fmt: skip
    settings = DiffusersImageFamily.settings + control_settings(
        control_file_check(READ_CONTROL, "a file of 132 channels (control, mask, image)")
    )
    training_spec = "qwenimage"
    pipeline = "videox_fun.pipelines.qwenimage:QwenImagePipeline"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Qwen-Image folder as its config files describe it (None for another family's layout)."""
        from ..models.qwenimage.variants import SIZE_RULES, default_settings, load_config

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        variant = folder_variant(folder)
        config = load_config(own_config_path(folder, config_path), default_settings(variant))
        check_vae(folder, config.vae_subpath, "Qwen-Image", TRANSFORMER_CLASS, VAE_CLASS)
        name = control_variant(variant.name, folder, config, READ_CONTROL)
        return recognised(self, folder, config, name, variant.modes, SIZE_RULES)

    def check_inputs(self, recognised: Recognised, mode: str, inputs: Mapping[str, Any]) -> None:
        """An edit's pictures against how many the folder's variant reads, before any weight is loaded."""
        if mode != "edit":
            return
        variant = folder_variant(recognised.folder)
        check_pictures(variant.name, variant.pictures, len(listed_images(inputs.get("image"), inputs.get("ref_image"))))

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        if mode in CONTROL_MODES:
            return f"a Qwen-Image (text-to-image) model with a Fun control file ({CONTROL_SOURCE})"
        return "a Qwen-Image-Edit model" if mode == "edit" else "a Qwen-Image (text-to-image) model"


QWENIMAGE = register(QwenImageFamily())
