"""One Z-Image pipeline for every mode: t2i, i2i and inpaint, as diffusers' ``ZImagePipeline``,
``ZImageImg2ImgPipeline`` and ``ZImageInpaintPipeline`` compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) go to the transformer as a list of (16, 1, h, w), which it patchifies 2x2 itself, with
each prompt's Qwen3 features (L_i, 2560) of its real tokens. The transformer is given ``(1000 - t) / 1000`` (1 =
clean) and predicts ``clean - noise``: the flow velocity negated. The sigmas run ``linspace(1, 1/steps, steps)``
(in float32) through the folder's flow-matching Euler scheduler (static shift 3 in the release, or ``--shift``).

Guidance is diffusers' Z-Image form ``cond + g * (cond - uncond)``, i.e. classifier-free guidance of scale g + 1,
run by the shared :class:`~.guidance.ClassifierFreeGuidance` (batched, sequential, CFG skip); Turbo's g = 0 runs
one pass a step. diffusers' ``cfg_normalization`` / ``cfg_truncation`` (off by default) are not offered.

* t2i: pure noise;
* i2i: the image's latents noised to the first of the steps that ``strength`` leaves;
* inpaint: as i2i, and after every step the latents outside the (binarised, white = generate) mask are put
  back to the image's latents noised to the next step's level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from ..config import read_json_mapping
from ..families import Recognised, infer_mode, require_inputs
from ..families.zimage import ZIMAGE_MODES, ZIMAGE_SAMPLERS
from ..io.files import check_input_file
from ..io.video import tensor_to_frames
from ..models.zimage.text_encoder import ZImageTextEncoder
from ..models.zimage.transformer import ZImageTransformer
from ..models.zimage.vae import ZImageVAE
from ..models.zimage.variants import SCHEDULER_CONFIG, SIZE_RULES, ZImageConfig, variant_of
from .common import (
    GenerationOutput,
    ImageLike,
    SamplingSettings,
    StepCallback,
    corrected,
    flow_scheduler,
    flow_timesteps,
    generate_mask,
    image_tensor,
    keep_known,
    seeded_noise,
    strength_start,
)
from .guidance import ClassifierFreeGuidance

logger = logging.getLogger(__name__)
PATCH = 2  # the transformer's 2x2 patches: image tokens = (h / 2) * (w / 2)


def valid_side(name: str, value: int) -> int:
    """A height or width as a multiple of 16 (8x VAE, 2x2 patches), told to the user when corrected."""
    return corrected(name, value, SIZE_RULES.valid_size(value), f"a multiple of {SIZE_RULES.multiple}")


def read_scheduler_config(root: Path, config: ZImageConfig) -> dict[str, Any]:
    """The folder's ``scheduler/scheduler_config.json``, else the release's (shift 3, static)."""
    path = root / config.scheduler_subpath / "scheduler_config.json"
    return read_json_mapping(path, "scheduler config") if path.is_file() else dict(SCHEDULER_CONFIG)


def pad_features(features: list[torch.Tensor], length: int) -> torch.Tensor:
    """Caption features (L_i, D) each -> (B, length, D), zero after each one's own tokens (the transformer reads
    the first L_i: see :meth:`ZImagePipeline.caption_inputs`)."""
    return torch.stack([F.pad(feats, (0, 0, 0, length - feats.shape[0])) for feats in features])


class ZImagePipeline:
    """Text-to-image, image-to-image and inpainting with a Z-Image transformer, FLUX.1's VAE and Qwen3."""

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

    # -- construction --------------------------------------------------------------------------
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
            read_scheduler_config(root, config),
            config,
            device,
            dtype,
            variant_of(root, config.variant).name,
        )
        return pipe.to(device)

    def to(self, device: str | torch.device) -> ZImagePipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vae, self.text_encoder):
            module.to(self.device)
        return self

    @property
    def transformers(self) -> tuple[ZImageTransformer]:
        """The denoising transformer (one)."""
        return (self.transformer,)

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name, with the methods through which the pipeline calls it (offload hooks wrap these)."""
        return {
            "text_encoder": (self.text_encoder, ("encode",)),
            "transformer": (self.transformer, ("forward",)),
            "vae": (self.vae, ("encode", "decode")),
        }

    # -- settings ------------------------------------------------------------------------------
    def resolve_settings(self, mode: str, inputs: Mapping[str, Any], **given: Any) -> SamplingSettings:
        """The settings of one call: the config's defaults for what is None, checked and size-corrected."""
        defaults = self.config.defaults
        values = {name: getattr(defaults, name) if given.get(name) is None else given[name]
                  for name in ("height", "width", "num_frames", "steps", "guidance_scale", "sampler",
                               "negative_prompt")}  # fmt: skip
        if values["sampler"] not in ZIMAGE_SAMPLERS:
            raise ValueError(f"unknown sampler {values['sampler']!r}; Z-Image takes {', '.join(ZIMAGE_SAMPLERS)}")
        if values["steps"] < 1:
            raise ValueError(f"steps must be at least 1, got {values['steps']}")
        if values["guidance_scale"] < 0:
            raise ValueError(f"guidance scale must be at least 0 (0: no guidance), got {values['guidance_scale']}")
        require_inputs(ZIMAGE_MODES, mode, inputs, check_input_file)
        if values["num_frames"] != 1:
            corrected("frame count", values["num_frames"], 1, "1 (Z-Image makes images)")
        return SamplingSettings(
            mode=mode,
            negative_prompt=values["negative_prompt"] or "",
            height=valid_side("height", values["height"]),
            width=valid_side("width", values["width"]),
            num_frames=1,
            steps=values["steps"],
            guidance_scale=float(values["guidance_scale"]),
            guidance_scale_2=None,  # type: ignore[arg-type]  # one transformer
            shift=given.get("shift"),  # type: ignore[arg-type]  # None: the scheduler config's shift
            sampler=values["sampler"],
        )

    def latent_size(self, settings: SamplingSettings) -> tuple[int, int]:
        """(h, w) of the latents: the image over 8, even."""
        s = self.vae.spatial_compression
        return settings.height // s, settings.width // s

    # -- inputs --------------------------------------------------------------------------------
    def caption_inputs(self, features: list[torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        """The transformer's text inputs as tensors the guidance can stack: ``cap_feats`` (B, length, D) padded and
        ``cap_lens`` (B,), the real token counts."""
        lens = torch.tensor([feats.shape[0] for feats in features], device=self.device)
        return {"cap_feats": pad_features(features, length).to(self.device, self.dtype), "cap_lens": lens}

    def encode_prompts(self, prompt: str, negative_prompt: str | None) -> tuple[dict, dict | None]:
        """The conditional inputs, and the unconditional ones when guidance runs (``negative_prompt`` not None):
        both padded to one length so that one batched pass can take them."""
        prompts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
        features = self.text_encoder.encode(prompts, max_length=self.config.text_len)
        length = max(feats.shape[0] for feats in features)
        cond = self.caption_inputs(features[:1], length)
        return cond, (self.caption_inputs(features[1:], length) if negative_prompt is not None else None)

    def image_latents(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """An input image's normalised latents (1, 16, h, w)."""
        image = image_tensor(source, settings.height, settings.width, self.device, self.dtype)  # (1, 3, H, W)
        return self.vae.encode(image).float()

    # -- sampling ------------------------------------------------------------------------------
    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, 16, h, w) of latents (B, 16, h, w) at scheduler timesteps ``t`` (B,) in [0, 1000]."""
        feats, lens = inputs["cap_feats"], inputs["cap_lens"]
        images = list(latents.to(self.dtype).unsqueeze(2).unbind(0))  # B x (16, 1, h, w)
        captions = [feats[i, : int(lens[i])] for i in range(len(images))]  # B x (L_i, D)
        out = self.transformer(images, (1000 - t) / 1000, captions, return_dict=False)[0]  # B x (16, 1, h, w)
        return -torch.stack([sample.float() for sample in out]).squeeze(2)  # it predicts clean - noise

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        mode: str | None = None,
        image: ImageLike | None = None,
        mask: ImageLike | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int = 43,
        strength: float = 0.7,
        guidance: ClassifierFreeGuidance | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
    ) -> GenerationOutput:
        """Generate one image. ``mode`` is inferred from the inputs when not given.

        ``guidance_scale`` g > 0 runs classifier-free guidance against ``negative_prompt`` (default empty) as
        ``cond + g * (cond - uncond)``; 0 (Turbo) one pass a step. ``guidance`` carries the runtime's settings
        (batched or sequential passes, CFG skip); its scale is replaced by g + 1. ``guidance_scale_2`` does not apply.
        """
        if guidance_scale_2:
            logger.info("guidance_scale_2=%s does not apply to Z-Image (one transformer); ignored", guidance_scale_2)
        inputs = {"image": image, "mask": mask}
        settings = self.resolve_settings(
            mode or infer_mode(ZIMAGE_MODES, inputs), inputs, height=height, width=width, num_frames=num_frames,
            steps=num_inference_steps, guidance_scale=guidance_scale, shift=shift, sampler=sampler,
            negative_prompt=negative_prompt,
        )  # fmt: skip
        guided = settings.guidance_scale > 0
        cond, uncond = self.encode_prompts(prompt, settings.negative_prompt if guided else None)
        h, w = self.latent_size(settings)

        scheduler = flow_scheduler(self.scheduler_config, shift)
        start = 0 if settings.mode == "t2i" else strength_start(settings.steps, strength)
        # diffusers' Z-Image sigmas: linspace(1, 1/steps, steps) in float32 (FLUX's are float64: they round apart).
        sigmas = torch.linspace(1.0, 1 / settings.steps, settings.steps).tolist()
        seq_len = (h // PATCH) * (w // PATCH)
        timesteps, mu = flow_timesteps(scheduler, settings.steps, seq_len, start, self.device, sigmas)
        noise = seeded_noise((1, self.vae.latent_channels, h, w), seed, self.device)  # (1, 16, h, w)
        known = None
        latents = noise
        if settings.mode != "t2i":
            clean = self.image_latents(image, settings)  # (1, 16, h, w)
            latents = scheduler.scale_noise(clean, timesteps[:1], noise)
            if settings.mode == "inpaint":
                generate = generate_mask(mask, settings.height, settings.width, (h, w)).to(self.device)  # (1, 1, h, w)
                known = (clean, noise, generate.expand_as(clean))
        scale = settings.guidance_scale + 1.0  # diffusers' cond + g (cond - uncond) = CFG of scale g + 1
        passes = (cond, uncond if guided else cond, scale if guided else 1.0)
        latents = self._sample(latents, timesteps, scheduler, guidance, passes, known, callback, progress)

        decoded = self.vae.decode(latents.to(self.dtype)).float()  # (1, 3, H, W)
        record = {**settings.record(seed), "shift": shift, "mu": None if shift is not None else mu,
                  "sampler": settings.sampler, "variant": self.variant}  # fmt: skip
        if guided:
            record["negative_prompt"] = settings.negative_prompt
        if settings.mode != "t2i":
            record["strength"] = strength
        frames = tensor_to_frames(decoded[:, :, None][0].cpu())  # (1, H, W, 3)
        return GenerationOutput(frames=frames, latents=latents[:, :, None].cpu(), settings=record)

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: FlowMatchEulerDiscreteScheduler,
        guidance: ClassifierFreeGuidance | None,
        passes: tuple[dict, dict, float],
        known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop over ``passes`` = (cond, uncond, CFG scale); ``known`` (inpaint: clean latents, noise,
        the generate mask) re-imposes the image outside the mask after each step. Returns (1, 16, h, w)."""
        for hook in getattr(self.transformer, "generation_hooks", ()):
            hook.begin(len(timesteps))  # step caches start fresh for every image
        guidance = guidance or ClassifierFreeGuidance()
        cond, uncond, scale = passes
        num_steps = len(timesteps)
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            velocity = guidance(self._denoise, latents, t.expand(1), cond, uncond, step, num_steps, scale=scale)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
            if known is not None:
                latents = keep_known(latents, known, scheduler, timesteps, step)
            if callback is not None:
                callback(step, num_steps, latents)
        return latents
