"""Z-Image variants, their generation defaults, the size rules and the typed folder config.

Z-Image and Z-Image-Turbo share one architecture and one transformer config: which a folder holds is the folder
config's ``variant`` when set, else read off the folder name (``Z-Image-Turbo``), else the base.

* **Turbo** (distilled): 8 steps without classifier-free guidance (guidance 0), as diffusers' example runs it
  (Tongyi's README passes ``num_inference_steps=9``); 1024x1024.
* **base**: 25 steps with guidance 4 (VideoX-Fun's defaults; diffusers' pipeline defaults to 50 and 5).

A folder config may name a Fun control file (``control_path``, with ``control_context_scale``): the folder then
serves control (and, with a 2.x file, control_inpaint) too.

Guidance is diffusers' Z-Image form ``cond + scale * (cond - uncond)``: 0 runs one pass a step. Both take the
folder's static flow shift (3, ``use_dynamic_shifting`` false) unless ``--shift`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import GenerationDefaults, load_folder_config
from ...families import ImageSizeRules

# 8x VAE, then the transformer's own 2x2 patches.
SIZE_RULES = ImageSizeRules(multiple=16)
VARIANTS = ("base", "turbo")
# The released scheduler/scheduler_config.json (model-facts: FlowMatchEuler, shift 3, static).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}


@dataclass(frozen=True)
class ZImageVariant:
    """What a Z-Image release is for."""

    name: str  # "Z-Image" | "Z-Image-Turbo"
    steps: int
    guidance_scale: float


BASE = ZImageVariant("Z-Image", 25, 4.0)
TURBO = ZImageVariant("Z-Image-Turbo", 8, 0.0)


def variant_of(folder: Path, declared: str = "") -> ZImageVariant:
    """The folder config's ``variant`` (base / turbo) when set, else Turbo when the folder is named so."""
    if declared and declared not in VARIANTS:
        raise ValueError(f"{folder}: unknown Z-Image variant {declared!r}; choose one of {', '.join(VARIANTS)}")
    turbo = declared == "turbo" if declared else "turbo" in folder.name.lower()
    return TURBO if turbo else BASE


def default_settings(variant: ZImageVariant) -> GenerationDefaults:
    """What a release was made for: 1024x1024 at the variant's steps and guidance, the scheduler's own shift."""
    return GenerationDefaults(height=1024, width=1024, num_frames=1, fps=1, steps=variant.steps,
                              guidance_scale=variant.guidance_scale, shift=0.0, sampler="Flow")  # fmt: skip


@dataclass
class ZImageConfig:
    """Where each component of a Z-Image folder lives and its generation defaults (a ``videox_fun.yaml`` in the
    folder may set them; unknown fields are an error)."""

    format: str = "diffusers"
    pipeline: str = "ZImage"
    variant: str = ""  # base | turbo ("": read off the folder name)
    transformer_subpath: str = "transformer"
    vae_subpath: str = "vae"
    text_encoder_subpath: str = "text_encoder"  # Qwen3
    tokenizer_subpath: str = "tokenizer"
    scheduler_subpath: str = "scheduler"
    text_len: int = 512  # Qwen3 tokens a prompt is padded / truncated to
    # A Fun control file (Z-Image-Turbo-Fun-Controlnet-Union), relative to the folder or absolute ("": none;
    # --control-path gives one per request), and how strongly its hints steer (VideoX-Fun: 0.75-0.9 Turbo, 0.9 base).
    control_path: str = ""
    control_context_scale: float = 0.75
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""


def load_config(path: str | Path | None, folder: Path) -> ZImageConfig:
    """A folder's Z-Image config from its YAML (None: the layout's defaults, the variant's generation defaults)."""
    declared = load_folder_config(path, ZImageConfig, GenerationDefaults(), "ZImage").variant
    return load_folder_config(path, ZImageConfig, default_settings(variant_of(folder, declared)), "ZImage")
