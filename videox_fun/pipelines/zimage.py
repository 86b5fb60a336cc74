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
pipeline do: ``control`` (the control image's VAE latents; a 2.x file's mask and masked-image channels zero) and
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

from ..families import Recognised
from ..families.zimage import CONTROL_MODES, CONTROL_SOURCE, ZIMAGE_MODES, ZIMAGE_SAMPLERS
from ..models.zimage.control import ZImageControl, refiner_hints_added
from ..models.zimage.text_encoder import ZImageTextEncoder
from ..models.zimage.transformer import ZImageTransformer
from ..models.zimage.vae import ZImageVAE
from ..models.zimage.variants import SCHEDULER_CONFIG, SIZE_RULES, ZImageConfig, variant_of
from .common import (
    GenerationOutput,
    ImageLike,
    SamplingSettings,
    folder_scheduler_config,
    generate_mask,
    image_tensor,
    recognised_as,
)
from .guidance import ClassifierFreeGuidance
from .image import FlowImagePipeline, Passes


def pad_features(features: list[torch.Tensor], length: int) -> torch.Tensor:
    """Caption features (L_i, D) each -> (B, length, D), zero after each one's own tokens (the transformer reads
    the first L_i: see :meth:`ZImagePipeline.caption_inputs`)."""
    return torch.stack([F.pad(feats, (0, 0, 0, length - feats.shape[0])) for feats in features])


class ZImagePipeline(FlowImagePipeline):
    """Text-to-image, image-to-image and inpainting with a Z-Image transformer, FLUX.1's VAE and Qwen3; control
    and control inpainting with a Fun control model beside the transformer (:attr:`control`)."""

    label = "Z-Image"
    modes = ZIMAGE_MODES
    samplers = ZIMAGE_SAMPLERS
    sizes = SIZE_RULES
    noise_modes = ("t2i", *CONTROL_MODES)
    call_settings = ("control_context_scale",)
    control: ZImageControl | None = None
    control_path: Path | None = None

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
        folder = recognised_as(folder, "zimage", "Z-Image")
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
        if config.control_path:
            pipe.use_control(root / config.control_path)
        return pipe.to(device)

    def use_control(self, path: str | Path) -> ZImageControl:
        """Load a Fun control file into the control model beside the transformer (kept while the path stays)."""
        path = Path(path)
        if self.control is None or self.control_path != path:
            self.control = ZImageControl.from_file(path, self.transformer, self.dtype, self.device)
            self.control_path = path
        return self.control

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name with the methods the pipeline calls (the control model's when one is loaded)."""
        found = super().components()
        if self.control is not None:
            found["control"] = (self.control, ("forward",))
        return found

    @torch.no_grad()
    def __call__(
        self, prompt: str, *args: Any, control_path: str | Path | None = None, **kwargs: Any
    ) -> GenerationOutput:
        """:meth:`FlowImagePipeline.__call__`; ``control_path`` loads a Fun control file for this call and the
        next ones (else the folder config's serves), ``control_context_scale`` scales its hints (default the
        folder config's)."""
        if control_path is not None:
            self.use_control(control_path)
        return super().__call__(prompt, *args, **kwargs)

    def resolve_settings(self, mode: str, inputs: Mapping[str, Any], **given: Any) -> SamplingSettings:
        """The shared settings; a control mode needs a control file (2.x for control_inpaint)."""
        if mode in CONTROL_MODES and self.control is None:
            raise ValueError(f"mode {mode!r} needs a Z-Image Fun control file ({CONTROL_SOURCE})")
        if mode == "control_inpaint" and not self.control.release.inpaint:
            raise ValueError(f"mode 'control_inpaint' needs a 2.x Fun control file; {self.control_path} is "
                             f"{self.control.release.name}, which reads a control image only")  # fmt: skip
        return super().resolve_settings(mode, inputs, **given)

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
        if settings.mode in CONTROL_MODES:  # the same control context steers both passes
            control = {"control_context": self.control_context(settings, inputs),
                       "control_scale": self.control_scale(inputs)}  # fmt: skip
            cond, uncond = {**cond, **control}, {**uncond, **control}
        return cond, uncond, settings.guidance_scale + 1.0 if guided else 1.0

    # -- Fun control ---------------------------------------------------------------------------------
    def control_scale(self, inputs: Mapping[str, Any]) -> float:
        """The call's ``control_context_scale``, else the folder config's."""
        given = inputs.get("control_context_scale")
        return float(self.config.control_context_scale if given is None else given)

    def control_context(self, settings: SamplingSettings, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The control model's input (1, control_in_dim, 1, h, w): the control image's latents (zeros without one),
        then for a 2.x file the known-pixels mask (1 = keep) and the latents of the image with its masked pixels
        zeroed (both zero outside control_inpaint)."""
        assert self.control is not None and self.control.release is not None
        h, w = self.latent_size(settings)
        control = inputs.get("control_video")
        latents = (self.image_latents(control, settings.height, settings.width) if control is not None
                   else torch.zeros(1, self.vae.latent_channels, h, w, device=self.device))  # fmt: skip
        if not self.control.release.inpaint:
            return latents[:, :, None]
        keep, masked = torch.zeros(1, 1, h, w, device=self.device), torch.zeros_like(latents)
        if settings.mode == "control_inpaint":
            keep, masked = self.masked_image(inputs["image"], inputs["mask"], settings)
        return torch.cat([latents, keep, masked], dim=1)[:, :, None]  # (1, 16 + 1 + 16, 1, h, w)

    def masked_image(
        self, image: ImageLike, mask: ImageLike, settings: SamplingSettings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(known-pixels mask (1, 1, h, w), latents (1, 16, h, w) of ``image`` with the white of ``mask`` zeroed),
        as diffusers' Z-Image control inpaint pipeline builds them."""
        size = (settings.height, settings.width)
        generate = generate_mask(mask, *size, size).to(self.device)  # (1, 1, H, W), 1 = regenerate
        pixels = image_tensor(image, *size, self.device, self.dtype) * (generate < 0.5)  # (1, 3, H, W)
        keep = 1 - generate_mask(mask, *size, self.latent_size(settings)).to(self.device)  # (1, 1, h, w)
        return keep, self.vae.encode(pixels).float()

    def call_record(self, settings: SamplingSettings, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The control file, its release and scale of a control call."""
        if settings.mode not in CONTROL_MODES or self.control is None or self.control.release is None:
            return {}
        return {"control_path": str(self.control_path), "control": self.control.release.name,
                "control_context_scale": self.control_scale(inputs)}  # fmt: skip

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
