"""One Qwen-Image pipeline for every mode: t2i, i2i, inpaint (Qwen-Image) and edit (Qwen-Image-Edit), as diffusers'
``QwenImagePipeline``, ``QwenImageImg2ImgPipeline``, ``QwenImageInpaintPipeline`` and ``QwenImageEditPipeline``
compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) travel packed 2x2 into tokens (B, h/2 * w/2, 64); ``img_shapes`` gives the transformer
each image's token grid for its rotary positions. The sigmas run ``linspace(1, 1/steps, steps)`` through the
folder's flow-matching Euler scheduler, shifted by mu from the token count unless a static ``shift`` is given.
Guidance is true classifier-free guidance (a second pass on the negative prompt, " " when none is given) with the
guided prediction rescaled to the conditional one's norm per token, as the release does; scale 1 runs one pass.

t2i, i2i (``strength``), inpaint (a mask) and the loop are :class:`~.image.FlowImagePipeline`'s; Qwen-Image adds

* edit: pure noise; the edit image, resized to the config's ``edit_area`` at its aspect ratio, is read by the VL
  text encoder and its latent tokens follow the noisy ones in every transformer pass (their output is dropped).
  Without a size the output takes the edit image's aspect ratio at the area of the default size. Qwen-Image-Edit-2509
  (``QwenImageEditPlusPipeline``) reads up to 3 pictures (``image`` then ``ref_image``): each is read by the VL model
  at 384x384 pixels' area (``Picture i:`` before the prompt) and, at ``edit_area``, as latent tokens with its own
  token grid in ``img_shapes`` (its own rotary frame), all after the noisy tokens; the output takes the last
  picture's aspect ratio. The edit prompts keep every token (no ``text_len`` cut), as diffusers' edit pipelines.
* control and control_inpaint (Qwen-Image with a Fun control file, :mod:`~videox_fun.models.qwenimage.control`):
  pure noise, as VideoX-Fun's ``QwenImageControlPipeline``; the context (control latents, known-pixels mask, masked
  image's latents, 16 + 1 + 16 channels a latent pixel) is packed 2x2 as the latents (132 a token), and the side
  stream's hints, times ``control_context_scale``, join the blocks' image stream in both guidance passes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..families import Mode, listed_images
from ..families.fun_control import CONTROL_MODES
from ..families.qwenimage import QWENIMAGE_MODES, QWENIMAGE_SAMPLERS, check_pictures, folder_variant
from ..models.qwenimage.control import QwenImageControl
from ..models.qwenimage.text_encoder import QwenVLTextEncoder
from ..models.qwenimage.transformer import QwenImageTransformer
from ..models.qwenimage.vae import QwenImageVAE
from ..models.qwenimage.variants import (
    EDIT_SIZE_MULTIPLE,
    SCHEDULER_CONFIG,
    SIZE_RULES,
    QwenImageConfig,
    QwenImageVariant,
)
from .common import SamplingSettings, pack_latents
from .fun_control import SideStreamControlPipeline
from .guidance import ClassifierFreeGuidance
from .image import PATCH, PackedFlowImagePipeline, Passes, pil_image

logger = logging.getLogger(__name__)


def edit_size(width: int, height: int, area: int) -> tuple[int, int]:
    """(height, width) of ``area`` pixels at the aspect ratio of ``width x height``, each rounded to 32 (diffusers'
    ``calculate_dimensions``)."""
    ratio, step = width / height, EDIT_SIZE_MULTIPLE
    side = math.sqrt(area * ratio)  # the width before rounding
    return round(side / ratio / step) * step, round(side / step) * step


def resized(image: Image.Image, area: int) -> Image.Image:
    """``image`` resized (Lanczos) to ``area`` pixels at its aspect ratio, each side rounded to 32 (:func:`edit_size`),
    as diffusers' edit pipelines resize their images."""
    height, width = edit_size(*image.size, area)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def pad_text(inputs: dict, length: int) -> dict:
    """Text inputs padded with zero tokens to ``length``, with the mask saying which are real (batched CFG)."""
    embeds, mask = inputs["encoder_hidden_states"], inputs["encoder_hidden_states_mask"]  # (1, L, D), (1, L) | None
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    extra = length - embeds.shape[1]
    return {**inputs, "encoder_hidden_states": F.pad(embeds, (0, 0, 0, extra)), "encoder_hidden_states_mask":
            F.pad(mask, (0, extra))}  # fmt: skip


