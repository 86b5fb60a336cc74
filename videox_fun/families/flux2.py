"""The FLUX.2 family (Black Forest Labs' FLUX.2-dev) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``Flux2Transformer2DModel``; the VAE must be an ``AutoencoderKLFlux2``, checked
before any weight is read. A BFL single file (``flux2-dev.safetensors``) replaces a folder's transformer through
``--transformer-path``.

FLUX.2 edits with reference pictures (mode ``edit``: ``--image`` and up to 9 more through ``--ref-image``, as
diffusers' ``Flux2Pipeline(image=[...])``); ``--image`` alone is image-to-image unless ``--mode edit`` is given.

VideoX-Fun's Fun control file (FLUX.2-dev-Fun-Controlnet-Union) adds the modes ``control`` (a control image) and,
with a file that reads a mask (the release's 260 channels), ``control_inpaint``: the file comes per request
(``--control-path``) or from the folder config (``control_path``); its header is checked (another base's control
file is one line) before any weight is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

# BFL's FLUX.2 announcement: "reference up to 10 images simultaneously" (diffusers sets no limit); the sides and
# aspect ratio diffusers' Flux2ImageProcessor.check_image_input accepts.
MAX_REFERENCES = 10
MIN_REFERENCE_SIDE, MAX_REFERENCE_RATIO = 64, 8
# The shared image modes (t2i, i2i with --strength, inpaint with --mask), the reference edit (the inputs of Qwen-Image's
# edit: --image, then more pictures through --ref-image) and the Fun control ones.
FLUX2_MODES = {
    **IMAGE_MODES,
    "edit": Mode("edit", needs=("image",), allows=("ref_image",), folder="images_edit", output="image",
                 description="generate as the prompt says from reference pictures: --image and up to 9 more "
                             "through --ref-image (FLUX.2 multi-reference editing)"),
    **CONTROL_MODE_TABLE,
}  # fmt: skip
FLUX2_SAMPLERS = FLOW_SAMPLERS
TRANSFORMER_CLASS = "Flux2Transformer2DModel"
VAE_CLASS = "AutoencoderKLFlux2"
READ_CONTROL = side_release_reader("videox_fun.models.flux2.control", "Flux2Control")


def check_references(count: int) -> None:
    """Fail in one line on more reference pictures than :data:`MAX_REFERENCES`."""
    if count > MAX_REFERENCES:
        raise ValueError(f"FLUX.2 reads at most {MAX_REFERENCES} reference pictures (--image and --ref-image "
                         f"together), got {count}")  # fmt: skip


def check_reference_size(width: int, height: int) -> None:
    """Fail in one line on a reference picture with a side under :data:`MIN_REFERENCE_SIDE` pixels or an aspect
    ratio past :data:`MAX_REFERENCE_RATIO`:1, as diffusers refuses them."""
    if min(width, height) < MIN_REFERENCE_SIDE or max(width / height, height / width) > MAX_REFERENCE_RATIO:
        raise ValueError(f"a FLUX.2 reference picture of {width}x{height}: each side must be at least "
                         f"{MIN_REFERENCE_SIDE} pixels, the aspect ratio at most {MAX_REFERENCE_RATIO}:1")  # fmt: skip


class Flux2Family(DiffusersImageFamily):
    """FLUX.2-dev (diffusers layout; BFL transformer files through --transformer-path)."""

    name = "flux2"
    modes = FLUX2_MODES
    samplers = FLUX2_SAMPLERS
    description = ("FLUX.2-dev text-to-image, image-to-image, inpainting, reference editing and Fun control "
                   "(diffusers layout)")  # fmt: skip
    pipeline = "videox_fun.pipelines.flux2:Flux2Pipeline"
    training_spec = "flux2"
    settings = DiffusersImageFamily.settings + control_settings(
        control_file_check(READ_CONTROL, "a file of 260 channels (control, mask, image)")
    )

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A FLUX.2 folder as its config files describe it (None for another family's layout)."""
        from ..models.flux2.variants import SIZE_RULES, VARIANT, load_config

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path))
        check_vae(folder, config.vae_subpath, family="FLUX.2", transformer_class=TRANSFORMER_CLASS, vae_class=VAE_CLASS)
        variant = control_variant(VARIANT, folder, config, READ_CONTROL)
        return recognised(self, folder, config, variant, tuple(self.modes), SIZE_RULES)

    def check_inputs(self, recognised: Recognised, mode: str, inputs: Mapping[str, Any]) -> None:
        """An edit's reference pictures, their count and each one's size, before any weight is loaded."""
        if mode != "edit":
            return
        from ..io.video import read_image

        pictures = listed_images(inputs.get("image"), inputs.get("ref_image"))
        check_references(len(pictures))
        for picture in pictures:  # paths decoded as the pipeline reads them; arrays (H, W, 3)
            height, width = (read_image(picture) if isinstance(picture, (str, Path)) else picture).shape[:2]
            check_reference_size(width, height)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        if mode in CONTROL_MODES:
            return f"a FLUX.2 model with a Fun control file ({CONTROL_SOURCE})"
        return super().needs_for_mode(mode)


FLUX2 = register(Flux2Family())
