"""The Z-Image family (Tongyi-MAI's Z-Image and Z-Image-Turbo) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``ZImageTransformer2DModel``. Base or Turbo is the folder config's ``variant``,
else read off the folder name; the VAE must be an ``AutoencoderKL`` (FLUX.1's), checked before any weight is
read. An original-layout transformer file replaces a folder's transformer through ``--transformer-path``.

VideoX-Fun's Fun control files (Z-Image-Turbo-Fun-Controlnet-Union 1.0 / 2.0 / 2.1) add the modes ``control`` (a
control image: canny, depth, pose...) and, with a 2.x file, ``control_inpaint`` (an image and a mask, and a control
image when given): the file comes per request (``--control-path``) or from the folder config (``control_path``);
its header is checked (another base's control file is one line) before any weight is read.
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
from .flux import VAE_CLASS as FLUX_VAE_CLASS
from .fun_control import (
    CONTROL_MODE_TABLE,
    CONTROL_MODES,
    CONTROL_SOURCE,
    control_file_check,
    control_settings,
    control_variant,
)

# The shared image modes (t2i, i2i with --strength, inpaint with --mask) and the Fun control ones.
ZIMAGE_MODES = {**IMAGE_MODES, **CONTROL_MODE_TABLE}
ZIMAGE_SAMPLERS = FLOW_SAMPLERS
TRANSFORMER_CLASS = "ZImageTransformer2DModel"


def read_control_file(path: Path) -> tuple[str, bool]:
    """A Z-Image control file's release name and whether it inpaints (2.x), from its header."""
    from ..models.zimage.control import read_control_release

    release = read_control_release(path)
    return release.name, release.inpaint


ZIMAGE_SETTINGS = DiffusersImageFamily.settings + control_settings(
    control_file_check(read_control_file, "a 2.x file (control, mask and masked image in 33 channels)")
)


class ZImageFamily(DiffusersImageFamily):
    """Z-Image and Z-Image-Turbo (diffusers layout; original-layout transformer files through --transformer-path)."""

    name = "zimage"
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    description = ("Z-Image / Z-Image-Turbo text-to-image, image-to-image and inpainting, and Fun control "
                   "(diffusers layout)")  # fmt: skip
    pipeline = "videox_fun.pipelines.zimage:ZImagePipeline"
    settings = ZIMAGE_SETTINGS
    training_spec = "zimage"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Z-Image folder as its config files describe it (None for another family's layout)."""
        from ..models.zimage.variants import SIZE_RULES, load_config, variant_of

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path), folder)
        check_vae(folder, config.vae_subpath, "Z-Image", TRANSFORMER_CLASS, FLUX_VAE_CLASS)
        variant = control_variant(variant_of(folder, config.variant).name, folder, config, read_control_file)
        return recognised(self, folder, config, variant, tuple(self.modes), SIZE_RULES)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        if mode in CONTROL_MODES:
            return f"a Z-Image model with a Fun control file ({CONTROL_SOURCE})"
        return super().needs_for_mode(mode)


ZIMAGE = register(ZImageFamily())
