"""One Qwen-Image pipeline for every mode: t2i, i2i, inpaint (Qwen-Image) and edit (Qwen-Image-Edit), as diffusers'
``QwenImagePipeline``, ``QwenImageImg2ImgPipeline``, ``QwenImageInpaintPipeline`` and ``QwenImageEditPipeline``
compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) travel packed 2x2 into tokens (B, h/2 * w/2, 64); ``img_shapes`` gives the transformer
each image's token grid for its rotary positions. The sigmas run ``linspace(1, 1/steps, steps)`` through the
folder's flow-matching Euler scheduler, shifted by mu from the token count unless a static ``shift`` is given.
Guidance is true classifier-free guidance (a second pass on the negative prompt, " " when none is given) with the
guided prediction rescaled to the conditional one's norm per token, as the release does; scale 1 runs one pass.

* t2i: pure noise;
* i2i: the image's latents noised to the first of the steps that ``strength`` leaves;
* inpaint: as i2i, and after every step the latents outside the (binarised, white = generate) mask are put back
  to the image's latents noised to the next step's level;
* edit: pure noise; the edit image, resized to the config's ``edit_area`` at its aspect ratio, is read by the VL
  text encoder and its latent tokens follow the noisy ones in every transformer pass (their output is dropped).
  Without a size the output takes the edit image's aspect ratio at the area of the default size.
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
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from tqdm.auto import tqdm

from ..config import read_json_mapping
from ..families import Recognised, infer_mode, require_inputs
from ..families.qwenimage import QWENIMAGE_MODES, QWENIMAGE_SAMPLERS
from ..io.files import check_input_file
from ..io.video import read_image, tensor_to_frames
from ..models.qwenimage.text_encoder import QwenVLTextEncoder
from ..models.qwenimage.transformer import QwenImageTransformer
from ..models.qwenimage.vae import QwenImageVAE
from ..models.qwenimage.variants import (
    EDIT_SIZE_MULTIPLE,
    SCHEDULER_CONFIG,
    SIZE_RULES,
    QwenImageConfig,
    QwenImageVariant,
    variant_of,
)
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
    pack_latents,
    seeded_noise,
    strength_start,
    unpack_latents,
)
from .guidance import ClassifierFreeGuidance

logger = logging.getLogger(__name__)
# The guided prediction is renormalised per token: over the last axis of (B, N, 64).
TOKEN_CHANNELS = -1


def valid_side(name: str, value: int) -> int:
    """A height or width as a multiple of 16 (8x VAE, 2x2 packing), told to the user when corrected."""
    return corrected(name, value, SIZE_RULES.valid_size(value), f"a multiple of {SIZE_RULES.multiple}")


def edit_size(width: int, height: int, area: int) -> tuple[int, int]:
    """(height, width) of ``area`` pixels at the aspect ratio of ``width x height``, each rounded to 32 (diffusers'
    ``calculate_dimensions``)."""
    ratio = width / height
    side = math.sqrt(area * ratio)
    return round(side / ratio / EDIT_SIZE_MULTIPLE) * EDIT_SIZE_MULTIPLE, round(side / EDIT_SIZE_MULTIPLE) * 32


def pil_image(source: ImageLike) -> Image.Image:
    """An image path, or uint8 (H, W, 3), as an RGB PIL image."""
    pixels = read_image(source) if isinstance(source, (str, Path)) else torch.as_tensor(np.asarray(source))
    return Image.fromarray(pixels.to(torch.uint8).numpy()).convert("RGB")


def read_scheduler_config(root: Path, config: QwenImageConfig) -> dict[str, Any]:
    """The folder's ``scheduler/scheduler_config.json``, else the release's."""
    path = root / config.scheduler_subpath / "scheduler_config.json"
    return read_json_mapping(path, "scheduler config") if path.is_file() else dict(SCHEDULER_CONFIG)


def pad_text(inputs: dict, length: int) -> dict:
    """Text inputs padded with zero tokens to ``length``, with the mask saying which are real (batched CFG)."""
    embeds, mask = inputs["encoder_hidden_states"], inputs["encoder_hidden_states_mask"]  # (1, L, D), (1, L) | None
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    extra = length - embeds.shape[1]
    return {**inputs, "encoder_hidden_states": F.pad(embeds, (0, 0, 0, extra)), "encoder_hidden_states_mask":
            F.pad(mask, (0, extra))}  # fmt: skip


class QwenImagePipeline:
    """Text-to-image, image-to-image, inpainting (Qwen-Image) and editing (Qwen-Image-Edit)."""

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
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.variant = variant
        self.config = config or QwenImageConfig()
        self.device = torch.device(device)
        self.dtype = dtype

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path | Recognised, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> QwenImagePipeline:
        """Load every component of a Qwen-Image folder (or one the family already recognised), strictly."""
        if not isinstance(folder, Recognised):
            from ..families import recognise

            folder = recognise(folder)
            if folder.family.name != "qwenimage":
                raise ValueError(f"{folder.folder} is a {folder.family.name} model folder, not a Qwen-Image one")
        root, config = folder.folder, folder.config
        variant = variant_of(read_json_mapping(root / "model_index.json", "model index"), root)
        processor = root / config.processor_subpath if variant.edit else None
        pipe = cls(
            QwenImageTransformer.from_pretrained(root / config.transformer_subpath, torch_dtype=dtype),
            QwenImageVAE.from_pretrained(root / config.vae_subpath, dtype=dtype),
            QwenVLTextEncoder.from_pretrained(
                root / config.text_encoder_subpath, root / config.tokenizer_subpath, processor, dtype
            ),
            read_scheduler_config(root, config),
            variant,
            config,
            device,
            dtype,
        )
        return pipe.to(device)

    def to(self, device: str | torch.device) -> QwenImagePipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vae, self.text_encoder):
            module.to(self.device)
        return self

    @property
    def mode_table(self) -> dict[str, Any]:
        """The family's modes this folder's variant serves."""
        return {name: QWENIMAGE_MODES[name] for name in self.variant.modes}

    @property
    def transformers(self) -> tuple[QwenImageTransformer]:
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
        """The settings of one call: the config's defaults for what is None, checked and size-corrected; an edit
        without a size takes the edit image's aspect ratio at the default size's area."""
        defaults = self.config.defaults
        require_inputs(self.mode_table, mode, inputs, check_input_file, family_table=QWENIMAGE_MODES)
        if mode == "edit" and given.get("height") is None and given.get("width") is None:
            image = pil_image(inputs["image"])
            given["height"], given["width"] = edit_size(*image.size, defaults.height * defaults.width)
        values = {name: getattr(defaults, name) if given.get(name) is None else given[name]
                  for name in ("height", "width", "num_frames", "steps", "guidance_scale", "sampler")}  # fmt: skip
        if values["sampler"] not in QWENIMAGE_SAMPLERS:
            raise ValueError(f"unknown sampler {values['sampler']!r}; Qwen-Image takes {', '.join(QWENIMAGE_SAMPLERS)}")
        # A terminal shift stretches the sigmas so the last is shift_terminal: one step (sigma 1 alone) divides 0 by 0.
        fewest = 2 if self.scheduler_config.get("shift_terminal") else 1
        if values["steps"] < fewest:
            raise ValueError(f"steps must be at least {fewest} (the scheduler's terminal shift), got {values['steps']}")
        if values["num_frames"] != 1:
            corrected("frame count", values["num_frames"], 1, "1 (Qwen-Image makes images)")
        negative = given.get("negative_prompt")
        return SamplingSettings(
            mode=mode,
            negative_prompt=defaults.negative_prompt if negative is None else negative,
            height=valid_side("height", values["height"]),
            width=valid_side("width", values["width"]),
            num_frames=1,
            steps=values["steps"],
            guidance_scale=values["guidance_scale"],
            guidance_scale_2=None,  # type: ignore[arg-type]  # one transformer
            shift=given.get("shift"),  # type: ignore[arg-type]  # None: the resolution-dependent shift
            sampler=values["sampler"],
        )

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the unpacked latents of an image: its size over 8."""
        s = self.vae.spatial_compression
        return height // s, width // s

    # -- inputs --------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, image: Image.Image | None = None) -> dict[str, torch.Tensor | None]:
        """The transformer's text inputs: ``encoder_hidden_states`` (1, L, D) and its mask (None: no padding)."""
        embeds, mask = self.text_encoder.encode([prompt], self.variant.template, image, self.config.text_len)
        return {"encoder_hidden_states": embeds.to(self.device, self.dtype), "encoder_hidden_states_mask": mask}

    def image_latents(self, source: ImageLike, height: int, width: int) -> torch.Tensor:
        """An input image's normalised latents (1, 16, h, w)."""
        image = image_tensor(source, height, width, self.device, self.dtype)  # (1, 3, H, W)
        return self.vae.encode(image).float()

    def edit_condition(self, source: ImageLike) -> tuple[Image.Image, torch.Tensor, tuple[int, int]]:
        """The edit image resized (Lanczos) to ``edit_area`` pixels at its aspect ratio, as the VL model reads it, its
        packed latent tokens (1, n, 64) and their (rows, columns) of tokens."""
        image = pil_image(source)
        height, width = edit_size(*image.size, self.config.edit_area)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(image).copy())  # (H, W, 3) uint8
        latents = self.image_latents(pixels, height, width)  # (1, 16, h, w)
        return image, pack_latents(latents), (latents.shape[2] // 2, latents.shape[3] // 2)

    def generate_mask(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """The packed mask (1, N, 64) of latents to generate (white = generate)."""
        latent_size = self.latent_size(settings.height, settings.width)
        mask = generate_mask(source, settings.height, settings.width, latent_size).to(self.device)  # (1, 1, h, w)
        return pack_latents(mask.repeat(1, self.vae.latent_channels, 1, 1))

    # -- sampling ------------------------------------------------------------------------------
    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity (B, N, 64) of packed latents (B, N, 64) at timesteps ``t`` (B,) in [0, 1000]; the edit
        image's tokens (B, n, 64), when given, ride along after the noisy ones."""
        condition = inputs.get("condition")
        hidden = latents if condition is None else torch.cat([latents, condition.expand(len(latents), -1, -1)], 1)
        return self.transformer(
            hidden_states=hidden.to(self.dtype),
            timestep=(t / 1000).to(self.dtype),
            encoder_hidden_states=inputs["encoder_hidden_states"],
            encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"],
            img_shapes=[inputs["img_shapes"]] * len(latents),
            return_dict=False,
        )[0][:, : latents.shape[1]].float()

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

        ``guidance_scale`` is the true CFG scale (the release's ``true_cfg_scale``; 1 turns the negative pass off);
        ``guidance`` carries the runtime's guidance (batched or sequential passes, CFG skip, CFG parallel).
        """
        if guidance_scale_2:
            logger.info("guidance_scale_2=%s does not apply to Qwen-Image (one transformer); ignored", guidance_scale_2)
        inputs = {"image": image, "mask": mask}
        settings = self.resolve_settings(
            mode or infer_mode(self.mode_table, inputs), inputs, height=height, width=width, num_frames=num_frames,
            steps=num_inference_steps, guidance_scale=guidance_scale, shift=shift, sampler=sampler,
            negative_prompt=negative_prompt,
        )  # fmt: skip
        h, w = self.latent_size(settings.height, settings.width)
        shapes: list[tuple[int, int, int]] = [(1, h // 2, w // 2)]
        vision, condition = None, None
        if settings.mode == "edit":
            vision, condition, grid = self.edit_condition(image)
            shapes.append((1, *grid))
        guidance = guidance or ClassifierFreeGuidance(scale=settings.guidance_scale, batched=False)
        cond = {**self.encode_prompt(prompt, vision), "img_shapes": shapes, "condition": condition}
        uncond = cond
        if guidance.active(0, settings.steps, settings.guidance_scale):
            uncond = {**cond, **self.encode_prompt(settings.negative_prompt, vision)}
            if guidance.batched:  # one pass of both: the two texts padded to one length, masked
                length = max(cond["encoder_hidden_states"].shape[1], uncond["encoder_hidden_states"].shape[1])
                cond, uncond = pad_text(cond, length), pad_text(uncond, length)

        scheduler = flow_scheduler(self.scheduler_config, shift)
        start = strength_start(settings.steps, strength) if settings.mode in ("i2i", "inpaint") else 0
        timesteps, mu = flow_timesteps(scheduler, settings.steps, (h // 2) * (w // 2), start, self.device)
        noise = seeded_noise((1, self.vae.latent_channels, h, w), seed, self.device)  # (1, 16, h, w)
        known = None
        if settings.mode in ("t2i", "edit"):
            latents = pack_latents(noise)  # (1, N, 64)
        else:
            clean = self.image_latents(image, settings.height, settings.width)  # (1, 16, h, w)
            latents = pack_latents(scheduler.scale_noise(clean, timesteps[:1], noise))
            if settings.mode == "inpaint":
                known = (pack_latents(clean), pack_latents(noise), self.generate_mask(mask, settings))
        latents = self._sample(latents, timesteps, scheduler, guidance, settings, (cond, uncond), known, callback,
                               progress)  # fmt: skip

        unpacked = unpack_latents(latents, h, w)  # (1, 16, h, w)
        decoded = self.vae.decode(unpacked.to(self.dtype)).float()  # (1, 3, H, W)
        record = {**settings.record(seed), "negative_prompt": settings.negative_prompt, "shift": shift,
                  "mu": None if shift is not None else mu, "sampler": settings.sampler,
                  "variant": self.variant.name}  # fmt: skip
        if settings.mode in ("i2i", "inpaint"):
            record["strength"] = strength
        frames = tensor_to_frames(decoded[:, :, None][0].cpu())  # (1, H, W, 3)
        return GenerationOutput(frames=frames, latents=unpacked[:, :, None].cpu(), settings=record)

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: FlowMatchEulerDiscreteScheduler,
        guidance: ClassifierFreeGuidance,
        settings: SamplingSettings,
        texts: tuple[dict, dict],
        known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop with true CFG renormalised per token; ``known`` (inpaint: clean and noise tokens, the
        generate mask) re-imposes the image outside the mask after each step. Returns packed latents (1, N, 64)."""
        for hook in getattr(self.transformer, "generation_hooks", ()):
            hook.begin(len(timesteps))  # step caches start fresh for every image
        cond, uncond = texts
        num_steps = len(timesteps)
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            velocity = guidance(self._denoise, latents, t.expand(1), cond, uncond, step, num_steps,
                                scale=settings.guidance_scale, renorm_dim=TOKEN_CHANNELS)  # fmt: skip
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
            if known is not None:
                latents = keep_known(latents, known, scheduler, timesteps, step)
            if callback is not None:
                callback(step, num_steps, latents)
        return latents
