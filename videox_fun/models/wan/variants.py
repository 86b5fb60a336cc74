"""Named presets of the released Wan transformers and what each variant's inputs are.

A variant is read off its config (input channels and Fun extras), never off a path name:
this decides which conditioning channels the pipeline builds and which modes it can serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .animate import is_animate_config
from .vace import is_vace_config

_SIZES = {
    "1.3B": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
    "14B": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
    "5B": {"dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30},
}
_COMMON = {"patch_size": [1, 2, 2], "text_len": 512, "freq_dim": 256, "text_dim": 4096, "eps": 1e-6}


def _preset(size: str, model_type: str, in_dim: int, out_dim: int = 16, **extra: Any) -> dict:
    """A released config: the common fields, the size's widths, the input layout and any Fun ``extra`` fields."""
    return {**_COMMON, **_SIZES[size], "model_type": model_type, "in_dim": in_dim, "out_dim": out_dim, **extra}


PRESETS: dict[str, dict] = {
    "Wan2.1-T2V-1.3B": _preset("1.3B", "t2v", 16),
    "Wan2.1-T2V-14B": _preset("14B", "t2v", 16),
    "Wan2.1-I2V-14B-480P": _preset("14B", "i2v", 36),
    "Wan2.1-I2V-14B-720P": _preset("14B", "i2v", 36),
    "Wan2.1-Fun-1.3B-InP": _preset("1.3B", "i2v", 36),
    "Wan2.1-Fun-14B-InP": _preset("14B", "i2v", 36),
    "Wan2.1-Fun-1.3B-Control": _preset("1.3B", "i2v", 48),
    "Wan2.1-Fun-14B-Control": _preset("14B", "i2v", 48),
    "Wan2.1-Fun-V1.1-1.3B-InP": _preset("1.3B", "i2v", 36),
    "Wan2.1-Fun-V1.1-14B-InP": _preset("14B", "i2v", 36),
    "Wan2.1-Fun-V1.1-1.3B-Control": _preset("1.3B", "i2v", 48, add_ref_conv=True),
    "Wan2.1-Fun-V1.1-14B-Control": _preset("14B", "i2v", 48, add_ref_conv=True),
    "Wan2.1-Fun-V1.1-1.3B-Control-Camera": _preset("1.3B", "i2v", 32, add_control_adapter=True),
    "Wan2.1-Fun-V1.1-14B-Control-Camera": _preset("14B", "i2v", 32, add_control_adapter=True),
    "Wan2.2-TI2V-5B": _preset("5B", "ti2v", 48, out_dim=48),
    # A14B: two experts of this architecture each (high_noise_model/, low_noise_model/); the I2V
    # ones condition on the start frame through the InP channels only, with no CLIP branch.
    "Wan2.2-T2V-A14B": _preset("14B", "t2v", 16),
    "Wan2.2-I2V-A14B": _preset("14B", "i2v", 36, image_dim=None),
    # VACE: a T2V model with a context stream (96 channels in) whose blocks hint every 2nd (1.3B) or
    # every 5th (14B) main layer. VACE-Fun A14B: two experts of this architecture each, on Wan2.2 T2V-A14B.
    "Wan2.1-VACE-1.3B": _preset("1.3B", "vace", 16, vace_layers=list(range(0, 30, 2)), vace_in_dim=96),
    "Wan2.1-VACE-14B": _preset("14B", "vace", 16, vace_layers=list(range(0, 40, 5)), vace_in_dim=96),
    "Wan2.2-VACE-Fun-A14B": _preset("14B", "vace", 16, vace_layers=list(range(0, 40, 5)), vace_in_dim=96),
    # Wan2.2-Fun (alibaba-pai): A14B ones are two experts of this architecture each, on Wan2.2 I2V-A14B (no CLIP).
    # InP: latent + 4 mask + masked-video latent channels; Control: control latent in front of those, and
    # ref_conv for a reference image; Control-Camera: InP channels and the camera adapter, whose unshuffle
    # matches the VAE (8 for the Wan2.1 VAE of A14B, 16 for the Wan2.2 VAE of 5B).
    "Wan2.2-Fun-A14B-InP": _preset("14B", "i2v", 36, image_dim=None),
    "Wan2.2-Fun-A14B-Control": _preset("14B", "i2v", 52, image_dim=None, add_ref_conv=True),
    "Wan2.2-Fun-A14B-Control-Camera": _preset(
        "14B", "i2v", 36, image_dim=None, add_control_adapter=True, downscale_factor_control_adapter=8
    ),
    # 5B: TI2V-5B's architecture with the channels of the Wan2.2 VAE's 48-channel latents (100 = 48 + 4 + 48).
    "Wan2.2-Fun-5B-InP": _preset("5B", "ti2v", 100, out_dim=48),
    "Wan2.2-Fun-5B-Control": _preset("5B", "ti2v", 148, out_dim=48, add_ref_conv=True, in_dim_ref_conv=48),
    "Wan2.2-Fun-5B-Control-Camera": _preset(
        "5B", "ti2v", 100, out_dim=48, add_control_adapter=True, downscale_factor_control_adapter=16
    ),
    # Animate: Wan2.1 I2V-14B's stack (CLIP branch, 16 latent + 4 mask + 16 conditioning channels) with the pose
    # embedding, the LIA motion encoder, the face encoder and a face block after every 5th layer
    # (videox_fun.models.wan.animate; its constructor's defaults are the release's widths).
    "Wan2.2-Animate-14B": _preset("14B", "animate", 36, motion_encoder_dim=512, use_img_emb=True),
}
# Wan2.2 A14B: the high-noise expert runs while t >= boundary * 1000, the low-noise one below.
EXPERT_BOUNDARIES = {"t2v": 0.875, "i2v": 0.900}
# What the VACE releases sample with, by base: Wan2.1-VACE as Wan2.1's generate.py and VideoX-Fun's
# wan2.1_vace scripts (UniPC, shift 16), Wan2.2-VACE-Fun-A14B as VideoX-Fun's wan2.2_vace_fun scripts
# (Flow, shift 12); guidance 5 for both.
VACE_DEFAULTS = {
    "Wan2.1": {"sampler": "Flow_Unipc", "shift": 16.0, "guidance_scale": 5.0},
    "Wan2.2": {"sampler": "Flow", "shift": 12.0, "guidance_scale": 5.0},
}
# What Wan2.2-Animate-14B samples with (the released generate.py): DPM++ at shift 5, 20 steps, no guidance, 30 fps.
ANIMATE_RELEASE_DEFAULTS = {"sampler": "Flow_DPM++", "shift": 5.0, "guidance_scale": 1.0, "steps": 20, "fps": 30}

