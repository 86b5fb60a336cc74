# ruff: noqa: N802  (ComfyUI's INPUT_TYPES)
"""What the node modules share: VideoX-Fun's socket type names, the widgets every family's nodes draw the same
way, and the chainable LoRA node (each family's LoRA node is it under its own name and category).

The video families' nodes live in :mod:`.nodes`, the image families' in :mod:`.image_nodes`; both import from
here, so neither imports the other (``nodes`` gathers every class into ``NODE_CLASS_MAPPINGS``).
"""

from __future__ import annotations

from typing import ClassVar

from videox_fun.families import get_family
from videox_fun.runtime.offload import MEMORY_MODES

from . import host
from .models import PRECISIONS, FunModels

CATEGORY = "VideoX-Fun"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
FUN_MODELS = "FunModels"
PROMPT = "STRING_PROMPT"
BOOL_CHOICE = [False, True]  # VideoX-Fun's boolean widgets are two-value combos; kept so its workflows validate
# VideoX-Fun's ComfyUI names of samplers that the library names otherwise.
SAMPLER_ALIASES = {"DDIM": "DDIM_Origin"}


class ModelFileWidgets:
    """The widgets of a node that reads one file from ComfyUI's model folders (the chunked loaders): ``model_name``
    listed from ``FOLDERS``, the node's own ``OPTIONS``, then ``precision``."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("diffusion_models",)
    OPTIONS: ClassVar[dict[str, tuple]] = {}
    DEFAULT_PRECISION = "bf16"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = host.model_file_names(*cls.FOLDERS)
        return {
            "required": {
                "model_name": (names, {"default": names[0] if names else None}),
                **cls.OPTIONS,
                "precision": (list(PRECISIONS), {"default": cls.DEFAULT_PRECISION}),
            }
        }


def memory_modes() -> tuple[list[str], dict]:
    """The GPU_memory_mode widget (the library's modes, VideoX-Fun's names)."""
    return list(MEMORY_MODES), {"default": "model_cpu_offload"}


def family_samplers(family: str) -> list[str]:
    """A family's samplers by name, plus VideoX-Fun's ComfyUI aliases of them."""
    names = list(get_family(family).samplers)
    return names + [alias for alias, name in SAMPLER_ALIASES.items() if name in names]


class FunLora:
    """Add a LoRA from ComfyUI's ``loras/`` folder (chainable); merged for each run and taken out after it."""

    MODELS = "funmodels"
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "load_lora"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                cls.MODELS: (FUN_MODELS,),
                "lora_name": (host.lora_names(), {"default": None}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                # Accepted for VideoX-Fun's workflows: every run restores the weights exactly, cached or not.
                "lora_cache": (BOOL_CHOICE, {"default": False}),
            }
        }

    def load_lora(self, lora_name: str | None, strength_model: float, lora_cache: bool, **models: FunModels) -> tuple:
        fun_models = models[self.MODELS]
        if not lora_name:  # an empty loras/ folder: the chain goes on unchanged, as in VideoX-Fun
            return (fun_models,)
        return (fun_models.replace(loras=(*fun_models.loras, (host.lora_path(lora_name), strength_model))),)
