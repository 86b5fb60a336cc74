"""One FLUX.2 pipeline for every mode: t2i as diffusers' ``Flux2Pipeline`` computes it (same latents for the same
weights and noise), i2i and inpaint by the shared formulas of :class:`~.image.FlowImagePipeline`.

The VAE's 32-channel latents are patchified 2x2 and normalised with its BatchNorm statistics, so the latent grid
is (B, 128, H/16, W/16) and every latent pixel is one token: (B, h * w, 128), with (t, h, w, l) position ids
(0, row, column, 0); the text tokens' ids are (0, 0, 0, index). The sigmas run ``linspace(1, 1/steps, steps)``
through the folder's flow-matching Euler scheduler, shifted by BFL's empirical mu (a function of the token count
and the number of steps) unless a static ``shift`` is given. FLUX.2-dev embeds the guidance scale: one pass a step,
no classifier-free guidance and no negative prompt.

``edit`` (reference editing, as diffusers' ``Flux2Pipeline(image=[...])``) starts from noise too: each reference
picture (``image``, then ``ref_image``: at most :data:`~videox_fun.families.flux2.MAX_REFERENCES`) is shrunk to 1024 x
1024 pixels' area when larger, centre-cropped to a multiple of 16 per side, encoded by the VAE as the latents are, and
its tokens follow the noisy ones in every pass (their output is dropped), with ids (10 + 10 i, row, column, 0): the
i-th picture (from 0) sits at its own time offset of the rotary positions. The prompt alone goes to Mistral. Without a
size the output takes the first picture's (cropped) size.

With a Fun control file (:mod:`~videox_fun.models.flux2.control`) two more modes start from noise, as VideoX-Fun's
``Flux2ControlPipeline`` does (:mod:`~.fun_control`): ``control`` and ``control_inpaint``. The control context
per token is the control image's patchified normalised latents (128), the known-pixels mask taken at the VAE's
resolution and patchified 2x2 (4) and the masked image's latents (128); the side stream's hints, times
``control_context_scale``, join the double blocks' image stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from PIL import Image

from ..families import listed_images
from ..families.flux2 import FLUX2_MODES, FLUX2_SAMPLERS, check_reference_size, check_references
from ..families.fun_control import CONTROL_MODES
from ..models.flux2.control import Flux2Control
from ..models.flux2.text_encoder import Flux2TextEncoder
from ..models.flux2.transformer import Flux2Transformer
from ..models.flux2.vae import Flux2VAE, patchify
from ..models.flux2.variants import SCHEDULER_CONFIG, SIZE_RULES, VARIANT, Flux2Config
from .common import ImageLike, SamplingSettings, generate_mask
from .fun_control import SideStreamControlPipeline
from .guidance import ClassifierFreeGuidance
from .image import FlowImagePipeline, Passes, pil_image

logger = logging.getLogger(__name__)
# A reference picture as diffusers' Flux2Pipeline reads it: shrunk to this many pixels when larger; picture i at time
# 10 + 10 i of the rotary ids.
REFERENCE_AREA = 1024 * 1024
REFERENCE_TIME = 10


def image_ids(height: int, width: int, device: torch.device, time: int = 0) -> torch.Tensor:
    """(h * w, 4) position ids of the latent tokens, row-major: (time, row, column, 0)."""
    grid = (torch.tensor([time]), torch.arange(height), torch.arange(width), torch.arange(1))
    return torch.cartesian_prod(*grid).to(device)


def text_ids(length: int, device: torch.device) -> torch.Tensor:
    """(L, 4) position ids of the text tokens: (0, 0, 0, index)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length)).to(device)


def reference_picture(source: ImageLike, multiple: int) -> Image.Image:
    """A reference picture as FLUX.2 reads it: refused in one line when a side is under 64 pixels or the aspect ratio
    past 8:1, shrunk (Lanczos) to :data:`REFERENCE_AREA` pixels when larger, then centre-cropped to sides that are
    multiples of ``multiple`` (diffusers' ``Flux2Pipeline``)."""
    image = pil_image(source)
    width, height = image.size
    check_reference_size(width, height)
    if width * height > REFERENCE_AREA:
        scale = math.sqrt(REFERENCE_AREA / (width * height))
        image = image.resize((int(width * scale), int(height * scale)), Image.Resampling.LANCZOS)
        width, height = image.size
    cropped_width, cropped_height = width // multiple * multiple, height // multiple * multiple
    left, top = (width - cropped_width) // 2, (height - cropped_height) // 2
    return image.crop((left, top, left + cropped_width, top + cropped_height))


