"""One FLUX.1 pipeline for every mode: t2i, i2i and inpaint, as diffusers' ``FluxPipeline``,
``FluxImg2ImgPipeline`` and ``FluxInpaintPipeline`` compute them (same latents for the same weights and noise).

The latents (B, 16, h, w) travel packed 2x2 into tokens (B, h/2 * w/2, 64) with position ids (row, column)
per token and zeros for the text tokens. The sigmas run ``linspace(1, 1/steps, steps)`` through the folder's
flow-matching Euler scheduler, shifted by mu from the token count (resolution-dependent shift) unless a static
``shift`` is given. dev embeds the guidance scale; schnell has none. No classifier-free guidance: one pass a step.

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
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from ..config import read_json_mapping
from ..families import Recognised, infer_mode, require_inputs
from ..families.flux import FLUX_MODES, FLUX_SAMPLERS
from ..io.files import check_input_file
from ..io.video import tensor_to_frames
from ..models.flux.text_encoder import ClipTextEncoder, T5TextEncoder
from ..models.flux.tiny import SCHEDULER_CONFIGS
from ..models.flux.transformer import FluxTransformer
from ..models.flux.vae import FluxVAE
from ..models.flux.variants import PACK, SIZE_RULES, FluxConfig, variant_of
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


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // PACK, width // PACK, 3)
    ids[..., 1] = torch.arange(height // PACK)[:, None]
    ids[..., 2] = torch.arange(width // PACK)[None, :]
    return ids.reshape(-1, 3).to(device)


def valid_side(name: str, value: int) -> int:
    """A height or width as a multiple of 16 (8x VAE, 2x2 packing), told to the user when corrected."""
    return corrected(name, value, SIZE_RULES.valid_size(value), f"a multiple of {SIZE_RULES.multiple}")


def read_scheduler_config(root: Path, config: FluxConfig) -> dict[str, Any]:
    """The folder's ``scheduler/scheduler_config.json``, else the release's of the folder's variant."""
    path = root / config.scheduler_subpath / "scheduler_config.json"
    if path.is_file():
        return read_json_mapping(path, "scheduler config")
    transformer = read_json_mapping(root / config.transformer_subpath / "config.json", "transformer config")
    return SCHEDULER_CONFIGS[variant_of(transformer).name]


