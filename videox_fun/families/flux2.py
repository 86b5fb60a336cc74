"""The FLUX.2 family (Black Forest Labs' FLUX.2-dev) as the family layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``Flux2Transformer2DModel``; the VAE must be an ``AutoencoderKLFlux2``, checked
before any weight is read. A BFL single file (``flux2-dev.safetensors``) replaces a folder's transformer through
``--transformer-path``.

VideoX-Fun's Fun control file (FLUX.2-dev-Fun-Controlnet-Union) adds the modes ``control`` (a control image) and,
with a file that reads a mask (the release's 260 channels), ``control_inpaint``: the file comes per request
(``--control-path``) or from the folder config (``control_path``); its header is checked (another base's control
file is one line) before any weight is read.
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
from .fun_control import (
    CONTROL_MODE_TABLE,
    CONTROL_MODES,
    CONTROL_SOURCE,
    control_file_check,
    control_settings,
    control_variant,
    side_release_reader,
)

# The shared image modes (t2i, i2i with --strength, inpaint with --mask) and the Fun control ones.
FLUX2_MODES = {**IMAGE_MODES, **CONTROL_MODE_TABLE}
FLUX2_SAMPLERS = FLOW_SAMPLERS
TRANSFORMER_CLASS = "Flux2Transformer2DModel"
VAE_CLASS = "AutoencoderKLFlux2"
READ_CONTROL = side_release_reader("videox_fun.models.flux2.control", "Flux2Control")


class Flux2Family(DiffusersImageFamily):
    """FLUX.2-dev (diffusers layout; BFL transformer files through --transformer-path)."""

    name = "flux2"
    modes = FLUX2_MODES
    samplers = FLUX2_SAMPLERS
    description = "FLUX.2-dev text-to-image, image-to-image and inpainting, and Fun control (diffusers layout)"
    pipeline = "videox_fun.pipelines.flux2:Flux2Pipeline"
    settings = control_settings(control_file_check(READ_CONTROL, "a file of 260 channels (control, mask, image)"))

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A FLUX.2 folder as its config files describe it (None for another family's layout)."""
        from ..models.flux2.variants import SIZE_RULES, VARIANT, load_config

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path))
        check_vae(folder, config.vae_subpath, family="FLUX.2", transformer_class=TRANSFORMER_CLASS, vae_class=VAE_CLASS)
        variant = control_variant(VARIANT, folder, config, READ_CONTROL)
        return recognised(self, folder, config, variant, tuple(self.modes), SIZE_RULES)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        if mode in CONTROL_MODES:
            return f"a FLUX.2 model with a Fun control file ({CONTROL_SOURCE})"
        return super().needs_for_mode(mode)


FLUX2 = register(Flux2Family())