class Flux2Pipeline(SideStreamControlPipeline, FlowImagePipeline):
    """Text-to-image, image-to-image and inpainting with a FLUX.2 transformer, its VAE and Mistral3; control and
    control inpainting with a Fun control side stream beside the transformer (:attr:`control`)."""

    label = "FLUX.2"
    family = "flux2"
    transformer_class = Flux2Transformer
    vae_class = Flux2VAE
    config_class = Flux2Config
    scheduler_release = SCHEDULER_CONFIG
    modes = FLUX2_MODES
    samplers = FLUX2_SAMPLERS
    sizes = SIZE_RULES  # the base's components: text_encoder, transformer, vae
    noise_modes = ("t2i", "edit", *CONTROL_MODES)
    control_class = Flux2Control
    mask_channels = 4  # the known-pixels mask at the VAE's resolution, patchified 2x2 as the latents

    @classmethod
    def folder_components(cls, root: Path, config: Flux2Config, dtype: torch.dtype) -> dict[str, Any]:
        """Mistral3 with its tokenizer."""
        return {
            "text_encoder": Flux2TextEncoder.from_pretrained(
                root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype
            )
        }

    # -- the family's parts of the shared sampling -----------------------------------------------
    @property
    def variant_name(self) -> str:
        """FLUX.2-dev."""
        return VARIANT

    def checked_guidance(self, scale: float) -> float:
        """The embedded guidance scale (no second pass); negative values are refused."""
        if scale < 0:
            raise ValueError(f"guidance scale must be at least 0, got {scale}")
        return scale

    def token_count(self, height: int, width: int) -> int:
        """One token per latent pixel of the patchified (B, 128, h, w) grid."""
        return height * width

    def shift_mu(self, tokens: int, steps: int) -> float:
        """BFL's empirical mu of ``tokens`` image tokens over ``steps`` steps (diffusers' ``compute_empirical_mu``)."""
        return compute_empirical_mu(tokens, steps)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h * w, C) tokens, row-major."""
        return latents.flatten(2).transpose(1, 2)

    def unpack(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, h * w, C) tokens -> (B, C, h, w)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def default_size(self, mode: str, inputs: Mapping[str, Any]) -> tuple[int, int]:
        """An edit takes its first reference picture's (cropped) size; other modes the config's default size."""
        if mode != "edit":
            return super().default_size(mode, inputs)
        first = self.reference_pictures(inputs)[0]
        return first.height, first.width

    def reference_pictures(self, inputs: Mapping[str, Any]) -> list[Image.Image]:
        """An edit's reference pictures in order (``image``, then ``ref_image``: one or a list), as the VAE reads
        them (:func:`reference_picture`); more than the family's limit are refused in one line."""
        sources = listed_images(inputs.get("image"), inputs.get("ref_image"))
        check_references(len(sources))
        return [reference_picture(source, self.vae.spatial_compression) for source in sources]

    def reference_tokens(self, pictures: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent tokens of the reference pictures one after another (1, n, 128) and their ids (n, 4): picture i
        (from 0) at time 10 + 10 i."""
        tokens, ids = [], []
        for index, picture in enumerate(pictures):
            pixels = torch.from_numpy(np.asarray(picture).copy())  # (H, W, 3) uint8
            latents = self.image_latents(pixels, picture.height, picture.width)  # (1, 128, h, w)
            tokens.append(self.pack(latents))  # (1, h * w, 128)
            time = REFERENCE_TIME + REFERENCE_TIME * index
            ids.append(image_ids(*latents.shape[2:], self.device, time))
        return torch.cat(tokens, dim=1), torch.cat(ids)

    def guidance_passes(
        self,
        prompt: str,
        settings: SamplingSettings,
        latent_size: tuple[int, int],
        guidance: ClassifierFreeGuidance | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Passes:
        """One conditional pass a step (scale 1): the prompt's Mistral features, the token ids, the embedded
        guidance and, for edit, the reference pictures' tokens with their ids after the noisy ones'. A negative
        prompt does not apply (no classifier-free guidance): one given is logged."""
        if settings.negative_prompt:
            logger.info("negative_prompt does not apply to FLUX.2-dev (embedded guidance, no CFG); ignored")
        embeds = self.text_encoder.encode([prompt], self.config.text_len, self.config.text_layers)  # (1, L, 3 D)
        cond = {
            "encoder_hidden_states": embeds.to(self.device, self.dtype),
            "txt_ids": text_ids(embeds.shape[1], self.device),
            "img_ids": image_ids(*latent_size, self.device),
            "guidance": torch.full((1,), settings.guidance_scale, device=self.device, dtype=torch.float32),
        }
        if settings.mode == "edit":
            reference, ids = self.reference_tokens(self.reference_pictures(inputs or {}))
            cond.update(reference=reference, img_ids=torch.cat([cond["img_ids"], ids]))
        (cond,) = self.with_control(settings, inputs or {}, cond)
        return cond, cond, 1.0

    def keep_mask(self, mask: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """The known-pixels mask (1, 4, h, w): taken at the VAE's resolution (2h, 2w), then patchified 2x2 as the
        latents are (VideoX-Fun's ``Flux2ControlPipeline``)."""
        h, w = self.latent_size(settings)
        generate = generate_mask(mask, settings.height, settings.width, (2 * h, 2 * w))  # (1, 1, 2h, 2w)
        return patchify(1 - generate).to(self.device)

    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, N, 128) of latent tokens (B, N, 128) at timesteps ``t`` (B,) in [0, 1000]; the reference
        pictures' tokens (1, n, 128), when given, ride along after the noisy ones; with a ``control_context`` (1, N,
        260 | 128) the side stream's hints steer the double blocks."""
        reference = inputs.get("reference")
        hidden = latents if reference is None else torch.cat([latents, reference.expand(len(latents), -1, -1)], 1)
        with self.controlled(inputs):
            return self.transformer(
                hidden_states=hidden.to(self.dtype),
                timestep=(t / 1000).to(self.dtype),
                guidance=inputs["guidance"],
                encoder_hidden_states=inputs["encoder_hidden_states"],
                txt_ids=inputs["txt_ids"],
                img_ids=inputs["img_ids"],
                return_dict=False,
            )[0][:, : latents.shape[1]].float()
