"""CogVideoX(-Fun) variants read off the transformer config, the released configs as presets, the
typed folder config and the size rules.

Variants (never from a path; :func:`variant_of` reads ``in_channels`` and the embeddings):

* T2V: 16 input channels (CogVideoX-2b / -5b / 1.5-5B);
* I2V: 32 = 16 noise + 16 image latents (first frame, zeros after), with learned positional
  embeddings (5b-I2V) or an ``ofs`` embedding (1.5-5B-I2V);
* Fun InP: 33 = 16 noise + 1 mask + 16 masked-video latents;
* Fun Control (and Pose): 32 = 16 noise + 16 control-video latents.

``patch_size_t`` (CogVideoX 1.5) makes the model patch 2 latent frames together, so the latent
frame count must be even (see :class:`CogVideoXSizeRules`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...config import GenerationDefaults, read_yaml_mapping
from ...families import SizeRules

LATENT_CHANNELS = 16

# Released config values (model-facts: THUDM configs, diffusers' convert_cogvideox_to_diffusers.py).
_COMMON: dict[str, Any] = {
    "attention_head_dim": 64,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "max_text_seq_length": 226,
    "norm_eps": 1e-5,
    "norm_elementwise_affine": True,
    "out_channels": 16,
    "patch_size": 2,
    "text_embed_dim": 4096,
    "time_embed_dim": 512,
    "timestep_activation_fn": "silu",
    "temporal_compression_ratio": 4,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
    "sample_frames": 49,
    "sample_height": 60,
    "sample_width": 90,
    "dropout": 0.0,
}
_2B = {**_COMMON, "num_attention_heads": 30, "num_layers": 30, "in_channels": 16}
_2B["use_rotary_positional_embeddings"] = False
_5B = {**_COMMON, "num_attention_heads": 48, "num_layers": 42, "in_channels": 16}
_5B["use_rotary_positional_embeddings"] = True
_15 = {**_5B, "patch_size_t": 2, "patch_bias": False, "sample_frames": 81, "sample_height": 300, "sample_width": 300}

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "CogVideoX-2b": _2B,
        "CogVideoX-5b": _5B,
        "CogVideoX-5b-I2V": {**_5B, "in_channels": 32, "use_learned_positional_embeddings": True},
        "CogVideoX1.5-5B": _15,
        "CogVideoX1.5-5B-I2V": {**_15, "in_channels": 32, "ofs_embed_dim": 512},
        "CogVideoX-Fun-V1.1-2b-InP": {**_2B, "in_channels": 33, "add_noise_in_inpaint_model": True},
        "CogVideoX-Fun-V1.1-2b-Control": {**_2B, "in_channels": 32},
        "CogVideoX-Fun-V1.1-5b-InP": {**_5B, "in_channels": 33, "add_noise_in_inpaint_model": True},
        "CogVideoX-Fun-V1.1-5b-Control": {**_5B, "in_channels": 32},
        "CogVideoX-Fun-V1.5-5b-InP": {
            **_15,
            "in_channels": 33,
            "sample_frames": 85,
            "sample_height": 384,
            "sample_width": 680,
            "add_noise_in_inpaint_model": True,
        },
    }
)

# VideoX-Fun's default negative prompt (examples/cogvideox_fun/predict_*.py).
FUN_NEGATIVE_PROMPT = (
    "The video is not of a high quality, it has a low resolution. Watermark present in each frame. "
    "The background is solid. Strange body and strange trajectory. Distortion. "
)

# Modes each kind of checkpoint serves (the family's table names them).
KIND_MODES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "t2v": ("t2v", "v2v"),
        "i2v": ("i2v",),
        "inp": ("t2v", "i2v", "v2v", "inpaint"),
        "control": ("control",),
    }
)
KIND_NAMES = {"t2v": "T2V", "i2v": "I2V", "inp": "Fun InP", "control": "Fun Control"}


@dataclass(frozen=True)
class CogVideoXVariant:
    """What a CogVideoX transformer config says about the checkpoint."""

    kind: str  # "t2v" | "i2v" | "inp" | "control"
    version: str  # "1.0" | "1.5" (patch_size_t set)
    patch_size_t: int | None
    ofs: bool  # an ofs embedding (CogVideoX1.5-I2V): the pipeline passes ofs=2.0

    @property
    def name(self) -> str:
        """A name for messages: ``CogVideoX 1.5 Fun InP``."""
        return f"CogVideoX {self.version} {KIND_NAMES[self.kind]}"

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this checkpoint serves."""
        return KIND_MODES[self.kind]

    @property
    def condition_channels(self) -> int:
        """Input channels after the 16 noise channels."""
        return {"t2v": 0, "i2v": LATENT_CHANNELS, "inp": LATENT_CHANNELS + 1, "control": LATENT_CHANNELS}[self.kind]


def variant_of(config: Mapping[str, Any]) -> CogVideoXVariant:
    """The variant of a transformer config (released or ours): read ``in_channels`` and the embeddings."""
    in_channels = int(config.get("in_channels", LATENT_CHANNELS))
    ofs = config.get("ofs_embed_dim") is not None
    if in_channels == LATENT_CHANNELS:
        kind = "t2v"
    elif in_channels == 2 * LATENT_CHANNELS + 1:
        kind = "inp"
    elif in_channels == 2 * LATENT_CHANNELS:
        # THUDM's I2V models carry learned positions (5b) or an ofs embedding (1.5); Fun Control neither.
        kind = "i2v" if ofs or config.get("use_learned_positional_embeddings") else "control"
    else:
        raise ValueError(
            f"a CogVideoX transformer with in_channels {in_channels} is none of the released variants "
            "(16 T2V, 32 I2V or Fun Control, 33 Fun InP)"
        )
    patch_size_t = config.get("patch_size_t")
    return CogVideoXVariant(kind, "1.5" if patch_size_t else "1.0", patch_size_t, ofs)


