"""The CogVideoX family (THUDM's CogVideoX / CogVideoX1.5 and alibaba-pai's CogVideoX-Fun) as the family
layer reads it.

Recognition reads config files only: a diffusers-layout folder (``model_index.json``) whose
``transformer/config.json`` is a ``CogVideoXTransformer3DModel``. The variant, and so the modes, is
read off that config (:func:`videox_fun.models.cogvideox.variants.variant_of`); the VAE must be a
CogVideoX one, checked before any weight is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import FOLDER_CONFIG_NAME, read_json_mapping, read_yaml_mapping
from . import Family, Mode, Recognised, register

if TYPE_CHECKING:
    import torch

    from ..pipelines.cogvideox import CogVideoXPipeline

# The modes, in the order inference prefers them; folders as VideoX-Fun names its sample folders.
COGVIDEOX_MODES = {
    "t2v": Mode("t2v", folder="videos", description="text to video"),
    "i2v": Mode(
        "i2v",
        needs=("image",),
        allows=("end_image",),
        folder="videos_i2v",
        description="start (and end) image to video",
    ),
    "v2v": Mode("v2v", needs=("video",), folder="videos_v2v", description="video to video (denoise strength)"),
    "inpaint": Mode("inpaint", needs=("video", "mask"), folder="videos_v2v", description="regenerate the white mask"),
    "control": Mode(
        "control",
        needs=("control_video",),
        folder="videos_v2v_control",
        description="follow a control video (canny, depth, pose)",
    ),
}
# VideoX-Fun's sampler names (examples/cogvideox_fun/predict_*.py), plus DPM_Cog (THUDM's cli_demo).
COGVIDEOX_SAMPLERS = ("DDIM_Origin", "DDIM_Cog", "DPM_Cog", "Euler", "Euler A", "DPM++", "PNDM")
TRANSFORMER_CLASSES = ("CogVideoXTransformer3DModel", "CogVideoXTransformer")
VAE_CLASS = "AutoencoderKLCogVideoX"
# Which checkpoint serves a mode, for error messages.
MODE_NEEDS = {
    "t2v": "a CogVideoX T2V or CogVideoX-Fun InP model",
    "i2v": "a CogVideoX I2V or CogVideoX-Fun InP model",
    "v2v": "a CogVideoX T2V or CogVideoX-Fun InP model",
    "inpaint": "a CogVideoX-Fun InP model",
    "control": "a CogVideoX-Fun Control (or Pose) model",
}


def is_fun_folder(index: dict, transformer_config: dict) -> bool:
    """Whether a folder is an alibaba-pai Fun release (VideoX-Fun's defaults) rather than THUDM's."""
    from ..models.cogvideox.variants import variant_of

    if variant_of(transformer_config).kind in ("inp", "control"):
        return True
    return "add_noise_in_inpaint_model" in transformer_config or "Fun" in str(index.get("_class_name", ""))


class CogVideoXFamily(Family):
    """CogVideoX-2b / -5b / -5b-I2V, CogVideoX1.5-5B(-I2V) and CogVideoX-Fun InP / Control / Pose."""

    name = "cogvideox"
    modes = COGVIDEOX_MODES
    samplers = COGVIDEOX_SAMPLERS
    training_spec = "cogvideox"
    description = "CogVideoX / CogVideoX1.5 (T2V, I2V) and CogVideoX-Fun InP / Control (diffusers layout)"

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """A CogVideoX folder as its config files describe it (None for another family's layout).

        A CogVideoX transformer beside another family's VAE fails here, naming both, before any weight is read.
        """
        from ..models.cogvideox.variants import (
            CogVideoXConfig,
            default_settings,
            load_config,
            size_rules,
            variant_of,
        )

        index_path = folder / "model_index.json"
        if not index_path.is_file():
            return None
        own = config_path or (folder / FOLDER_CONFIG_NAME if (folder / FOLDER_CONFIG_NAME).is_file() else None)
        subpath = "transformer"
        if own is not None:
            subpath = read_yaml_mapping(own, "model config").get("transformer_subpath", subpath)
        transformer_path = folder / subpath / "config.json"
        if not transformer_path.is_file():
            return None
        transformer_config = read_json_mapping(transformer_path, "transformer config")
        if transformer_config.get("_class_name") not in TRANSFORMER_CLASSES:
            return None
        index = read_json_mapping(index_path, "diffusers model index")
        defaults = default_settings(transformer_config, fun=is_fun_folder(index, transformer_config))
        config = load_config(own, defaults) if own is not None else CogVideoXConfig(defaults=defaults)
        check_vae(folder, config.vae_subpath, transformer_config.get("_class_name", TRANSFORMER_CLASSES[0]))
        variant = variant_of(transformer_config)
        return Recognised(
            family=self,
            folder=folder,
            config=config,
            variant=variant.name,
            modes=tuple(mode for mode in self.modes if mode in variant.modes),
            defaults=config.defaults,
            sizes=size_rules(transformer_config),
            note=config.note,
        )

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> CogVideoXPipeline:
        """Every component of the folder, as :meth:`CogVideoXPipeline.from_pretrained` loads it."""
        from ..pipelines.cogvideox import CogVideoXPipeline

        return CogVideoXPipeline.from_pretrained(recognised, device=device, dtype=dtype)

    def needs_for_mode(self, mode: str) -> str:
        """The kind of released CogVideoX model that serves ``mode``."""
        return MODE_NEEDS.get(mode, super().needs_for_mode(mode))


def check_vae(folder: Path, subpath: str, transformer_class: str) -> None:
    """Fail in one line when the folder's VAE is not a CogVideoX one (a Wan VAE beside a CogVideoX DiT)."""
    path = folder / subpath / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no VAE config at {path} (a CogVideoX folder needs a {VAE_CLASS})")
    found = read_json_mapping(path, "VAE config").get("_class_name")
    if found != VAE_CLASS:
        raise ValueError(
            f"{folder}: the transformer is a {transformer_class} but the VAE is a {found} ({path}); "
            f"a CogVideoX model needs an {VAE_CLASS}"
        )


COGVIDEOX = register(CogVideoXFamily())
