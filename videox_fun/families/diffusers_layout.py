"""How the diffusers-layout image families (FLUX.1, Qwen-Image, Z-Image) read a folder, from config files only: the
transformer class that claims it, the folder's own YAML, the VAE class checked before any weight is read, the
:class:`~videox_fun.families.Recognised` they all build the same way, and the LoRA reader their transformers get."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import FOLDER_CONFIG_NAME, read_json_mapping
from . import DISTILL_TIMESTEPS, Family, Mode, Pipeline, Recognised, Setting, SizeRules

if TYPE_CHECKING:
    import torch

# The modes every diffusers-layout image family serves, in the order inference prefers them; each makes one image
# (written as PNG). Families add theirs after these (Qwen-Image's edit, the Fun control modes).
IMAGE_MODES = {
    "t2i": Mode("t2i", folder="images", output="image", description="text to image"),
    "i2i": Mode("i2i", needs=("image",), folder="images_i2i", output="image",
                description="image to image (denoise --strength)"),
    "inpaint": Mode("inpaint", needs=("image", "mask"), folder="images_inpaint", output="image",
                    description="regenerate the white of --mask in --image (denoise --strength)"),
}  # fmt: skip
# Flow-matching Euler, diffusers' FlowMatchEulerDiscreteScheduler from the folder's scheduler config. "Flow_Distill"
# names the grid a distilled student was trained on (`--distill`): for these families it is the one "Flow" visits at
# the same step count (sigmas linspace(1, 1/K, K) under the family's shift), so the name is accepted as the same
# sampler and a Wan student's command line works unchanged.
FLOW_SAMPLERS = ("Flow", "Flow_Distill")


class DiffusersImageFamily(Family):
    """An image family of diffusers-layout folders, loaded by its pipeline class's ``from_pretrained``."""

    pipeline: ClassVar[str]  # "module:Class", imported when a folder loads (the family layer imports no torch)
    settings: tuple[Setting, ...] = (DISTILL_TIMESTEPS,)

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> Pipeline:
        """Every component of the folder, as the pipeline class's ``from_pretrained`` loads it."""
        module, name = self.pipeline.split(":")
        pipeline_class = getattr(importlib.import_module(module), name)
        pipe = pipeline_class.from_pretrained(recognised, device=device, dtype=dtype)
        attach_lora_reader(pipe, recognised.folder)
        return pipe


def attach_lora_reader(pipe: Pipeline, folder: Path) -> None:
    """Give the pipeline's transformers the ``lora_state_dict`` hook that :func:`~videox_fun.models.lora.merge_lora`
    reads LoRA files of other layouts through (kohya / sd-scripts, ComfyUI, BFL names): the reader of diffusers'
    pipeline class that the folder's ``model_index.json`` names (``FluxPipeline``, ``Flux2Pipeline``,
    ``QwenImagePipeline``, ``QwenImageEditPipeline``, ``ZImagePipeline``...), so a file merges as that pipeline's
    ``load_lora_weights`` + ``fuse_lora`` would apply it. A class diffusers lacks, or one without a LoRA reader,
    attaches nothing (diffusers-named files still merge)."""
    name = read_json_mapping(folder / "model_index.json", "model index").get("_class_name")
    attach_named_lora_reader(pipe, name if isinstance(name, str) else "")


def attach_named_lora_reader(pipe: Pipeline, name: str) -> None:
    """Give the pipeline's transformers the LoRA reader of diffusers' pipeline class ``name`` (see
    :func:`attach_lora_reader`; a model joined from single files names its class itself)."""
    import diffusers

    from ..models.lora import diffusers_lora_reader

    loader = getattr(diffusers, name, None) if name else None
    if loader is None or not hasattr(loader, "lora_state_dict"):
        return
    for transformer in pipe.transformers:
        transformer.lora_state_dict = diffusers_lora_reader(loader)


def transformer_config(folder: Path, transformer_class: str) -> Mapping[str, Any] | None:
    """The folder's ``transformer/config.json`` when the folder is in diffusers layout (``model_index.json``) and
    its transformer is a ``transformer_class``; None for any other layout or class (another family's folder)."""
    path = folder / "transformer" / "config.json"
    if not (folder / "model_index.json").is_file() or not path.is_file():
        return None
    config = read_json_mapping(path, "transformer config")
    return config if config.get("_class_name") == transformer_class else None


def own_config_path(folder: Path, config_path: Path | None) -> Path | None:
    """The YAML the user named, else the folder's own ``videox_fun.yaml`` when it has one."""
    if config_path is not None:
        return config_path
    return folder / FOLDER_CONFIG_NAME if (folder / FOLDER_CONFIG_NAME).is_file() else None


def check_vae(folder: Path, subpath: str, family: str, transformer_class: str, vae_class: str) -> None:
    """Fail in one line when the folder's VAE is not the ``vae_class`` that ``family`` needs (a Wan or FLUX VAE
    beside a Qwen-Image transformer), before any weight is read."""
    path = folder / subpath / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no VAE config at {path} (a {family} folder needs an {vae_class})")
    found = read_json_mapping(path, "VAE config").get("_class_name")
    if found != vae_class:
        raise ValueError(f"{folder}: the transformer is a {transformer_class} but the VAE is a {found} ({path}); "
                         f"a {family} model needs an {vae_class}")  # fmt: skip


def recognised(
    family: Family, folder: Path, config: Any, variant: str, modes: tuple[str, ...], sizes: SizeRules
) -> Recognised:
    """A recognised image folder: its typed ``config`` gives the defaults and the note shown on load."""
    return Recognised(
        family=family,
        folder=folder,
        config=config,
        variant=variant,
        modes=modes,
        defaults=config.defaults,
        sizes=sizes,
        note=config.note,
    )
