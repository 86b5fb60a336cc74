"""What every family's pipeline shares: the output record, input media as tensors, seeded noise,
the settings a call resolves to, and the correction of sizes a model cannot take."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from ..config import parse_timesteps
from ..io.video import frames_to_tensor, read_image, read_video

logger = logging.getLogger(__name__)

ImageLike = str | Path | torch.Tensor | np.ndarray
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationOutput:
    """Frames uint8 (F, H, W, 3), the final latents and the settings used (for the sidecar)."""

    frames: torch.Tensor
    latents: torch.Tensor
    settings: dict


@dataclass(frozen=True)
class SamplingSettings:
    """What one call samples with, after the model config's defaults and the size corrections."""

    mode: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float
    shift: float
    sampler: str
    # Flow_Distill: the training timesteps of the student it samples (None: the uniform grid)
    distill_timesteps: tuple[int, ...] | None = None

    def record(self, seed: int) -> dict:
        """The settings as the sidecar JSON records them."""
        distill = {"distill_timesteps": list(self.distill_timesteps)} if self.distill_timesteps else {}
        return {
            "mode": self.mode,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "seed": seed,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            **distill,
        }


DISTILL_SAMPLER = "Flow_Distill"


def student_timesteps(
    given: Sequence[int] | str | None, default: Sequence[int] | None, sampler: str, steps: int
) -> tuple[int, ...] | None:
    """The training timesteps of the DMD student a call samples (``distill_timesteps``: the given ones, else the
    folder's), or None for the uniform grid: at another step count than the student's (said in the log), or
    under another sampler (given ones are then an error: only ``Flow_Distill`` reads them)."""
    if sampler != DISTILL_SAMPLER:
        if given is not None:
            raise ValueError(f"distill_timesteps are what --sampler {DISTILL_SAMPLER} samples, not {sampler}")
        return None
    chosen = given if given is not None else default
    if chosen is None:
        return None
    timesteps = parse_timesteps(chosen)
    if len(timesteps) != steps:
        logger.warning("the student was trained on %d timesteps %s; %d steps sample the uniform grid instead",
                       len(timesteps), list(timesteps), steps)  # fmt: skip
        return None
    return timesteps


def recognised_as(folder: str | Path | Any, family: str, label: str) -> Any:
    """A model folder as the family named ``family`` recognises it (a ``Recognised`` given passes through); another
    family's folder is a one-line error naming ``label``."""
    from ..families import Recognised, recognise

    if isinstance(folder, Recognised):
        return folder
    found = recognise(folder)
    if found.family.name != family:
        raise ValueError(f"{found.folder} is a {found.family.name} model folder, not a {label} one")
    return found