# What the Wan2.2-Fun releases sample with (VideoX-Fun's examples/wan2.2_fun scripts): Flow, shift 5, guidance 6
# (one scale for both A14B experts), 50 steps; A14B at 832 x 480, 81 frames at 16 fps, 5B at TI2V-5B's sizes.
FUN22_DEFAULTS = {"sampler": "Flow", "shift": 5.0, "guidance_scale": 6.0, "steps": 50}
FUN22_A14B_DEFAULTS = {
    **FUN22_DEFAULTS,
    "guidance_scale_2": 6.0,
    "height": 480,
    "width": 832,
    "num_frames": 81,
    "fps": 16,
}


def wan22_fun_defaults(config: Mapping[str, Any], two_experts: bool) -> dict[str, Any]:
    """The Wan2.2-Fun release defaults for a transformer config that can only be a Wan2.2-Fun release, else {}.

    5B: conditioning channels on the 48-channel latents. A14B: two experts with control channels or a camera
    adapter. Fun-A14B-InP has Wan2.2 I2V-A14B's very architecture, so it is not told apart (it keeps I2V-A14B's).
    """
    variant = variant_of(config)
    if variant.vace or not variant.channels:
        return {}
    if config["out_dim"] == 48:
        return dict(FUN22_DEFAULTS)
    if two_experts and ("control" in variant.channel_kinds or variant.camera):
        return dict(FUN22_A14B_DEFAULTS)
    return {}


# Which generation modes each input layout can serve.
MODES = ("t2v", "i2v", "flf2v", "v2v", "inpaint", "control", "camera", "r2v", "vace", "animate", "replace")
# VACE takes every task through its context stream: start / end frames and edits through the mask,
# a control video as the reactive frames, subject images as reference frames, and their mixes (vace).
VACE_MODES = ("t2v", "i2v", "flf2v", "v2v", "inpaint", "control", "r2v", "vace")
# Wan2.2-Animate takes its preprocessing folder (pose, face crops, reference; background and mask to replace) and
# nothing else: the character animated by the pose (animate), or put into the video in place of its person (replace).
ANIMATE_MODES = ("animate", "replace")