@dataclass(frozen=True)
class CogVideoXSizeRules(SizeRules):
    """Size rules of CogVideoX: 4k+1 frames; with ``latent_multiple`` 2 (CogVideoX 1.5's
    ``patch_size_t``) the latent frame count must also be even, so frames are 8k+5.

    VideoX-Fun's predict scripts round such a count up by 4 frames (one latent frame), which is
    what :meth:`valid_frame_count` does; diffusers instead pads one latent frame of noise in front
    and drops it after sampling. Rounding up keeps every mode (InP's mask and masked video, the
    control video) frame-aligned with the output, so that is the rule here.
    """

    latent_multiple: int = 1

    def frame_rule(self) -> str:
        """The rule in words (``4k+1``, or ``8k+5`` for CogVideoX 1.5)."""
        if self.latent_multiple == 1:
            return super().frame_rule()
        step = self.frame_factor * self.latent_multiple
        return f"{step}k+{self.frame_factor * (self.latent_multiple - 1) + 1}"

    def valid_frame_count(self, frames: int) -> int:
        """The nearest 4k+1 count, raised until its latent frame count divides by ``latent_multiple``."""
        frames = super().valid_frame_count(frames)
        latent = (frames - 1) // self.frame_factor + 1
        if latent % self.latent_multiple:
            frames += (self.latent_multiple - latent % self.latent_multiple) * self.frame_factor
        return frames


def size_rules(config: Mapping[str, Any]) -> CogVideoXSizeRules:
    """Sizes a transformer config takes: multiples of 16 (VAE 8 x patch 2); 49 frames at most for
    CogVideoX 1.0 (what it was trained for), 161 for 1.5."""
    patch_size_t = config.get("patch_size_t") or 1
    multiple = 8 * int(config.get("patch_size", 2))
    return CogVideoXSizeRules(
        multiple=multiple, frame_factor=4, max_frames=161 if patch_size_t > 1 else 49, latent_multiple=patch_size_t
    )


def default_settings(config: Mapping[str, Any], fun: bool) -> GenerationDefaults:
    """What a checkpoint was trained for: VideoX-Fun's settings for Fun models (384x672, 49 frames,
    8 fps, DDIM_Origin); THUDM's for the others (720x480 at 8 fps; 1.5: 1360x768 at 16 fps)."""
    v15 = bool(config.get("patch_size_t"))
    if fun:
        height, width, frames, fps = 384, 672, (85 if v15 else 49), 8
    else:
        height, width, frames, fps = (768, 1360, 85, 16) if v15 else (480, 720, 49, 8)
    return GenerationDefaults(
        height=height,
        width=width,
        num_frames=frames,
        fps=fps,
        steps=50,
        guidance_scale=6.0,
        shift=0.0,
        sampler="DDIM_Origin" if fun else "DDIM_Cog",
        negative_prompt=FUN_NEGATIVE_PROMPT if fun else "",
    )


@dataclass
class CogVideoXConfig:
    """Where each component of a CogVideoX folder lives, how to run it, and its generation defaults.

    Read from ``config/cogvideox/config.yaml``, a ``videox_fun.yaml`` in the model folder, or
    made from the folder's layout; unknown fields are an error.
    """

    format: str = "diffusers"
    pipeline: str = "CogVideoX"
    transformer_subpath: str = "transformer"
    vae_subpath: str = "vae"
    text_encoder_subpath: str = "text_encoder"
    tokenizer_subpath: str = "tokenizer"
    scheduler_subpath: str = "scheduler"
    # Noise added to the known pixels of the masked video when the transformer config sets
    # add_noise_in_inpaint_model (VideoX-Fun's noise_aug_strength).
    noise_aug_strength: float = 0.0563
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: GenerationDefaults | None = None) -> CogVideoXConfig:
        """Build from a mapping, refusing unknown fields; ``defaults`` entries override ``base``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CogVideoX config fields {unknown}; known: {sorted(known)}")
        data = dict(data)
        if data.get("pipeline", "CogVideoX") != "CogVideoX":
            raise ValueError(f"a config of pipeline {data['pipeline']!r}, not CogVideoX")
        given = data.pop("defaults", {}) or {}
        default_fields = {f.name for f in dataclasses.fields(GenerationDefaults)}
        bad = sorted(set(given) - default_fields)
        if bad:
            raise ValueError(f"unknown generation defaults {bad}; known: {sorted(default_fields)}")
        defaults = dataclasses.replace(base or GenerationDefaults(), **given)
        return cls(**data, defaults=defaults)


def load_config(path: str | Path, base: GenerationDefaults | None = None) -> CogVideoXConfig:
    """Read a CogVideoX YAML config (errors name the file)."""
    data = read_yaml_mapping(path, "CogVideoX config")
    try:
        return CogVideoXConfig.from_dict(data, base)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
