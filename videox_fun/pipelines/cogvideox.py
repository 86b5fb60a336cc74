"""One CogVideoX(-Fun) pipeline for every mode: t2v, i2v, v2v, inpaint and control.

The mode only decides the conditioning channels concatenated to the noise (on the channel axis of
the transformer's (B, F, C, H, W) layout); the denoising loop, guidance and decoding are shared:

* T2V models: none (v2v starts from the noised input video, as DDIM-family pipelines do);
* I2V models: the start image's latent at frame 0, zeros after (diffusers'
  ``CogVideoXImageToVideoPipeline``; CogVideoX1.5-I2V also gets ``ofs`` = 2);
* Fun InP models: 1 mask channel + 16 masked-video latent channels, as VideoX-Fun's
  ``CogVideoXFunInpaintPipeline`` builds them (zeros when nothing is known: t2v and v2v);
* Fun Control models: the control video's latents (diffusers' ``CogVideoXFunControlPipeline``).

Samplers are diffusers' schedulers by VideoX-Fun's names, built from the folder's
``scheduler/scheduler_config.json`` (v-prediction, zero-SNR scaled-linear betas, trailing spacing).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from ..config import read_json_mapping
from ..families import INPUT_NAMES, Recognised, infer_mode, require_inputs
from ..families.cogvideox import COGVIDEOX_MODES, COGVIDEOX_SAMPLERS, MODE_NEEDS
from ..io.inputs import check_input_file
from ..io.video import tensor_to_frames
from ..models.cogvideox.text_encoder import CogVideoXTextEncoder
from ..models.cogvideox.tiny import SCHEDULER_CONFIG
from ..models.cogvideox.transformer import CogVideoXTransformer
from ..models.cogvideox.vae import CogVideoXVAE
from ..models.cogvideox.variants import CogVideoXConfig, CogVideoXSizeRules, size_rules, variant_of
from .common import (
    GenerationOutput,
    ImageLike,
    SamplingSettings,
    StepCallback,
    corrected,
    image_tensor,
    seeded_noise,
    video_tensor,
)
from .guidance import ClassifierFreeGuidance

logger = logging.getLogger(__name__)

SAMPLERS = COGVIDEOX_SAMPLERS
SCHEDULER_CLASSES: Mapping[str, type[SchedulerMixin]] = {
    "Euler": EulerDiscreteScheduler,
    "Euler A": EulerAncestralDiscreteScheduler,
    "DPM++": DPMSolverMultistepScheduler,
    "PNDM": PNDMScheduler,
    "DDIM_Origin": DDIMScheduler,
    "DDIM_Cog": CogVideoXDDIMScheduler,
    "DPM_Cog": CogVideoXDPMScheduler,
}
# CogVideoX1.5-I2V's ofs conditioning value (diffusers' CogVideoXImageToVideoPipeline).
OFS_VALUE = 2.0


def make_scheduler(name: str, config: Mapping[str, Any] | None = None) -> SchedulerMixin:
    """The scheduler VideoX-Fun calls ``name``, from a released scheduler config (default: CogVideoX-5b's)."""
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    config = {k: v for k, v in (config or SCHEDULER_CONFIG).items() if not k.startswith("_")}
    cls = SCHEDULER_CLASSES[name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def dynamic_guidance_scale(scale: float, t: torch.Tensor, num_steps: int) -> float:
    """THUDM's dynamic CFG (``use_dynamic_cfg`` of diffusers' CogVideoX pipelines), exactly as they compute it."""
    return 1 + scale * ((1 - math.cos(math.pi * ((num_steps - t.item()) / num_steps) ** 5.0)) / 2)


def v2v_timesteps(timesteps: torch.Tensor, num_steps: int, strength: float, order: int = 1) -> torch.Tensor:
    """The timesteps a ``strength`` in (0, 1] leaves (diffusers' ``get_timesteps``: int(steps x strength) run)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"denoise strength must be in (0, 1], got {strength}")
    kept = min(int(num_steps * strength), num_steps)
    if kept == 0:
        raise ValueError(f"strength {strength} x {num_steps} steps leaves no step to run: raise either")
    return timesteps[(num_steps - kept) * order :]


def resize_mask(mask: torch.Tensor, latent_size: tuple[int, int, int]) -> torch.Tensor:
    """A pixel mask (B, 1, F, H, W) -> (B, 1, F', h, w): the first frame alone to the first latent frame,
    the rest trilinearly to the others (VideoX-Fun's ``resize_mask``, the VAE's frame grouping)."""
    frames, height, width = latent_size
    first = F.interpolate(mask[:, :, :1], size=(1, height, width), mode="trilinear", align_corners=False)
    if frames == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=(frames - 1, height, width), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def add_reference_noise(video: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """VideoX-Fun's ``add_noise_to_reference_video`` with a fixed ratio: Gaussian noise of std
    ``strength`` on the known pixels of a masked video (B, 3, F, H, W); the unknown (-1) stay."""
    noise = torch.randn(video.shape, generator=generator).to(video) * strength
    return video + torch.where(video == -1, torch.zeros_like(noise), noise)


def rotary_tables(
    config: Any, latent_size: tuple[int, int], latent_frames: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 3D rotary tables (cos, sin), (L_video, head_dim) each, of a transformer config for latents of
    ``latent_size`` (h, w) and ``latent_frames``, as diffusers' CogVideoX pipelines make them (None: no RoPE)."""
    if not config.use_rotary_positional_embeddings:
        return None
    p, p_t = config.patch_size, config.patch_size_t
    grid_h, grid_w = latent_size[0] // p, latent_size[1] // p
    base_h, base_w = config.sample_height // p, config.sample_width // p
    if p_t is None:  # CogVideoX 1.0
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h),
            grid_size=(grid_h, grid_w),
            temporal_size=latent_frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(  # CogVideoX 1.5
        embed_dim=config.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_h, grid_w),
        temporal_size=(latent_frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_h, base_w),
        device=device,
    )


class CogVideoXPipeline:
    """Text/image/video-to-video generation with a CogVideoX transformer, VAE and T5 encoder."""

    def __init__(
        self,
        transformer: CogVideoXTransformer,
        vae: CogVideoXVAE,
        text_encoder: CogVideoXTextEncoder,
        scheduler_config: Mapping[str, Any] | None = None,
        config: CogVideoXConfig | None = None,
        model_name: str = "cogvideox",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler_config = dict(scheduler_config or SCHEDULER_CONFIG)
        self.config = config or CogVideoXConfig()
        self.model_name = model_name
        self.device = torch.device(device)
        self.dtype = dtype
        self.variant = variant_of(transformer.config)
        self.sizes: CogVideoXSizeRules = size_rules(transformer.config)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path | Recognised,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CogVideoXPipeline:
        """Load every component of a CogVideoX folder (or one the family already recognised), strictly."""
        if isinstance(folder, Recognised):
            recognised = folder
        else:
            from ..families import recognise

            recognised = recognise(folder)
            if recognised.family.name != "cogvideox":
                raise ValueError(f"{folder} is a {recognised.family.name} model folder, not a CogVideoX one")
        root, config = recognised.folder, recognised.config
        transformer = CogVideoXTransformer.from_pretrained(root / config.transformer_subpath, torch_dtype=dtype)
        vae = CogVideoXVAE.from_pretrained(root / config.vae_subpath, dtype=dtype)
        text_encoder = CogVideoXTextEncoder.from_pretrained(
            root / config.text_encoder_subpath, root / config.tokenizer_subpath, dtype=dtype
        )
        scheduler_path = root / config.scheduler_subpath / "scheduler_config.json"
        scheduler_config = read_json_mapping(scheduler_path, "scheduler config") if scheduler_path.is_file() else None
        pipe = cls(transformer, vae, text_encoder, scheduler_config, config, root.name, device, dtype)
        if recognised.note:
            logger.warning("%s: %s", root.name, recognised.note)
        return pipe.to(device)

    def to(self, device: str | torch.device) -> CogVideoXPipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (self.transformer, self.vae, self.text_encoder):
            module.to(self.device)
        return self

    @property
    def transformers(self) -> tuple[CogVideoXTransformer]:
        """The denoising transformer (one)."""
        return (self.transformer,)

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name, with the methods through which the pipeline calls it (offload hooks wrap these)."""
        return {
            "text_encoder": (self.text_encoder, ("encode",)),
            "transformer": (self.transformer, ("forward",)),
            "vae": (self.vae, ("encode", "decode")),
        }

    def make_scheduler(self, sampler: str) -> SchedulerMixin:
        """A fresh scheduler of ``sampler`` from this model's scheduler config."""
        return make_scheduler(sampler, self.scheduler_config)

    # -- settings ------------------------------------------------------------------------------
    def resolve_settings(
        self,
        mode: str,
        inputs: Mapping[str, Any],
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
    ) -> SamplingSettings:
        """The settings of one call: the config's defaults for what is None, checked and size-corrected."""
        defaults = self.config.defaults
        height = defaults.height if height is None else height
        width = defaults.width if width is None else width
        num_frames = defaults.num_frames if num_frames is None else num_frames
        steps = defaults.steps if steps is None else steps
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames), ("steps", steps)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        sampler = sampler or defaults.sampler
        if sampler not in SCHEDULER_CLASSES:
            raise ValueError(f"unknown sampler {sampler!r}; CogVideoX takes {', '.join(SAMPLERS)}")
        if mode not in self.variant.modes:
            raise ValueError(
                f"mode {mode!r} needs {MODE_NEEDS.get(mode, 'another model')}; the loaded model is "
                f"{self.variant.name}, serving {', '.join(self.variant.modes)}"
            )
        require_inputs(COGVIDEOX_MODES, mode, {name: inputs.get(name) for name in INPUT_NAMES}, check_input_file)
        if mode == "i2v" and self.variant.kind == "i2v" and inputs.get("end_image") is not None:
            raise ValueError(
                "a CogVideoX I2V model takes a start image only; an end image needs a CogVideoX-Fun InP model"
            )
        rules, multiple = self.sizes, self.sizes.multiple
        frames = corrected(
            "frame count", num_frames, rules.valid_frame_count(num_frames), f"of the form {rules.frame_rule()}"
        )
        if rules.max_frames is not None and frames > rules.max_frames:
            frames = corrected("frame count", frames, rules.max_frames, f"at most {rules.max_frames} for this model")
        settings = SamplingSettings(
            mode=mode,
            negative_prompt=defaults.negative_prompt if negative_prompt is None else negative_prompt,
            height=corrected("height", height, rules.valid_size(height), f"a multiple of {multiple}"),
            width=corrected("width", width, rules.valid_size(width), f"a multiple of {multiple}"),
            num_frames=frames,
            steps=steps,
            guidance_scale=defaults.guidance_scale if guidance_scale is None else guidance_scale,
            guidance_scale_2=None,  # type: ignore[arg-type]  # one transformer: no second scale
            shift=None,  # type: ignore[arg-type]  # CogVideoX's schedulers have no flow shift
            sampler=sampler,
        )
        self._check_learned_positions(settings)
        return settings

    def _check_learned_positions(self, settings: SamplingSettings) -> None:
        """CogVideoX-5b-I2V's learned position table only fits its sample size: fail before sampling."""
        config = self.transformer.config
        if not config.use_learned_positional_embeddings:
            return
        s = self.vae.spatial_compression
        sample = (config.sample_frames, config.sample_height * s, config.sample_width * s)
        if (settings.num_frames, settings.height, settings.width) != sample:
            raise ValueError(
                f"this model has learned positional embeddings for {sample[0]} frames of {sample[1]}x{sample[2]} "
                f"only; got {settings.num_frames} frames of {settings.height}x{settings.width}"
            )

    # -- inputs --------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 226, D) embeddings of the prompt and of the negative prompt."""
        text_len = self.transformer.config.max_text_seq_length
        embeds = self.text_encoder.encode([prompt, negative_prompt], max_length=text_len)  # (2, L, D)
        embeds = embeds.to(self.device, self.dtype)
        return embeds[:1], embeds[1:]

    def _video(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """(1, 3, F, H, W) in [-1, 1]."""
        return video_tensor(source, settings.num_frames, settings.height, settings.width, self.device, self.dtype)

    def _image(self, source: ImageLike, settings: SamplingSettings) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1]."""
        return image_tensor(source, settings.height, settings.width, self.device, self.dtype)

    def latent_shape(self, settings: SamplingSettings) -> tuple[int, int, int, int, int]:
        """(1, F', 16, h, w): the transformer's layout."""
        frames, height, width = self.vae.latent_shape(settings.num_frames, settings.height, settings.width)
        return (1, frames, self.vae.latent_channels, height, width)

    def build_conditions(self, inputs: Mapping[str, Any], settings: SamplingSettings, seed: int) -> dict:
        """The transformer inputs besides the noise and the text: ``condition`` (1, F', C', h, w), ``ofs``."""
        kind, mode = self.variant.kind, settings.mode
        conditions: dict[str, torch.Tensor] = {}
        if kind == "i2v":
            conditions["condition"] = self.image_latents(self._image(inputs["image"], settings), settings)
            if self.variant.ofs:
                conditions["ofs"] = torch.full((1,), OFS_VALUE, device=self.device, dtype=self.dtype)
        elif kind == "control":
            conditions["condition"] = self.vae.encode(self._video(inputs["control_video"], settings)).to(self.dtype)
        elif kind == "inp":
            video, generate = self.inpaint_source(mode, inputs, settings)
            conditions["condition"] = self.inpaint_latents(video, generate, settings, seed)
        return conditions

    def image_latents(self, image: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        """A CogVideoX I2V model's condition: the image latent (1, 1, 16, h, w) at frame 0, zeros after."""
        latent = self.vae.encode_unscaled(image[:, :, None])  # (1, 1, C, h, w)
        if getattr(self.vae.config, "invert_scale_latents", False):
            latent = latent / self.vae.scaling_factor  # CogVideoX1.5-I2V was trained so (diffusers' note)
        else:
            latent = latent * self.vae.scaling_factor
        shape = self.latent_shape(settings)
        padding = latent.new_zeros(1, shape[1] - 1, *shape[2:])
        return torch.cat([latent, padding], dim=1).to(self.dtype)  # (1, F', C, h, w)

    def inpaint_source(
        self, mode: str, inputs: Mapping[str, Any], settings: SamplingSettings
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The video (1, 3, F, H, W) a Fun InP model sees and its generate mask (1, 1, F, H, W), 1 = generate.

        i2v: the start image repeated over every frame (the end image on the last), those frames
        known, as VideoX-Fun's ``get_image_to_video_latent``; inpaint: the given video and mask
        (white = generate); t2v and v2v: None (nothing known).
        """
        if mode == "inpaint":
            video = self._video(inputs["video"], settings)
            mask = self._video(inputs["mask"], settings)  # (1, 3, F, H, W) in [-1, 1]
            return video, (mask.float().mean(dim=1, keepdim=True) >= 0).float()  # binarised at mid-grey
        if mode != "i2v":
            return None, None
        image = self._image(inputs["image"], settings)
        video = image[:, :, None].repeat(1, 1, settings.num_frames, 1, 1)  # (1, 3, F, H, W)
        generate = torch.ones(1, 1, settings.num_frames, settings.height, settings.width, device=self.device)
        generate[:, :, 0] = 0
        if inputs.get("end_image") is not None:
            video[:, :, -1] = self._image(inputs["end_image"], settings)
            generate[:, :, -1] = 0
        return video, generate

    def inpaint_latents(
        self, video: torch.Tensor | None, generate: torch.Tensor | None, settings: SamplingSettings, seed: int
    ) -> torch.Tensor:
        """A Fun InP model's 17 condition channels (1, F', 1 + 16, h, w), VideoX-Fun's layout.

        Channel 0: the known-pixel mask (1 - generate) resized to the latent grid (first frame on
        its own) times the VAE's scaling factor. Channels 1-16: latents of the video with the
        generated pixels set to -1 (known pixels noised with std ``noise_aug_strength`` when the
        transformer config sets ``add_noise_in_inpaint_model``). All zeros when nothing is known.
        """
        shape = self.latent_shape(settings)
        if generate is None or bool((generate > 0.5).all()):
            return torch.zeros(1, shape[1], shape[2] + 1, *shape[3:], device=self.device, dtype=self.dtype)
        masked = torch.where(generate < 0.5, video, torch.full_like(video, -1.0))  # (1, 3, F, H, W)
        if getattr(self.transformer.config, "add_noise_in_inpaint_model", False):
            generator = torch.Generator("cpu").manual_seed(seed + 1)
            masked = add_reference_noise(masked, self.config.noise_aug_strength, generator)
        latents = self.vae.encode(masked)  # (1, F', 16, h, w)
        known = (
            resize_mask(1.0 - generate.float(), (shape[1], *shape[3:])) * self.vae.scaling_factor
        )  # (1, 1, F', h, w)
        return torch.cat([known.permute(0, 2, 1, 3, 4).to(latents), latents], dim=2).to(self.dtype)

    def rotary_embeddings(self, settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The 3D rotary tables (cos, sin) of the 5b and 1.5 models, as diffusers' CogVideoX pipelines make them."""
        grid = settings.height // self.vae.spatial_compression, settings.width // self.vae.spatial_compression
        return rotary_tables(self.transformer.config, grid, self.latent_shape(settings)[1], self.device)

    # -- generation ----------------------------------------------------------------------------
    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """v-prediction (B, F', 16, h, w) for latents (B, F', 16, h, w) plus the mode's condition channels."""
        condition = inputs.get("condition")
        hidden = latents.to(self.dtype)
        if condition is not None:
            hidden = torch.cat([hidden, condition.to(self.dtype)], dim=2)  # (B, F', 16 + C', h, w)
        return self.transformer(
            hidden_states=hidden,
            encoder_hidden_states=inputs["encoder_hidden_states"],
            timestep=t,
            ofs=inputs.get("ofs"),
            image_rotary_emb=inputs.get("image_rotary_emb"),
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        mode: str | None = None,
        image: ImageLike | None = None,
        end_image: ImageLike | None = None,
        video: ImageLike | None = None,
        mask: ImageLike | None = None,
        control_video: ImageLike | None = None,
        ref_image: ImageLike | None = None,
        camera: str | Path | None = None,
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
        """Generate one video. ``mode`` is inferred from the inputs when not given.

        Settings left as None take the model config's defaults. ``guidance_scale_2`` (one
        transformer) and ``shift`` (no flow schedule) do not apply to CogVideoX: they are ignored
        (a value given is logged). ``ref_image`` and ``camera`` are no CogVideoX inputs: giving one fails.
        """
        inputs = {
            "image": image,
            "end_image": end_image,
            "video": video,
            "mask": mask,
            "control_video": control_video,
            "ref_image": ref_image,
            "camera": camera,
        }
        for name, value in (("guidance_scale_2", guidance_scale_2), ("shift", shift)):
            if value is not None:
                logger.info("%s=%s does not apply to CogVideoX; ignored", name, value)
        table = {name: COGVIDEOX_MODES[name] for name in self.variant.modes}
        settings = self.resolve_settings(
            mode or infer_mode(table, inputs),
            inputs,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
        )
        cond_text, uncond_text = self.encode_prompts(prompt, settings.negative_prompt)
        conditions = self.build_conditions(inputs, settings, seed)
        rotary = self.rotary_embeddings(settings)
        cond = {"encoder_hidden_states": cond_text, **conditions, "image_rotary_emb": rotary}
        uncond = {"encoder_hidden_states": uncond_text, **conditions, "image_rotary_emb": rotary}

        scheduler = self.make_scheduler(settings.sampler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        timesteps = scheduler.timesteps
        if settings.mode == "v2v":
            timesteps = v2v_timesteps(timesteps, settings.steps, strength, scheduler.order)
        noise = seeded_noise(self.latent_shape(settings), seed, self.device)  # (1, F', 16, h, w)
        if settings.mode == "v2v":
            clean = self.vae.encode(self._video(inputs["video"], settings)).float()
            latents = scheduler.add_noise(clean, noise, timesteps[:1])
        else:
            latents = noise * scheduler.init_noise_sigma
        guidance = guidance or ClassifierFreeGuidance(scale=settings.guidance_scale)
        latents = self._sample(
            latents, timesteps, scheduler, guidance, cond, uncond, settings, seed, callback, progress
        )

        decoded = self.vae.decode(latents.to(self.dtype)).float()  # (1, 3, F'', H, W)
        # An even latent count (CogVideoX 1.5) decodes to 4 frames per latent frame: keep those asked for.
        decoded = decoded[:, :, : settings.num_frames]  # (1, 3, F, H, W)
        record = {
            **settings.record(seed),
            "guidance_scale_2": None,
            "shift": None,
            "sampler": settings.sampler,
            **({"strength": strength} if settings.mode == "v2v" else {}),
        }
        latents = latents.permute(0, 2, 1, 3, 4).cpu()  # (1, 16, F', h, w), the VAE's layout as other families
        return GenerationOutput(frames=tensor_to_frames(decoded[0].cpu()), latents=latents, settings=record)

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: SchedulerMixin,
        guidance: ClassifierFreeGuidance,
        cond: dict,
        uncond: dict,
        settings: SamplingSettings,
        seed: int,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop over ``timesteps``; returns the final latents (1, F', 16, h, w)."""
        for transformer in self.transformers:
            for hook in getattr(transformer, "generation_hooks", ()):
                hook.begin(len(timesteps))  # step caches start fresh for every video
        dpm_cog = isinstance(scheduler, CogVideoXDPMScheduler)
        step_kwargs = {}
        if "generator" in inspect.signature(scheduler.step).parameters:  # ancestral / SDE steps draw noise
            step_kwargs["generator"] = torch.Generator("cpu").manual_seed(seed + 2)
        num_steps = len(timesteps)
        old_prediction = None  # DPM_Cog's previous x0 estimate
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            model_input = scheduler.scale_model_input(latents, t)
            scale = None
            if dpm_cog and settings.guidance_scale > 1:  # THUDM's dynamic CFG comes with their DPM sampler
                scale = dynamic_guidance_scale(settings.guidance_scale, t, num_steps)
            prediction = guidance(self._denoise, model_input, t.expand(1), cond, uncond, step, num_steps, scale=scale)
            if dpm_cog:
                previous_t = timesteps[step - 1] if step > 0 else None
                latents, old_prediction = scheduler.step(
                    prediction, old_prediction, t, previous_t, latents, return_dict=False, **step_kwargs
                )
            else:
                latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            latents = latents.float()
            if callback is not None:
                callback(step, num_steps, latents)
        return latents
