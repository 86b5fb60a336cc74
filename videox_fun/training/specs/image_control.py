"""Control training of the image families' Fun control models (Z-Image, FLUX.2, Qwen-Image): ``--train_mode control``
of their specs (:mod:`.image`), as VideoX-Fun's ``scripts/{z_image_fun,flux2_fun,qwenimage_fun}/train_control.py``
train them, through the generic trainer.

**What trains.** The control model alone (VideoX-Fun freezes the base and passes ``--trainable_modules control``).
:class:`ControlTrainee` holds it as its one submodule beside the family's pipeline, whose transformer stays frozen
and outside its parameters: the trainer's optimizer, checkpoints, LoRA and export see the control weights only. Its
forward is the controlled velocity through the pipeline's own ``_denoise``, the call sampling makes.

**Where it starts.** ``--transformer_path``: a released control file (VideoX-Fun's scripts pass one so), read by the
pipeline's own strict loader (another base's file is one line); else the folder config's ``control_path``; else a new
stream in the layout of the family's release over this base (the spec's ``new_control``), whose context reads the
mask and the masked image. The new copies start as the base's blocks at their places (ControlNet's initialisation;
VideoX-Fun's new blocks start random, and its runs start from a released file), ``before_proj`` / ``after_proj`` at
zero, as VideoX-Fun: the untrained stream steers nothing.

**The control context of a sample**, drawn from the sample's generator (so a resumed run draws what the uninterrupted
one drew): the control image's latents, zeroed for :data:`CONTROL_DROP` of the samples (VideoX-Fun's 10 %); for a
file whose context reads a mask, a random generate mask of VideoX-Fun's one-image mix (:data:`IMAGE_MASK_KINDS`), the
known-pixels mask on the latent grid as the family's pipeline lays it out (the spec's ``keep_grid``) and the latents
of the image with the generated pixels zeroed, themselves zeroed with probability :data:`T2I_ZEROED` when the whole
image is generated (VideoX-Fun's ``t2v_flag``: then the context is the ``control`` mode's). The hints join at scale
:data:`TRAIN_SCALE` (VideoX-Fun trains at 1; sampling uses the folder config's ``control_context_scale``).

**Outputs.** ``OUTPUT/transformer/``: ``config.json`` naming the control class and one
``diffusion_pytorch_model.safetensors`` in the release's keys, which ``videox-fun generate --control-path`` reads (and
for Z-Image diffusers' ``ZImageControlNetModel.from_pretrained``). ``--use_lora`` adapts the attention and MLP layers
of a trained control file's stream; the run writes the control model with the adapters merged, in the same place.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ..data.masks import random_generate_mask
from . import uniform

logger = logging.getLogger(__name__)

CONTROL_MODE = "control"
CONTROL_DROP = 0.1  # share of samples whose control latents are zeroed (the stream learns "no control" too)
T2I_ZEROED = 0.9  # an all-generate mask: the masked image's latents are zeroed with this probability
# VideoX-Fun's get_random_mask for one image: everything 0.7, a box 0.2, an ellipse 0.05 and a circle 0.05.
IMAGE_MASK_KINDS = {"t2v": 0.7, "box": 0.2, "ellipse": 0.1}
TRAIN_SCALE = 1.0  # control_context_scale while training (VideoX-Fun's forward default)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
PREFIX = "control."  # the trainee's one submodule: every trained key starts with it
NO_NEW_LORA = ("--use_lora adapts a trained control stream: give its file (--transformer_path, or control_path in the "
               "folder's videox_fun.yaml); a new stream trains in full (leave out --use_lora)")  # fmt: skip


class ControlTrainee(nn.Module):
    """The control model being trained, beside its frozen base: the control model is the one submodule (what the
    trainer optimises, checkpoints and exports); ``forward`` is the controlled transformer's velocity.

    The base lives in the pipeline (a plain attribute, not a submodule), so its weights are neither trained nor
    saved; ``.to()`` moves and casts it with the control model all the same (:meth:`_apply`).
    """

    def __init__(self, pipe: Any, control: nn.Module) -> None:
        super().__init__()
        supports = getattr(control, "_supports_gradient_checkpointing", False)
        if supports and not hasattr(control, "gradient_checkpointing"):
            # diffusers' ZImageControlNetModel reads this flag in forward when gradients are on, and never sets it.
            control.gradient_checkpointing = False
        self.control = control
        pipe.control = control  # the pipeline's denoiser reads its control model from here
        object.__setattr__(self, "pipe", pipe)

    @property
    def base(self) -> nn.Module:
        """The frozen transformer the hints steer."""
        return self.pipe.transformer

    def forward(self, tokens: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, Any]) -> torch.Tensor:
        """The flow velocity of latent tokens at timesteps (B,) in [0, 1000] with the pass inputs ``conditions``
        (``control_context`` and ``control_scale`` among them), laid out as the pipeline lays them out."""
        return self.pipe._denoise(tokens, timesteps, conditions)

    def _apply(self, fn: Any, recurse: bool = True) -> ControlTrainee:
        # accelerate's prepare and the trainer's casts call .to() on the trained module: the base goes along.
        self.base._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the base's blocks (and the control model's, where its class supports it) in backward.

        A side stream's first main block runs unchecked: its forward pre-hook runs the whole side stream
        (:func:`~videox_fun.models.fun_control.side_stream_attached`), which a recomputation would run again.
        """
        blocks_name = getattr(self.control, "main_blocks_name", None)
        unchecked = getattr(self.base, blocks_name)[0] if blocks_name else None

        def checkpointed(module: nn.Module, *args: Any) -> Any:
            if module is unchecked:
                return module(*args)
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

        self.base.enable_gradient_checkpointing(checkpointed)
        if getattr(self.control, "_supports_gradient_checkpointing", False):
            self.control.enable_gradient_checkpointing()