def folder_scheduler_config(root: Path, subpath: str, release: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers-layout folder's ``<subpath>/scheduler_config.json``, else the ``release``'s config."""
    from ..config import read_json_mapping

    path = root / subpath / "scheduler_config.json"
    return read_json_mapping(path, "scheduler config") if path.is_file() else dict(release)


def corrected(name: str, value: int, fixed: int, why: str) -> int:
    """Return ``fixed`` and tell the user when it differs from what they asked."""
    if fixed != value:
        logger.warning("%s %d is not %s; using %d", name, value, why, fixed)
    return fixed


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``seed``: the same video on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device)


def video_tensor(
    source: ImageLike, num_frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A video (path or uint8 (F, H, W, 3)) -> (1, 3, F, H, W) in [-1, 1], cut or padded to F frames."""
    frames = read_video(source, size=(height, width)) if isinstance(source, (str, Path)) else torch.as_tensor(source)
    if frames.shape[0] < num_frames:
        logger.warning("the video has %d frames, %d are needed: repeating the last", frames.shape[0], num_frames)
        frames = torch.cat([frames, frames[-1:].expand(num_frames - frames.shape[0], -1, -1, -1)])
    video = frames_to_tensor(frames[:num_frames])[None]  # (1, 3, F, H', W')
    if video.shape[-2:] != (height, width):
        video = F.interpolate(video[0].transpose(0, 1), size=(height, width), mode="bicubic").transpose(0, 1)[None]
    return video.clamp(-1, 1).to(device, dtype)


def image_tensor(source: ImageLike, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An image (path or uint8 (H, W, 3)) -> (1, 3, H, W) in [-1, 1]."""
    pixels = read_image(source, size=(height, width)) if isinstance(source, (str, Path)) else torch.as_tensor(source)
    return video_tensor(pixels[None], 1, height, width, device, dtype)[:, :, 0]


# -- flow-matching image pipelines (FLUX.1, Z-Image): diffusers' shared recipe of schedule, strength and mask ------


def calculate_shift(seq_len: int, config: Mapping[str, Any]) -> float:
    """mu of the resolution-dependent shift: linear in the token count from (base_image_seq_len, base_shift) to
    (max_image_seq_len, max_shift), as diffusers' ``calculate_shift`` with the scheduler config's values."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * slope + base_shift - slope * base_len


def strength_start(num_steps: int, strength: float) -> int:
    """The first step an image-to-image run of ``strength`` takes (diffusers' ``get_timesteps``)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"denoise strength must be in (0, 1], got {strength}")
    start = int(max(num_steps - min(num_steps * strength, num_steps), 0))
    if start >= num_steps:
        raise ValueError(f"strength {strength} x {num_steps} steps leaves no step to run: raise either")
    return start


def flow_scheduler(config: Mapping[str, Any], shift: float | None) -> FlowMatchEulerDiscreteScheduler:
    """A folder's flow-matching Euler scheduler; a static ``shift`` replaces the config's (dynamic or static) one."""
    config = dict(config)
    if shift is not None:
        config.update(use_dynamic_shifting=False, shift=shift)
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def flow_timesteps(
    scheduler: FlowMatchEulerDiscreteScheduler,
    steps: int,
    seq_len: int,
    start: int,
    device: torch.device,
    sigmas: Sequence[float] | None = None,
    mu: float | None = None,
) -> tuple[torch.Tensor, float]:
    """The timesteps from step ``start`` on of ``sigmas`` (default ``linspace(1, 1/steps, steps)`` in float64, as
    diffusers' FLUX pipelines), and mu (the shift used when the scheduler shifts dynamically: the given one, else
    that of ``seq_len`` image tokens), as diffusers' image pipelines set them."""
    mu = calculate_shift(seq_len, scheduler.config) if mu is None else mu
    sigmas = np.linspace(1.0, 1 / steps, steps) if sigmas is None else sigmas
    scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)
    scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], mu


def generate_mask(source: ImageLike, height: int, width: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) mask of the latents to generate: the image mask binarised at mid-grey (white = generate) and
    resized to the latent grid by nearest pixel, as diffusers' inpaint pipelines do."""
    mask = image_tensor(source, height, width, torch.device("cpu"), torch.float32)  # (1, 3, H, W)
    mask = (mask.mean(dim=1, keepdim=True) >= 0).float()  # [-1, 1] -> {0, 1}
    return F.interpolate(mask, size=latent_size)  # (1, 1, h, w)


def keep_known(
    latents: torch.Tensor,
    known: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scheduler: FlowMatchEulerDiscreteScheduler,
    timesteps: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """Inpainting after step ``step``: outside the mask the latents are put back to the image's, noised to the next
    step's level (clean after the last). ``known`` = (clean latents, noise, generate mask), shaped as ``latents``."""
    clean, noise, generate = known
    if step < len(timesteps) - 1:  # the image at the next step's noise level
        clean = scheduler.scale_noise(clean, timesteps[step + 1 : step + 2], noise)
    return (1 - generate) * clean + generate * latents


def pack_latents(latents: torch.Tensor, pack: int = 2) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, C * 4): each 2x2 patch one token, channels then the patch's pixels (FLUX.1's
    and Qwen-Image's token layout)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // pack, pack, w // pack, pack).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // pack) * (w // pack), c * pack * pack)


def unpack_latents(tokens: torch.Tensor, height: int, width: int, pack: int = 2) -> torch.Tensor:
    """(B, h/2 * w/2, C * 4) -> (B, C, h, w) for latents of ``height x width``: :func:`pack_latents` undone."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // pack, width // pack, channels // pack**2, pack, pack)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, channels // pack**2, height, width)
