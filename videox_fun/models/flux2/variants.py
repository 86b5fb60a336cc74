"""FLUX.2-dev's generation defaults, scheduler, size rules and the typed folder config.

FLUX.2-dev is guidance-distilled: the guidance scale is embedded (one pass a step, no classifier-free guidance),
default 4 over 50 steps (diffusers' ``Flux2Pipeline``; model-facts). The flow shift is BFL's empirical mu, a
function of the image token count and the step count (``compute_empirical_mu``), unless a static ``--shift`` is
given. The text encoder is Mistral-Small-3.2-24B; the transformer reads its hidden states of layers 10, 20 and 30
stacked (3 x 5120 = 15,360 channels) over 512 tokens.

A folder config may name a Fun control file (``control_path``, with ``control_context_scale``): the folder then
serves control (and, with a file that reads a mask, control_inpaint) too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import GenerationDefaults, load_folder_config
from ...families import ImageSizeRules
from ..flux.tiny import SCHEDULER_CONFIGS

VARIANT = "FLUX.2-dev"
# 8x VAE, then 2x2 patchified into one token: 16 pixels a token side.
SIZE_RULES = ImageSizeRules(multiple=16)
TEXT_LEN = 512  # Mistral tokens a prompt is padded / truncated to (diffusers' max_sequence_length)
TEXT_LAYERS = (10, 20, 30)  # the hidden states stacked (indices into transformers' hidden_states: 0 = embeddings)
# The released scheduler/scheduler_config.json (not verified against the file): FLUX.1-dev's, diffusers' FLUX
# defaults with dynamic shifting, which the empirical mu drives.
SCHEDULER_CONFIG: dict[str, Any] = SCHEDULER_CONFIGS["FLUX.1-dev"]


def default_settings() -> GenerationDefaults:
    """What the release was made for: 1024x1024, 50 steps, embedded guidance 4, the empirical shift (``shift`` 0:
    none given)."""
    return GenerationDefaults(height=1024, width=1024, num_frames=1, fps=1, steps=50, guidance_scale=4.0, shift=0.0,
                              sampler="Flow")  # fmt: skip


@dataclass
class Flux2Config:
    """Where each component of a FLUX.2 folder lives and its generation defaults (a ``videox_fun.yaml`` in the
    folder may set them; unknown fields are an error)."""

    format: str = "diffusers"
    pipeline: str = "Flux2"
    transformer_subpath: str = "transformer"
    vae_subpath: str = "vae"
    text_encoder_subpath: str = "text_encoder"  # Mistral3ForConditionalGeneration
    tokenizer_subpath: str = "tokenizer"
    scheduler_subpath: str = "scheduler"
    text_len: int = TEXT_LEN
    text_layers: tuple[int, ...] = TEXT_LAYERS
    # A Fun control file (FLUX.2-dev-Fun-Controlnet-Union), relative to the folder or absolute ("": none;
    # --control-path gives one per request), and how strongly its hints steer (VideoX-Fun's default 0.75).
    control_path: str = ""
    control_context_scale: float = 0.75
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""


def load_config(path: str | Path | None) -> Flux2Config:
    """A folder's FLUX.2 config from its YAML (None: the layout's defaults and the release's generation defaults)."""
    config = load_folder_config(path, Flux2Config, default_settings(), "Flux2")
    config.text_layers = tuple(config.text_layers)  # YAML gives a list
    return config