# ----------------------------------------------------------------------------------------
# The start: a file, or a new stream
# ----------------------------------------------------------------------------------------
def start_control(pipe: Any, transformer_path: str | None, use_lora: bool, new_control: Any) -> nn.Module:
    """The control model training starts from: ``transformer_path``'s file, else the folder config's (already on
    the pipeline), else ``new_control(transformer)``; fp32, as the pipeline loaded it."""
    if transformer_path:
        return pipe.use_control(Path(transformer_path))
    if pipe.control is not None:
        return pipe.control
    if use_lora:
        raise ValueError(NO_NEW_LORA)
    return new_control(pipe.transformer)


def spaced_count(main_blocks: int, stride: int) -> int:
    """Copies of a new stream over ``main_blocks`` blocks: one every ``stride``-th (the release's spacing), fewer
    when that count does not divide the blocks evenly (the places are spaced evenly from block 0)."""
    most = math.ceil(main_blocks / stride)
    return max(d for d in range(1, most + 1) if main_blocks % d == 0)


def copy_blocks(copies: Sequence[nn.Module], blocks: Sequence[nn.Module], places: Sequence[int]) -> None:
    """Each copy's weights from the main block at its place; only the copies' projections are left as they are."""
    for copied, place in zip(copies, places, strict=True):
        missing, unexpected = copied.load_state_dict(blocks[place].state_dict(), strict=False)
        unlike = [k for k in missing if not k.startswith(("before_proj.", "after_proj."))] + list(unexpected)
        if unlike:
            raise ValueError(f"a control copy differs from main block {place} beyond its projections: {unlike[:6]}")