class QwenImagePipeline(SideStreamControlPipeline, PackedFlowImagePipeline):
    """Text-to-image, image-to-image, inpainting (Qwen-Image), editing (Qwen-Image-Edit); control and control
    inpainting with a Fun control side stream beside the transformer (:attr:`control`)."""

    label = "Qwen-Image"
    family = "qwenimage"
    transformer_class = QwenImageTransformer
    vae_class = QwenImageVAE
    config_class = QwenImageConfig
    scheduler_release = SCHEDULER_CONFIG
    modes = QWENIMAGE_MODES
    samplers = QWENIMAGE_SAMPLERS
    sizes = SIZE_RULES
    noise_modes = ("t2i", "edit", *CONTROL_MODES)
    control_class = QwenImageControl
    renorm_dim = -1  # true CFG renormalised per token: over the channels of (B, N, 64)

    def __init__(
        self,
        transformer: QwenImageTransformer,
        vae: QwenImageVAE,
        text_encoder: QwenVLTextEncoder,
        scheduler_config: Mapping[str, Any],
        variant: QwenImageVariant,
        config: QwenImageConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(transformer, vae, text_encoder, scheduler_config, config, device, dtype)
        self.variant = variant

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def folder_components(cls, root: Path, config: QwenImageConfig, dtype: torch.dtype) -> dict[str, Any]:
        """The variant (Qwen-Image or Qwen-Image-Edit, from ``model_index.json``) and Qwen2.5-VL with its tokenizer
        (and, for Edit, the processor that reads the edit image)."""
        variant = folder_variant(root)
        processor = root / config.processor_subpath if variant.edit else None
        text_encoder = QwenVLTextEncoder.from_pretrained(
            root / config.text_encoder_subpath, root / config.tokenizer_subpath, processor, dtype
        )
        return {"text_encoder": text_encoder, "variant": variant}

    # -- the family's parts of the shared sampling -----------------------------------------------
    @property
    def variant_name(self) -> str:
        """Qwen-Image or Qwen-Image-Edit."""
        return self.variant.name

    @property
    def mode_table(self) -> dict[str, Mode]:
        """The family's modes this folder's variant serves (t2i / i2i / inpaint, or edit)."""
        return {name: QWENIMAGE_MODES[name] for name in self.variant.modes}

    def checked_guidance(self, scale: float) -> float:
        """The true CFG scale (the release's ``true_cfg_scale``; 1 turns the negative pass off), as given."""
        return scale

    def default_size(self, mode: str, inputs: Mapping[str, Any]) -> tuple[int, int]:
        """An edit takes its (last) picture's aspect ratio at the default size's area; other modes the default
        size."""
        defaults = self.config.defaults
        if mode != "edit":
            return defaults.height, defaults.width
        return edit_size(*self.edit_pictures(inputs)[-1].size, defaults.height * defaults.width)

    def default_guidance(self, settings: SamplingSettings) -> ClassifierFreeGuidance:
        """Sequential passes, as diffusers runs true CFG (the batched pass pads the texts: within 1.2e-6)."""
        return ClassifierFreeGuidance(scale=settings.guidance_scale, batched=False)

    # -- inputs --------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, images: list[Image.Image] | None = None) -> dict[str, torch.Tensor | None]:
        """The transformer's text inputs: ``encoder_hidden_states`` (1, L, D) and its mask (None: no padding). An
        edit's prompt keeps every token (its pictures' alone may pass ``text_len``), as diffusers' edit pipelines."""
        length = None if self.variant.edit else self.config.text_len
        embeds, mask = self.text_encoder.encode([prompt], self.variant.template, images, length)
        return {"encoder_hidden_states": embeds.to(self.device, self.dtype), "encoder_hidden_states_mask": mask}

    def edit_pictures(self, inputs: Mapping[str, Any]) -> list[Image.Image]:
        """An edit's pictures in order (``image``, then ``ref_image``: one or a list) as RGB images; more than the
        variant reads are refused in one line."""
        sources = listed_images(inputs.get("image"), inputs.get("ref_image"))
        check_pictures(self.variant.name, self.variant.pictures, len(sources))
        return [pil_image(source) for source in sources]

    def edit_conditions(
        self, pictures: list[Image.Image]
    ) -> tuple[list[Image.Image], torch.Tensor, list[tuple[int, int, int]]]:
        """Each picture as the VL model reads it (resized to the variant's ``vision_area``, else ``edit_area``), the
        packed latent tokens of all of them (1, n, 64), each read at ``edit_area``, and each one's token grid
        (1, rows, columns) for ``img_shapes``."""
        vision, tokens, shapes = [], [], []
        for picture in pictures:
            for_vae = resized(picture, self.config.edit_area)
            vision.append(resized(picture, self.variant.vision_area) if self.variant.vision_area else for_vae)
            pixels = torch.from_numpy(np.asarray(for_vae).copy())  # (H, W, 3) uint8
            latents = self.image_latents(pixels, for_vae.height, for_vae.width)  # (1, 16, h, w)
            tokens.append(pack_latents(latents))  # (1, h/2 * w/2, 64)
            shapes.append((1, latents.shape[2] // PATCH, latents.shape[3] // PATCH))
        return vision, torch.cat(tokens, dim=1), shapes

    def guidance_passes(
        self,
        prompt: str,
        settings: SamplingSettings,
        latent_size: tuple[int, int],
        guidance: ClassifierFreeGuidance,
        inputs: Mapping[str, Any],
    ) -> Passes:
        """The prompt's inputs with each image's token grid (``img_shapes``) and, for edit, the edit pictures (read by
        the VL model, and as latent tokens); with the negative pass active the negative prompt's, padded to one
        length when the passes are batched. The scale is the true CFG scale."""
        h, w = latent_size
        shapes: list[tuple[int, int, int]] = [(1, h // PATCH, w // PATCH)]
        vision, condition = None, None
        if settings.mode == "edit":
            vision, condition, grids = self.edit_conditions(self.edit_pictures(inputs))
            shapes.extend(grids)
        cond = {**self.encode_prompt(prompt, vision), "img_shapes": shapes, "condition": condition}
        uncond = cond
        if guidance.active(0, settings.steps, settings.guidance_scale):
            uncond = {**cond, **self.encode_prompt(settings.negative_prompt, vision)}
            if guidance.batched:  # one pass of both: the two texts padded to one length, masked
                length = max(cond["encoder_hidden_states"].shape[1], uncond["encoder_hidden_states"].shape[1])
                cond, uncond = pad_text(cond, length), pad_text(uncond, length)
        cond, uncond = self.with_control(settings, inputs, cond, uncond)
        return cond, uncond, settings.guidance_scale

    # -- sampling ------------------------------------------------------------------------------
    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, N, 64) of packed latents (B, N, 64) at timesteps ``t`` (B,) in [0, 1000]; the edit
        pictures' tokens (B, n, 64), when given, ride along after the noisy ones; a ``control_context`` (1, N, 132 |
        64) steers the blocks through the side stream."""
        condition = inputs.get("condition")
        hidden = latents if condition is None else torch.cat([latents, condition.expand(len(latents), -1, -1)], 1)
        with self.controlled(inputs):
            return self.transformer(
                hidden_states=hidden.to(self.dtype),
                timestep=(t / 1000).to(self.dtype),
                encoder_hidden_states=inputs["encoder_hidden_states"],
                encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"],
                img_shapes=[inputs["img_shapes"]] * len(latents),
                return_dict=False,
            )[0][:, : latents.shape[1]].float()