class FluxPipeline:
    """Text-to-image, image-to-image and inpainting with a FLUX.1 transformer, VAE, CLIP and T5."""

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
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.variant = variant_of(transformer.config)
        self.config = config or FluxConfig()
        self.text_len = self.config.text_len or self.variant.text_len
        self.device = torch.device(device)
        self.dtype = dtype

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path | Recognised, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> FluxPipeline:
        """Load every component of a FLUX.1 folder (or one the family already recognised), strictly."""
        if not isinstance(folder, Recognised):
            from ..families import recognise

            folder = recognise(folder)
            if folder.family.name != "flux":
                raise ValueError(f"{folder.folder} is a {folder.family.name} model folder, not a FLUX.1 one")
        root, config = folder.folder, folder.config
        pipe = cls(
            FluxTransformer.from_pretrained(root / config.transformer_subpath, torch_dtype=dtype),
            FluxVAE.from_pretrained(root / config.vae_subpath, dtype=dtype),
            ClipTextEncoder.from_pretrained(root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype),
            T5TextEncoder.from_pretrained(
                root / config.text_encoder_2_subpath, root / config.tokenizer_2_subpath, dtype
            ),
            read_scheduler_config(root, config),
            config,
            device,
            dtype,
        )
        return pipe.to(device)

    def to(self, device: str | torch.device) -> FluxPipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            module.to(self.device)
        return self

    @property
    def transformers(self) -> tuple[FluxTransformer]:
        """The denoising transformer (one)."""
        return (self.transformer,)

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name, with the methods through which the pipeline calls it (offload hooks wrap these)."""
        return {
            "text_encoder": (self.text_encoder, ("encode",)),
            "text_encoder_2": (self.text_encoder_2, ("encode",)),
            "transformer": (self.transformer, ("forward",)),
            "vae": (self.vae, ("encode", "decode")),
        }

    # -- settings ------------------------------------------------------------------------------
    def resolve_settings(self, mode: str, inputs: Mapping[str, Any], **given: Any) -> SamplingSettings:
        """The settings of one call: the config's defaults for what is None, checked and size-corrected."""
        defaults = self.config.defaults
        values = {name: getattr(defaults, name) if given.get(name) is None else given[name]
                  for name in ("height", "width", "num_frames", "steps", "guidance_scale", "sampler")}  # fmt: skip
        if values["sampler"] not in FLUX_SAMPLERS:
            raise ValueError(f"unknown sampler {values['sampler']!r}; FLUX.1 takes {', '.join(FLUX_SAMPLERS)}")
        if values["steps"] < 1:
            raise ValueError(f"steps must be at least 1, got {values['steps']}")
        require_inputs(FLUX_MODES, mode, inputs, check_input_file)
        if values["num_frames"] != 1:
            corrected("frame count", values["num_frames"], 1, "1 (FLUX.1 makes images)")
        if values["guidance_scale"] and not self.variant.guidance_embeds:
            name, scale = self.variant.name, values["guidance_scale"]
            logger.warning("%s has no guidance embedding: guidance %s is ignored", name, scale)
        return SamplingSettings(
            mode=mode,
            negative_prompt="",
            height=valid_side("height", values["height"]),
            width=valid_side("width", values["width"]),
            num_frames=1,
            steps=values["steps"],
            guidance_scale=values["guidance_scale"] if self.variant.guidance_embeds else 0.0,
            guidance_scale_2=None,  # type: ignore[arg-type]  # one transformer
            shift=given.get("shift"),  # type: ignore[arg-type]  # None: the resolution-dependent shift
            sampler=values["sampler"],
        )

    def latent_size(self, settings: SamplingSettings) -> tuple[int, int]:
        """(h, w) of the unpacked latents: the image over 8, even."""
        s = self.vae.spatial_compression
        return settings.height // s, settings.width // s

    # -- inputs --------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """The transformer's text inputs: T5 ``encoder_hidden_states`` (1, L, 4096), CLIP ``pooled_projections``
        (1, 768) and ``txt_ids`` (L, 3) of zeros."""
        embeds = self.text_encoder_2.encode([prompt], max_length=self.text_len).to(self.device, self.dtype)
        pooled = self.text_encoder.encode([prompt]).to(self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": txt_ids}

    def image_latents(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """An input image's normalised latents (1, 16, h, w)."""
        image = image_tensor(source, settings.height, settings.width, self.device, self.dtype)  # (1, 3, H, W)
        return self.vae.encode(image).float()

    def generate_mask(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """The packed mask (1, h/2 * w/2, 64) of latents to generate (white = generate), as diffusers' inpaint
        pipeline makes it."""
        mask = generate_mask(source, settings.height, settings.width, self.latent_size(settings)).to(self.device)
        return pack_latents(mask.repeat(1, self.vae.latent_channels, 1, 1))  # (1, h, w) -> (1, N, 64)

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

        ``guidance_scale`` is dev's embedded guidance (schnell has none). ``negative_prompt`` and
        ``guidance_scale_2`` do not apply (FLUX.1 runs no classifier-free guidance): a value given is logged.
        ``guidance`` only carries the runtime's guidance passes (one conditional pass a step here).
        """
        for name, value in (("negative_prompt", negative_prompt), ("guidance_scale_2", guidance_scale_2)):
            if value:
                logger.info("%s=%s does not apply to FLUX.1 (no classifier-free guidance); ignored", name, value)
        inputs = {"image": image, "mask": mask}
        settings = self.resolve_settings(
            mode or infer_mode(FLUX_MODES, inputs), inputs, height=height, width=width, num_frames=num_frames,
            steps=num_inference_steps, guidance_scale=guidance_scale, shift=shift, sampler=sampler,
        )  # fmt: skip
        cond = self.encode_prompt(prompt)
        h, w = self.latent_size(settings)
        cond["img_ids"] = image_ids(h, w, self.device).to(self.dtype)
        if self.variant.guidance_embeds:
            cond["guidance"] = torch.full((1,), settings.guidance_scale, device=self.device, dtype=torch.float32)

        scheduler = flow_scheduler(self.scheduler_config, shift)
        start = 0 if settings.mode == "t2i" else strength_start(settings.steps, strength)
        timesteps, mu = flow_timesteps(scheduler, settings.steps, (h // PACK) * (w // PACK), start, self.device)
        noise = seeded_noise((1, self.vae.latent_channels, h, w), seed, self.device)  # (1, 16, h, w)
        known = None
        if settings.mode == "t2i":
            latents = pack_latents(noise)  # (1, N, 64)
        else:
            clean = self.image_latents(image, settings)  # (1, 16, h, w)
            latents = pack_latents(scheduler.scale_noise(clean, timesteps[:1], noise))
            if settings.mode == "inpaint":
                known = (pack_latents(clean), pack_latents(noise), self.generate_mask(mask, settings))
        latents = self._sample(latents, timesteps, scheduler, guidance, cond, known, callback, progress)

        unpacked = unpack_latents(latents, h, w)  # (1, 16, h, w)
        decoded = self.vae.decode(unpacked.to(self.dtype)).float()  # (1, 3, H, W)
        record = {**settings.record(seed), "shift": shift, "mu": None if shift is not None else mu,
                  "sampler": settings.sampler, "variant": self.variant.name}  # fmt: skip
        if settings.mode != "t2i":
            record["strength"] = strength
        frames = tensor_to_frames(decoded[:, :, None][0].cpu())  # (1, H, W, 3)
        return GenerationOutput(frames=frames, latents=unpacked[:, :, None].cpu(), settings=record)

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: FlowMatchEulerDiscreteScheduler,
        guidance: ClassifierFreeGuidance | None,
        cond: dict,
        known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop; ``known`` (inpaint: clean and noise tokens, the generate mask) re-imposes the
        image outside the mask after each step. Returns the final packed latents (1, N, 64)."""
        for hook in getattr(self.transformer, "generation_hooks", ()):
            hook.begin(len(timesteps))  # step caches start fresh for every image
        guidance = guidance or ClassifierFreeGuidance(scale=1.0)
        num_steps = len(timesteps)
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            # Scale 1: the one conditional pass (inside its cache branch), whatever scale the runtime set.
            velocity = guidance(self._denoise, latents, t.expand(1), cond, cond, step, num_steps, scale=1.0)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
            if known is not None:
                latents = keep_known(latents, known, scheduler, timesteps, step)
            if callback is not None:
                callback(step, num_steps, latents)
        return latents