# ----------------------------------------------------------------------------------------
# The control context of a batch
# ----------------------------------------------------------------------------------------
def control_grid(
    spec: Any,
    models: Any,
    control_pixels: torch.Tensor | None,
    pixels: torch.Tensor | None,
    generate: torch.Tensor | None,
    device: torch.device,
    control_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The control context's grid (B, C [+ m + C], h, w) before the family lays it out: the control image's latents
    of ``control_pixels`` (B, 3, H, W) in [-1, 1] (or ``control_latents`` (B, C, h, w), already encoded: a latent
    cache's); for a context that reads a mask, the known-pixels mask of ``generate`` (B, 1, H, W), 1 = generate, and
    the latents of ``pixels`` (B, 3, H, W) with those pixels zeroed.

    What the family's pipeline builds for control_inpaint from the same images and mask (tested equal)."""
    control = spec.encode(models, control_pixels, device) if control_latents is None else control_latents
    if not spec.pipe.control_inpaints:
        return control
    generate = generate.to(device)
    masked = spec.encode(models, pixels.to(device) * (1 - generate), device)  # (B, C, h, w)
    keep = spec.keep_grid(generate, tuple(control.shape[-2:]))  # (B, m, h, w)
    return torch.cat([control, keep, masked], dim=1)


def draw_context(
    spec: Any,
    models: Any,
    control_pixels: torch.Tensor | None,
    pixels: torch.Tensor | None,
    generators: Sequence[torch.Generator],
    device: torch.device,
    control_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The grid of :func:`control_grid` with VideoX-Fun's random choices per sample (module docstring), from its
    generator in this order: the control drop, the mask, the masked image's drop (all-generate masks only).

    ``control_latents`` (B, C, h, w): the control images already encoded (a latent cache's), else ``control_pixels``
    are; ``pixels`` are needed only by a context that reads a mask."""
    keep_control = torch.tensor([uniform(g) >= CONTROL_DROP for g in generators], dtype=torch.float32)  # (B,)
    generate, keep_masked = None, torch.ones(len(generators))
    if spec.pipe.control_inpaints:
        _, _, height, width = pixels.shape
        masks = [random_generate_mask(1, height, width, g, IMAGE_MASK_KINDS)[:, 0] for g in generators]  # (1, H, W)
        keep_masked = torch.tensor([0.0 if mask.all() and uniform(g) < T2I_ZEROED else 1.0
                                    for mask, g in zip(masks, generators, strict=True)])  # fmt: skip
        generate = torch.stack(masks)  # (B, 1, H, W)
    control = spec.encode(models, control_pixels, device) if control_latents is None else control_latents
    grid = control_grid(spec, models, None, pixels, generate, device, control_latents=control)
    channels = control.shape[1]  # of the control image's (and the masked image's) part of the grid: latent channels
    scales = torch.ones(grid.shape[:2], device=device)  # (B, channels): which parts of each sample stay
    scales[:, :channels] = keep_control[:, None].to(device)
    if generate is not None:
        scales[:, grid.shape[1] - channels :] = keep_masked[:, None].to(device)
    return grid * scales[:, :, None, None]


def check_control_batch(batch: Mapping[str, Any], label: str) -> torch.Tensor:
    """The batch's control images (B, 3, H, W); a batch without them is one line naming the metadata field."""
    control = batch.get("control_pixel_values")
    if control is None:
        raise ValueError(f'--train_mode control trains {label} on control images: give each metadata entry its '
                         '"control_file_path"')  # fmt: skip
    return control[:, :, 0]


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------
def control_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainee's state as the control model's own keys (the release's)."""
    from ...models.loading import strip_prefix

    return strip_prefix(state, [PREFIX])


def merged_lora_state(state: Mapping[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A state with peft adapters (``<m>.base_layer.weight``, ``<m>.lora_A.default.weight``...) as plain weights:
    each adapted layer's ``W + alpha / rank * B @ A``, in ``W``'s dtype."""
    merged = {key.replace(".base_layer.", "."): value for key, value in state.items() if ".lora_" not in key}
    for key, down in state.items():
        if ".lora_A." not in key:
            continue
        module, tail = key.split(".lora_A.")
        up = state[f"{module}.lora_B.{tail}"]
        weight = merged[f"{module}.weight"]
        merged[f"{module}.weight"] = (weight.float() + up.float() @ down.float() * (alpha / rank)).to(weight.dtype)
    return merged


def save_control(control: nn.Module, state: Mapping[str, torch.Tensor], folder: Path) -> Path:
    """Write the control model's ``state`` (the release's keys) as ``folder/config.json`` (its class and config) and
    one weights file, atomically; every key and shape is checked against a clean model of the config first.
    Returns the weights file (what ``--control-path`` takes)."""
    from ...io.files import atomic_dir, save_safetensors
    from ...models.loading import check_state_dict, public_config

    model_class = type(control)
    config = {"_class_name": model_class.released_class_name, **public_config(control.config)}
    with torch.device("meta"):
        clean = model_class.from_model_config(config)
    check_state_dict(clean, state, "trained control weights")
    with atomic_dir(folder) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        save_safetensors({k: state[k].detach().cpu().contiguous() for k in clean.state_dict()}, staging / WEIGHTS_FILE)
    return folder / WEIGHTS_FILE
