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
from typing import TYPE_CHECKING

from ..argparsing import finite_float
from . import Family, Mode, Recognised, Setting, register
from .diffusers_layout import check_vae, own_config_path, recognised, transformer_config
from .flux import FLUX_MODES, FLUX_SAMPLERS
from .flux import VAE_CLASS as FLUX_VAE_CLASS

if TYPE_CHECKING:
    import torch

    from ..pipelines.zimage import ZImagePipeline

# FLUX.1's modes (t2i, i2i with --strength, inpaint with --mask) and the Fun control ones, each one PNG image.
CONTROL_MODES = ("control", "control_inpaint")
ZIMAGE_MODES = {
    **FLUX_MODES,
    "control": Mode("control", needs=("control_video",), folder="images_control", output="image",
                    description="follow a control image (canny / depth / pose) with a Fun control file"),
    "control_inpaint": Mode("control_inpaint", needs=("image", "mask"), allows=("control_video",),
                            folder="images_inpaint_control", output="image",
                            description="regenerate the white of --mask in --image with a 2.x Fun control file "
                                        "(following --control-video when given)"),
}  # fmt: skip
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config.
ZIMAGE_SAMPLERS = FLUX_SAMPLERS
TRANSFORMER_CLASS = "ZImageTransformer2DModel"
CONTROL_SOURCE = "--control-path, or control_path in the folder's videox_fun.yaml"


def check_control_file(value: object, mode: str) -> None:
    """Fail in one line, from the file's header alone, on a control file that is missing, another model's, or a
    1.0 file (control only) asked to inpaint."""
    from ..models.zimage.control import read_control_release

    release = read_control_release(Path(str(value)))
    if mode == "control_inpaint" and not release.inpaint:
        raise ValueError(f"--control-path {value}: {release.name} reads a control image only; control_inpaint needs "
                         "a 2.x file (control, mask and masked image in 33 channels)")  # fmt: skip


CONTROL_SETTINGS = (
    Setting(
        "control_path",
        help="a Fun control file (VideoX-Fun's *-Fun-Controlnet-Union .safetensors) loaded into the control model",
        modes=CONTROL_MODES,
        check=check_control_file,
    ),
    Setting(
        "control_context_scale",
        help="Fun control models: how strongly the control hints steer (default: the folder config's, 0.75)",
        type=finite_float,
        modes=CONTROL_MODES,
    ),
)


class ZImageFamily(Family):
    """Z-Image and Z-Image-Turbo (diffusers layout; original-layout transformer files through --transformer-path)."""

    name = "zimage"
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    description = ("Z-Image / Z-Image-Turbo text-to-image, image-to-image and inpainting, and Fun control "
                   "(diffusers layout)")  # fmt: skip
    settings = CONTROL_SETTINGS
    training_spec = "zimage"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A Z-Image folder as its config files describe it (None for another family's layout)."""
        from ..models.zimage.control import read_control_release
        from ..models.zimage.variants import SIZE_RULES, load_config, variant_of

        if transformer_config(folder, TRANSFORMER_CLASS) is None:
            return None
        config = load_config(own_config_path(folder, config_path), folder)
        check_vae(folder, config.vae_subpath, "Z-Image", TRANSFORMER_CLASS, FLUX_VAE_CLASS)
        variant = variant_of(folder, config.variant).name
        if config.control_path:  # the folder's own control file: named in the variant, its header checked
            variant += f" + {read_control_release(folder / config.control_path).name}"
        return recognised(self, folder, config, variant, tuple(self.modes), SIZE_RULES)

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> ZImagePipeline:
        """Every component of the folder, as :meth:`ZImagePipeline.from_pretrained` loads it."""
        from ..pipelines.zimage import ZImagePipeline

        return ZImagePipeline.from_pretrained(recognised, device=device, dtype=dtype)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        if mode in CONTROL_MODES:
            return f"a Z-Image model with a Fun control file ({CONTROL_SOURCE})"
        return super().needs_for_mode(mode)


ZIMAGE = register(ZImageFamily())
