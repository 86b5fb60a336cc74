"""One Z-Image pipeline for every mode: t2i, i2i and inpaint, as diffusers' ``ZImagePipeline``,
``ZImageImg2ImgPipeline`` and ``ZImageInpaintPipeline`` compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) go to the transformer as a list of (16, 1, h, w), which it patchifies 2x2 itself, with
each prompt's Qwen3 features (L_i, 2560) of its real tokens. The transformer is given ``(1000 - t) / 1000`` (1 =
clean) and predicts ``clean - noise``: the flow velocity negated. The sigmas run ``linspace(1, 1/steps, steps)``
(in float32) through the folder's flow-matching Euler scheduler (static shift 3 in the release, or ``--shift``).

Guidance is diffusers' Z-Image form ``cond + g * (cond - uncond)``, i.e. classifier-free guidance of scale g + 1,
run by the shared :class:`~.guidance.ClassifierFreeGuidance` (batched, sequential, CFG skip); Turbo's g = 0 runs
one pass a step. diffusers' ``cfg_normalization`` / ``cfg_truncation`` (off by default) are not offered. The
modes and the loop are :class:`~.image.FlowImagePipeline`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..families import Recognised
from ..families.zimage import ZIMAGE_MODES, ZIMAGE_SAMPLERS
from ..models.zimage.text_encoder import ZImageTextEncoder
from ..models.zimage.transformer import ZImageTransformer
from ..models.zimage.vae import ZImageVAE
from ..models.zimage.variants import SCHEDULER_CONFIG, SIZE_RULES, ZImageConfig, variant_of
from .common import SamplingSettings
from .image import FlowImagePipeline, Passes, folder_scheduler_config


def pad_features(features: list[torch.Tensor], length: int) -> torch.Tensor:
    """Caption features (L_i, D) each -> (B, length, D), zero after each one's own tokens (the transformer reads
    the first L_i: see :meth:`ZImagePipeline.caption_inputs`)."""
    return torch.stack([F.pad(feats, (0, 0, 0, length - feats.shape[0])) for feats in features])


class ZImagePipeline(FlowImagePipeline):
    """Text-to-image, image-to-image and inpainting with a Z-Image transformer, FLUX.1's VAE and Qwen3."""

    label = "Z-Image"
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    sizes = SIZE_RULES

    def __init__(
        self,
        transformer: ZImageTransformer,
        vae: ZImageVAE,
        text_encoder: ZImageTextEncoder,
        scheduler_config: Mapping[str, Any],
        config: ZImageConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        variant: str = "Z-Image",
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.config = config or ZImageConfig()
        self.variant = variant
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls, folder: str | Path | Recognised, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> ZImagePipeline:
        """Load every component of a Z-Image folder (or one the family already recognised), strictly."""
        if not isinstance(folder, Recognised):
            from ..families import recognise

            folder = recognise(folder)
            if folder.family.name != "zimage":
                raise ValueError(f"{folder.folder} is a {folder.family.name} model folder, not a Z-Image one")
        root, config = folder.folder, folder.config
        pipe = cls(
            ZImageTransformer.from_pretrained(root / config.transformer_subpath, torch_dtype=dtype),
            ZImageVAE.from_pretrained(root / config.vae_subpath, dtype=dtype),
            ZImageTextEncoder.from_pretrained(
                root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype
            ),
            folder_scheduler_config(root, config.scheduler_subpath, SCHEDULER_CONFIG),
            config,
            device,
            dtype,
            variant_of(root, config.variant).name,
        )
        return pipe.to(device)

    # -- the family's parts of the shared sampling -----------------------------------------------
    @property
    def variant_name(self) -> str:
        """Z-Image or Z-Image-Turbo."""
        return self.variant

    def checked_guidance(self, scale: float) -> float:
        """diffusers' Z-Image guidance g (0: none); negative values are refused."""
        if scale < 0:
            raise ValueError(f"guidance scale must be at least 0 (0: no guidance), got {scale}")
        return scale

    def sigmas(self, steps: int) -> list[float]:
        """diffusers' Z-Image sigmas: ``linspace(1, 1/steps, steps)`` in float32 (FLUX's float64 rounds apart)."""
        return torch.linspace(1.0, 1 / steps, steps).tolist()

    def caption_inputs(self, features: list[torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        """The transformer's text inputs as tensors the guidance can stack: ``cap_feats`` (B, length, D) padded and
        ``cap_lens`` (B,), the real token counts."""
        lens = torch.tensor([feats.shape[0] for feats in features], device=self.device)
        return {"cap_feats": pad_features(features, length).to(self.device, self.dtype), "cap_lens": lens}

    def guidance_passes(self, prompt: str, settings: SamplingSettings, latent_size: tuple[int, int], *_: Any) -> Passes:
        """The prompt's inputs, and with guidance g > 0 the negative prompt's (both padded to one length so that
        one batched pass takes them) at CFG scale g + 1 (diffusers' ``cond + g (cond - uncond)``)."""
        guided = settings.guidance_scale > 0
        prompts = [prompt, settings.negative_prompt] if guided else [prompt]
        features = self.text_encoder.encode(prompts, max_length=self.config.text_len)
        length = max(feats.shape[0] for feats in features)
        cond = self.caption_inputs(features[:1], length)
        if not guided:
            return cond, cond, 1.0
        return cond, self.caption_inputs(features[1:], length), settings.guidance_scale + 1.0

    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, 16, h, w) of latents (B, 16, h, w) at scheduler timesteps ``t`` (B,) in [0, 1000]."""
        feats, lens = inputs["cap_feats"], inputs["cap_lens"]
        images = list(latents.to(self.dtype).unsqueeze(2).unbind(0))  # B x (16, 1, h, w)
        captions = [feats[i, : int(lens[i])] for i in range(len(images))]  # B x (L_i, D)
        out = self.transformer(images, (1000 - t) / 1000, captions, return_dict=False)[0]  # B x (16, 1, h, w)
        return -torch.stack([sample.float() for sample in out]).squeeze(2)  # it predicts clean - noise
