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

With a Fun control file (:mod:`~videox_fun.models.zimage.control`) two more modes start from noise, as
diffusers' ``ZImageControlNetPipeline`` / ``ZImageControlNetInpaintPipeline`` and VideoX-Fun's Z-Image control
pipeline do: ``control`` (the control image's VAE latents; for a 2.x file, mask 0 and the VAE latents of a grey
picture in the masked-image channels, as VideoX-Fun's scripts and nodes give them, where diffusers'
``ZImageControlNetPipeline`` pads zeros: :meth:`~.fun_control.FunControlPipeline.nothing_kept`) and
``control_inpaint`` (2.x: the control latents, or zeros without a control image, the known-pixels mask and the
latents of the image with its masked pixels zeroed). The control model's hints are scaled by
``control_context_scale`` every pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..families.fun_control import CONTROL_MODES
from ..families.zimage import ZIMAGE_MODES, ZIMAGE_SAMPLERS
from ..models.zimage.control import ZImageControl, refiner_hints_added
from ..models.zimage.text_encoder import ZImageTextEncoder
from ..models.zimage.transformer import ZImageTransformer
from ..models.zimage.vae import ZImageVAE
from ..models.zimage.variants import SCHEDULER_CONFIG, SIZE_RULES, ZImageConfig, variant_of
from .common import SamplingSettings
from .fun_control import FunControlPipeline
from .guidance import ClassifierFreeGuidance
from .image import FlowImagePipeline, Passes


def pad_features(features: list[torch.Tensor], length: int) -> torch.Tensor:
    """Caption features (L_i, D) each -> (B, length, D), zero after each one's own tokens (the transformer reads
    the first L_i: see :meth:`ZImagePipeline.caption_inputs`)."""
    return torch.stack([F.pad(feats, (0, 0, 0, length - feats.shape[0])) for feats in features])


class ZImagePipeline(FunControlPipeline, FlowImagePipeline):
    """Text-to-image, image-to-image and inpainting with a Z-Image transformer, FLUX.1's VAE and Qwen3; control
    and control inpainting with a Fun control model beside the transformer (:attr:`control`)."""

    label = "Z-Image"
    family = "zimage"
    transformer_class = ZImageTransformer
    vae_class = ZImageVAE
    config_class = ZImageConfig
    scheduler_release = SCHEDULER_CONFIG
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    sizes = SIZE_RULES
    noise_modes = ("t2i", *CONTROL_MODES)
    inpaint_file = "a 2.x Fun control file"
    control: ZImageControl | None = None

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
        super().__init__(transformer, vae, text_encoder, scheduler_config, config, device, dtype)
        self.variant = variant

    @classmethod
    def folder_components(cls, root: Path, config: ZImageConfig, dtype: torch.dtype) -> dict[str, Any]:
        """Qwen3 with its tokenizer, and the variant (Z-Image or Z-Image-Turbo)."""
        text_encoder = ZImageTextEncoder.from_pretrained(
            root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype
        )
        return {"text_encoder": text_encoder, "variant": variant_of(root, config.variant).name}

    def load_control(self, path: Path) -> ZImageControl:
        """The Z-Image control model of a Fun control file, linked to the transformer."""
        return ZImageControl.from_file(path, self.transformer, self.dtype, self.device)

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

    def guidance_passes(
        self,
        prompt: str,
        settings: SamplingSettings,
        latent_size: tuple[int, int],
        guidance: ClassifierFreeGuidance,
        inputs: Mapping[str, Any],
    ) -> Passes:
        """The prompt's inputs, and with guidance g > 0 the negative prompt's (both padded to one length so that
        one batched pass takes them) at CFG scale g + 1 (diffusers' ``cond + g (cond - uncond)``)."""
        guided = settings.guidance_scale > 0
        prompts = [prompt, settings.negative_prompt] if guided else [prompt]
        features = self.text_encoder.encode(prompts, max_length=self.config.text_len)
        length = max(feats.shape[0] for feats in features)
        cond = self.caption_inputs(features[:1], length)
        uncond = self.caption_inputs(features[1:], length) if guided else cond
        cond, uncond = self.with_control(settings, inputs, cond, uncond)
        return cond, uncond, settings.guidance_scale + 1.0 if guided else 1.0

    def pack_control(self, grid: torch.Tensor) -> torch.Tensor:
        """The control grid (1, C, h, w) as the control model reads it: (1, C, 1, h, w), one frame."""
        return grid[:, :, None]

    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, 16, h, w) of latents (B, 16, h, w) at scheduler timesteps ``t`` (B,) in [0, 1000];
        with a ``control_context`` (B, C, 1, h, w) the control model's hints steer the transformer."""
        feats, lens = inputs["cap_feats"], inputs["cap_lens"]
        images = list(latents.to(self.dtype).unsqueeze(2).unbind(0))  # B x (16, 1, h, w)
        captions = [feats[i, : int(lens[i])] for i in range(len(images))]  # B x (L_i, D)
        timestep = (1000 - t) / 1000  # the transformer's time: 1 = clean
        context = inputs.get("control_context")
        if context is None:
            out = self.transformer(images, timestep, captions, return_dict=False)[0]  # B x (16, 1, h, w)
        else:
            assert self.control is not None
            refiner, main = self.control.hints(images, timestep, captions, context.to(self.dtype),
                                               inputs["control_scale"])  # fmt: skip
            with refiner_hints_added(self.transformer, refiner):
                out = self.transformer(images, timestep, captions, controlnet_block_samples=main, return_dict=False)[0]
        return -torch.stack([sample.float() for sample in out]).squeeze(2)  # it predicts clean - noise
