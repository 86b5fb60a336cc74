"""One FLUX.1 pipeline for every mode: t2i, i2i and inpaint, as diffusers' ``FluxPipeline``,
``FluxImg2ImgPipeline`` and ``FluxInpaintPipeline`` compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) travel packed 2x2 into tokens (B, h/2 * w/2, 64) with position ids (row, column)
per token and zeros for the text tokens. The sigmas run ``linspace(1, 1/steps, steps)`` through the folder's
flow-matching Euler scheduler, shifted by mu from the token count (resolution-dependent shift) unless a static
``shift`` is given. dev embeds the guidance scale; schnell has none. No classifier-free guidance: one pass a step.
The modes (t2i, i2i with ``strength``, inpaint with a mask) and the loop are :class:`~.image.FlowImagePipeline`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import read_json_mapping
from ..families.flux import FLUX_MODES, FLUX_SAMPLERS
from ..models.flux.text_encoder import ClipTextEncoder, T5TextEncoder
from ..models.flux.tiny import SCHEDULER_CONFIGS
from ..models.flux.transformer import FluxTransformer
from ..models.flux.vae import FluxVAE
from ..models.flux.variants import PACK, SIZE_RULES, FluxConfig, variant_of
from .common import SamplingSettings
from .image import PackedFlowImagePipeline, Passes

logger = logging.getLogger(__name__)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // PACK, width // PACK, 3)
    ids[..., 1] = torch.arange(height // PACK)[:, None]
    ids[..., 2] = torch.arange(width // PACK)[None, :]
    return ids.reshape(-1, 3).to(device)


class FluxPipeline(PackedFlowImagePipeline):
    """Text-to-image, image-to-image and inpainting with a FLUX.1 transformer, VAE, CLIP and T5."""

    label = "FLUX.1"
    family = "flux"
    transformer_class = FluxTransformer
    vae_class = FluxVAE
    config_class = FluxConfig
    modes = FLUX_MODES
    samplers = FLUX_SAMPLERS
    sizes = SIZE_RULES
    component_methods: ClassVar[dict[str, tuple[str, ...]]] = {
        "text_encoder": ("encode",),
        "text_encoder_2": ("encode",),
        "transformer": ("forward",),
        "vae": ("encode", "decode"),
    }

    def __init__(
        self,
        transformer: FluxTransformer,
        vae: FluxVAE,
        text_encoder: ClipTextEncoder,
        text_encoder_2: T5TextEncoder,
        scheduler_config: Mapping[str, Any],
        config: FluxConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(transformer, vae, text_encoder, scheduler_config, config, device, dtype)
        self.text_encoder_2 = text_encoder_2
        self.variant = variant_of(transformer.config)
        self.text_len = self.config.text_len or self.variant.text_len

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def folder_components(cls, root: Path, config: FluxConfig, dtype: torch.dtype) -> dict[str, Any]:
        """CLIP and T5 with their tokenizers."""
        return {
            "text_encoder": ClipTextEncoder.from_pretrained(
                root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype
            ),
            "text_encoder_2": T5TextEncoder.from_pretrained(
                root / config.text_encoder_2_subpath, root / config.tokenizer_2_subpath, dtype
            ),
        }

    @classmethod
    def read_scheduler_config(cls, root: Path, config: FluxConfig) -> dict[str, Any]:
        """The folder's ``scheduler/scheduler_config.json``, else the release's of the folder's variant."""
        path = root / config.scheduler_subpath / "scheduler_config.json"
        if path.is_file():
            return read_json_mapping(path, "scheduler config")
        transformer = read_json_mapping(root / config.transformer_subpath / "config.json", "transformer config")
        return SCHEDULER_CONFIGS[variant_of(transformer).name]

    # -- the family's parts of the shared sampling -----------------------------------------------
    @property
    def variant_name(self) -> str:
        """FLUX.1-dev or FLUX.1-schnell."""
        return self.variant.name

    def checked_guidance(self, scale: float) -> float:
        """dev's embedded guidance scale; schnell has none (a scale given is ignored, with a warning)."""
        if scale and not self.variant.guidance_embeds:
            logger.warning("%s has no guidance embedding: guidance %s is ignored", self.variant.name, scale)
        return scale if self.variant.guidance_embeds else 0.0

    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """The transformer's text inputs: T5 ``encoder_hidden_states`` (1, L, 4096), CLIP ``pooled_projections``
        (1, 768) and ``txt_ids`` (L, 3) of zeros."""
        embeds = self.text_encoder_2.encode([prompt], max_length=self.text_len).to(self.device, self.dtype)
        pooled = self.text_encoder.encode([prompt]).to(self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": txt_ids}

    def guidance_passes(self, prompt: str, settings: SamplingSettings, latent_size: tuple[int, int], *_: Any) -> Passes:
        """One conditional pass a step (scale 1): the prompt's inputs, the image tokens' ids and dev's guidance.
        A negative prompt does not apply (no classifier-free guidance): one given is logged."""
        if settings.negative_prompt:
            logger.info("negative_prompt does not apply to FLUX.1 (no classifier-free guidance); ignored")
        cond = self.encode_prompt(prompt)
        cond["img_ids"] = image_ids(*latent_size, self.device).to(self.dtype)
        if self.variant.guidance_embeds:
            cond["guidance"] = torch.full((1,), settings.guidance_scale, device=self.device, dtype=torch.float32)
        return cond, cond, 1.0

    # -- sampling ------------------------------------------------------------------------------
    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, N, 64) of packed latents (B, N, 64) at timesteps ``t`` (B,) in [0, 1000]."""
        return self.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=(t / 1000).to(self.dtype),
            guidance=inputs.get("guidance"),
            pooled_projections=inputs["pooled_projections"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            txt_ids=inputs["txt_ids"],
            img_ids=inputs["img_ids"],
            return_dict=False,
        )[0].float()