@dataclass(frozen=True)
class WanVariant:
    """The conditioning a transformer config expects, in channel order after the noisy latent."""

    name: str
    channels: tuple[tuple[str, int], ...]
    ref_image: bool = False
    camera: bool = False
    # An image conditions by replacing the first latent frame (timestep 0 on its tokens): Wan2.2 TI2V, and the
    # Wan2.2-Fun 5B models on top of their InP channels.
    first_frame: bool = False
    # VACE: every condition goes through the VACE context stream (videox_fun.pipelines.vace).
    vace: bool = False
    # Wan2.2-Animate: InP-shaped channels built from a preprocessing folder (videox_fun.pipelines.animate).
    animate: bool = False

    @property
    def channel_kinds(self) -> frozenset[str]:
        """The kinds of conditioning channels (``mask``, ``masked_video``, ``control``, ``start_image``)."""
        return frozenset(kind for kind, _ in self.channels)

    def assemble_y(self, channels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The conditioning input ``y`` (B, sum of widths, F', h, w) from each kind's (B, width, F', h, w).

        The kinds are concatenated in the config's order, the order the released weights expect.
        """
        missing = [kind for kind, _ in self.channels if kind not in channels]
        if missing:
            raise ValueError(f"the {self.name} variant needs conditioning channels {missing}")
        return torch.cat([channels[kind] for kind, _ in self.channels], dim=1)

    @property
    def modes(self) -> tuple[str, ...]:
        """Generation modes this variant serves (v2v works on any variant: it only changes the start)."""
        kinds = self.channel_kinds
        if self.vace:
            return VACE_MODES
        if self.animate:
            return ANIMATE_MODES
        if self.camera:  # Wan2.1 V1.1 with start-image channels, Wan2.2-Fun with InP ones: the start frame goes there
            return ("camera", "v2v")
        if "mask" in kinds and "control" in kinds:
            return ("control", "inpaint", "i2v", "t2v", "v2v")
        if "mask" in kinds:
            return ("t2v", "i2v", "flf2v", "inpaint", "v2v")
        if "control" in kinds:
            return ("control", "v2v")
        if self.camera:
            return ("camera", "v2v")
        if self.first_frame:
            return ("t2v", "i2v", "v2v")
        return ("t2v", "v2v")


def variant_of(config: Mapping[str, Any]) -> WanVariant:
    """Read the variant off a transformer config (a dict or a diffusers FrozenDict)."""
    z, in_dim = config["out_dim"], config["in_dim"]
    ref, camera = bool(config.get("add_ref_conv")), bool(config.get("add_control_adapter"))
    layouts = {
        z: ("T2V", ()),
        z + 4 + z: ("InP", (("mask", 4), ("masked_video", z))),
        3 * z: ("Control", (("control", z), ("start_image", z))),
        2 * z + 4 + z: ("Control+InP", (("control", z), ("mask", 4), ("masked_video", z))),
    }
    if camera:
        layouts[2 * z] = ("Control-Camera", (("start_image", z),))
    if in_dim not in layouts:
        raise ValueError(f"no known Wan variant takes in_dim={in_dim} with out_dim={z}")
    name, channels = layouts[in_dim]
    if is_animate_config(config):  # InP's channel layout, but its own inputs: the reference, pose and face videos
        return WanVariant("Animate", channels, animate=True)
    if is_vace_config(config):
        if channels:
            raise ValueError(f"a VACE model's main input is the latent alone (in_dim {z}), got in_dim {in_dim}")
        return WanVariant("VACE", (), vace=True)
    if camera:
        name = "Control-Camera"
    if ref:
        name += " V1.1 (reference image)"
    first_frame = holds_first_frame(config, channels)
    if first_frame and not channels:
        name = "TI2V"
    return WanVariant(name, channels, ref_image=ref, camera=camera, first_frame=first_frame)


def holds_first_frame(config: Mapping[str, Any], channels: tuple[tuple[str, int], ...]) -> bool:
    """Whether a known start image is held as the first latent frame (its tokens at timestep 0) while sampling.

    Wan2.2 TI2V-5B does it with no conditioning channels; VideoX-Fun's Wan2.2-Fun pipelines do it too whenever
    the VAE compresses 16x (the Wan2.2 VAE: 48 latent channels), beside the InP channels that also carry the image.
    """
    if not channels:
        return config.get("model_type") == "ti2v"
    return config["out_dim"] == 48 and "mask" in dict(channels)


def variant_for_mode(mode: str) -> str:
    """The kind of released model a user needs for a mode, for error messages."""
    return {
        "t2v": "a T2V or Fun InP model",
        "i2v": "a Fun InP, Wan I2V or Wan2.2 TI2V model",
        "flf2v": "a Fun InP model",
        "inpaint": "a Fun InP model",
        "v2v": "any Wan model",
        "control": "a Fun Control model",
        "camera": "a Fun Control-Camera model",
        "r2v": "a VACE model (Wan2.1-VACE, Wan2.2-VACE-Fun)",
        "vace": "a VACE model (Wan2.1-VACE, Wan2.2-VACE-Fun)",
        "animate": "a Wan2.2-Animate model",
        "replace": "a Wan2.2-Animate model",
    }[mode]


# The Wan2.2-Fun layouts at tiny size (tiny_config's variants): the A14B experts' (a14b_*) and the 5B ones (5b_*,
# 48 latent channels for the Wan2.2 VAE). A14B InP is the ``inp`` variant (its experts have no CLIP either way).
TINY_WAN22_FUN: dict[str, dict[str, Any]] = {
    "a14b_control": {"in_dim": 52, "add_ref_conv": True},
    "a14b_camera": {"in_dim": 36, "add_control_adapter": True},
    "5b_inp": {"in_dim": 100},
    "5b_control": {"in_dim": 148, "add_ref_conv": True, "in_dim_ref_conv": 48},
    "5b_camera": {"in_dim": 100, "add_control_adapter": True},
}


# Animate at tiny size: 32 x 32 face crops (the motion encoder's 512 x 512 ones cost ~0.3 s a crop on one CPU core,
# most of a tiny run) through 4-channel convolutions, small motion and face widths, a face block every 2nd layer.
TINY_ANIMATE: dict[str, Any] = {
    "num_layers": 4,
    "face_adapter_interval": 2,
    "motion_encoder_size": 32,
    "motion_encoder_channels": {str(2**i): 4 for i in range(2, 6)},
    "motion_style_dim": 16,
    "motion_dim": 4,
    "motion_encoder_dim": 16,
    "face_encoder_hidden_dim": 8,
    "face_encoder_num_heads": 2,
}

# The released 512 x 512 crops at the tiny widths: what diffusers' single-file reader of the release expects (its 7
# downsampling blocks), for the parity tests (``tiny_config("animate", **TINY_RELEASED_FACE_CROPS)``).
TINY_RELEASED_FACE_CROPS: dict[str, Any] = {
    "motion_encoder_size": 512,
    "motion_encoder_channels": {str(2**i): 4 for i in range(2, 10)},
}


def tiny_config(variant: str = "t2v", **overrides: Any) -> dict:
    """A tiny config of the real architecture for tests and the offline demo (2 layers, head dim 12; VACE 4
    layers, two of them hinted; Animate 4 layers, a face block after every 2nd). Variants: ``t2v``, ``i2v``,
    ``inp``, ``control``, ``control_ref``, ``camera``, ``ti2v``, ``vace``, ``animate`` and the Wan2.2-Fun layouts
    of :data:`TINY_WAN22_FUN`."""
    in_dims = {"t2v": 16, "i2v": 36, "inp": 36, "control": 48, "control_ref": 48, "camera": 32, "ti2v": 48, "vace": 16}
    in_dims["animate"] = 36
    in_dims.update({name: layout["in_dim"] for name, layout in TINY_WAN22_FUN.items()})
    wan22_vae = variant == "ti2v" or variant.startswith("5b_")
    config = {
        "model_type": "ti2v" if wan22_vae else variant if variant in ("i2v", "vace", "animate") else "t2v",
        "patch_size": [1, 2, 2],
        "text_len": 32,
        "in_dim": in_dims[variant],
        "dim": 24,
        "ffn_dim": 48,
        "freq_dim": 16,
        "text_dim": 32,
        "out_dim": 48 if wan22_vae else 16,  # Wan2.2 TI2V and Fun 5B: the Wan2.2 VAE's 48 latent channels
        "num_heads": 2,
        "num_layers": 2,
        "add_ref_conv": variant == "control_ref",
        "add_control_adapter": variant == "camera",
    }
    config.update({k: v for k, v in TINY_WAN22_FUN.get(variant, {}).items() if k != "in_dim"})
    if variant == "vace":  # a hint after every 2nd layer, as Wan2.1-VACE-1.3B
        config.update(num_layers=4, vace_layers=[0, 2], vace_in_dim=96)
    if variant == "animate":  # its constructor has no Fun extras
        del config["add_ref_conv"], config["add_control_adapter"]
        config.update(TINY_ANIMATE)
    config.update(overrides)
    return config
