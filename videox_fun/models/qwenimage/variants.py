"""Qwen-Image variants read off the folder's ``model_index.json``, their generation defaults, the size rules and
the typed folder config.

* **Qwen-Image** (``QwenImagePipeline``): text to image; true classifier-free guidance (``true_cfg_scale`` 4.0
  with a negative prompt, " " when none is given, as the release's README runs it), 50 steps, 1328x1328.
* **Qwen-Image-Edit** (``QwenImageEditPipeline``): the same transformer; the edit image goes to Qwen2.5-VL and, as
  latent tokens, after the noisy tokens; output sized from the image's aspect ratio at 1024x1024 pixels' area.
* **Qwen-Image-Edit-2509** (``QwenImageEditPlusPipeline``): up to 3 pictures, each read by Qwen2.5-VL at 384x384
  pixels' area (``Picture i:`` before the prompt) and, at the VAE's 1024x1024 pixels' area, as latent tokens after
  the noisy ones; output sized from the last picture's aspect ratio. Edit-2511's folder names the same pipeline; its
  transformer config's ``zero_cond_t`` tells it apart (``families.qwenimage.folder_variant``).

A Qwen-Image folder config may name a Fun control file (``control_path``, with ``control_context_scale``): the
folder then serves control (and, with a file that reads a mask, control_inpaint) too.

Both take the resolution-dependent shift of the folder's scheduler config unless a static ``--shift`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import GenerationDefaults, load_folder_config
from ...families import ImageSizeRules
from .text_encoder import EDIT_PLUS_TEMPLATE, EDIT_TEMPLATE, T2I_TEMPLATE, PromptTemplate

# 8x VAE and 2x2 packed tokens; the edit image's size is rounded to 32 as diffusers' calculate_dimensions does.
SIZE_RULES = ImageSizeRules(multiple=16)
EDIT_SIZE_MULTIPLE = 32
# The release's scheduler/scheduler_config.json (model-facts: not verified against the files; the values are
# those diffusers' Qwen-Image documentation and tests use: exponential time shift, mu 0.5 -> 0.9 over 256 -> 8192
# tokens, terminal sigma 0.02).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


@dataclass(frozen=True)
class QwenImageVariant:
    """What a Qwen-Image folder serves, read off its ``model_index.json``."""

    name: str  # "Qwen-Image" | "Qwen-Image-Edit"
    pipeline_class: str  # the diffusers pipeline its model_index.json names
    template: PromptTemplate
    edit: bool  # the edit image goes to the text encoder and the transformer
    pictures: int = 1  # edit pictures it reads at most
    vision_area: int = 0  # pixels of each picture as the VL model reads it (0: the config's edit_area, as the VAE)

    @property
    def modes(self) -> tuple[str, ...]:
        """The family's modes this variant serves: edit, or t2i / i2i / inpaint and the Fun control modes (with a
        control file)."""
        return ("edit",) if self.edit else ("t2i", "i2i", "inpaint", "control", "control_inpaint")


T2I = QwenImageVariant("Qwen-Image", "QwenImagePipeline", T2I_TEMPLATE, False)
EDIT = QwenImageVariant("Qwen-Image-Edit", "QwenImageEditPipeline", EDIT_TEMPLATE, True)
# The release card's 1 to 3 pictures; diffusers' CONDITION_IMAGE_SIZE for the VL model.
EDIT_PLUS = QwenImageVariant("Qwen-Image-Edit-2509", "QwenImageEditPlusPipeline", EDIT_PLUS_TEMPLATE, True,
                             pictures=3, vision_area=384 * 384)  # fmt: skip
VARIANTS = {variant.pipeline_class: variant for variant in (T2I, EDIT, EDIT_PLUS)}
# Releases of the same transformer that take another recipe (layers): not served yet.
UNSERVED = {"QwenImageLayeredPipeline": "Qwen-Image-Layered"}


def variant_of(model_index: Mapping[str, Any], folder: Path | None = None) -> QwenImageVariant:
    """The variant a ``model_index.json`` names; one line for a release of another recipe."""
    name = model_index.get("_class_name")
    if name in UNSERVED:
        raise ValueError(f"{folder}: a {UNSERVED[name]} folder ({name}); this version serves Qwen-Image, "
                         "Qwen-Image-Edit and Qwen-Image-Edit-2509 only")  # fmt: skip
    if name in VARIANTS:
        return VARIANTS[name]
    return EDIT if "processor" in model_index else T2I  # a renamed pipeline: the edit processor tells


def default_settings(variant: QwenImageVariant) -> GenerationDefaults:
    """What a release was made for: 50 steps at true CFG 4.0 with a " " negative prompt; Qwen-Image 1328x1328,
    Edit 1024x1024 (its size then follows the edit image's aspect ratio at that area).

    ``shift`` 0 means none given: the scheduler config's resolution-dependent shift applies.
    """
    side = 1024 if variant.edit else 1328
    return GenerationDefaults(height=side, width=side, num_frames=1, fps=1, steps=50, guidance_scale=4.0,
                              shift=0.0, sampler="Flow", negative_prompt=" ")  # fmt: skip


@dataclass
class QwenImageConfig:
    """Where each component of a Qwen-Image folder lives and its generation defaults (a ``videox_fun.yaml`` in the
    folder may set them; unknown fields are an error)."""

    format: str = "diffusers"
    pipeline: str = "QwenImage"
    transformer_subpath: str = "transformer"
    vae_subpath: str = "vae"
    text_encoder_subpath: str = "text_encoder"
    tokenizer_subpath: str = "tokenizer"
    processor_subpath: str = "processor"  # Edit only
    scheduler_subpath: str = "scheduler"
    text_len: int = 512  # diffusers' max_sequence_length
    edit_area: int = 1024 * 1024  # pixels of the edit image as the VAE (and, but for Edit-2509, the VL model) reads it
    # A Fun control file (Qwen-Image-2512-Fun-Controlnet-Union), relative to the folder or absolute ("": none;
    # --control-path gives one per request), and how strongly its hints steer (VideoX-Fun's default 0.8).
    control_path: str = ""
    control_context_scale: float = 0.8
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""


def load_config(path: str | Path | None, base: GenerationDefaults) -> QwenImageConfig:
    """A folder's Qwen-Image config from its YAML (None: the layout's defaults); ``defaults`` override ``base``."""
    return load_folder_config(path, QwenImageConfig, base, "QwenImage")
