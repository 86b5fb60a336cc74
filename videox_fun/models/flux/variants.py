"""FLUX.1 variants read off the transformer config, their generation defaults, the size rules and the typed
folder config.

* **dev** (``guidance_embeds`` true): guidance-distilled; the guidance scale is embedded (no second pass),
  default 3.5 over 28 steps (diffusers' ``FluxPipeline``; BFL's CLI runs 50), T5 prompts of 512 tokens.
* **schnell** (no guidance embedding): timestep-distilled, 4 steps, no guidance, T5 prompts of 256 tokens.

Both take the resolution-dependent shift of the folder's scheduler config (``use_dynamic_shifting``: mu from
the packed image's token count, 0.5 at 256 tokens to 1.15 at 4096), unless a static ``--shift`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import GenerationDefaults, load_folder_config
from ...families import ImageSizeRules

# The packed latent token: 2x2 latent pixels of 8x8 image pixels.
PACK = 2
SIZE_RULES = ImageSizeRules(multiple=8 * PACK)


@dataclass(frozen=True)
class FluxVariant:
    """What a FLUX.1 transformer config says about the checkpoint."""

    name: str  # "FLUX.1-dev" | "FLUX.1-schnell"
    guidance_embeds: bool
    text_len: int  # T5 tokens the release was trained with


DEV = FluxVariant("FLUX.1-dev", True, 512)
SCHNELL = FluxVariant("FLUX.1-schnell", False, 256)


def variant_of(config: Mapping[str, Any]) -> FluxVariant:
    """dev when the config embeds guidance, else schnell."""
    return DEV if config.get("guidance_embeds", False) else SCHNELL


def default_settings(variant: FluxVariant) -> GenerationDefaults:
    """What a release was made for: 1024x1024; dev 28 steps at guidance 3.5, schnell 4 steps without guidance.

    ``shift`` 0 means none given: the scheduler config's resolution-dependent shift applies.
    """
    steps, guidance = (28, 3.5) if variant.guidance_embeds else (4, 0.0)
    return GenerationDefaults(height=1024, width=1024, num_frames=1, fps=1, steps=steps, guidance_scale=guidance,
                              shift=0.0, sampler="Flow")  # fmt: skip


@dataclass
class FluxConfig:
    """Where each component of a FLUX.1 folder lives and its generation defaults (a ``videox_fun.yaml`` in the
    folder may set them; unknown fields are an error)."""

    format: str = "diffusers"
    pipeline: str = "Flux"
    transformer_subpath: str = "transformer"
    vae_subpath: str = "vae"
    text_encoder_subpath: str = "text_encoder"  # CLIP
    tokenizer_subpath: str = "tokenizer"
    text_encoder_2_subpath: str = "text_encoder_2"  # T5
    tokenizer_2_subpath: str = "tokenizer_2"
    scheduler_subpath: str = "scheduler"
    text_len: int | None = None  # T5 tokens (None: the variant's, 512 dev / 256 schnell)
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""


def load_config(path: str | Path | None, base: GenerationDefaults) -> FluxConfig:
    """A folder's FLUX config from its YAML (None: the layout's defaults); ``defaults`` entries override ``base``."""
    return load_folder_config(path, FluxConfig, base, "Flux")
