"""What the flow-matching image pipelines (FLUX.1, Qwen-Image, Z-Image) share: one ``__call__`` for t2i, i2i and
inpaint, as diffusers' image pipelines run them (same latents for the same weights and noise).

A family's pipeline subclasses :class:`FlowImagePipeline` and supplies the model-specific parts: its text
inputs and guidance passes (:meth:`~FlowImagePipeline.guidance_passes`), the denoiser (``_denoise``), the token
layout of its latents (:meth:`~FlowImagePipeline.pack` / :meth:`~FlowImagePipeline.unpack`, or the 2x2 tokens of
:class:`PackedFlowImagePipeline`), its sigmas and what its guidance scale means
(:meth:`~FlowImagePipeline.checked_guidance`).

* t2i (and every mode in ``noise_modes``, such as Qwen-Image's and FLUX.2's edit): pure noise;
* i2i: the image's latents noised to the first of the steps that ``strength`` leaves;
* inpaint: as i2i, and after every step the latents outside the (binarised, white = generate) mask are put
  back to the image's latents noised to the next step's level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from tqdm.auto import tqdm

from ..families import ImageSizeRules, Mode, infer_mode, require_inputs
from ..io.inputs import check_input_file
from ..io.video import read_image, tensor_to_frames
from .common import (
    GenerationOutput,
    ImageLike,
    SamplingSettings,
    StepCallback,
    corrected,
    flow_scheduler,
    flow_timesteps,
    folder_scheduler_config,
    generate_mask,
    image_tensor,
    keep_known,
    pack_latents,
    recognised_as,
    seeded_noise,
    strength_start,
    student_timesteps,
    unpack_latents,
)
from .guidance import ClassifierFreeGuidance
from .schedulers import distill_sigmas

logger = logging.getLogger(__name__)
PATCH = 2  # image tokens of both families: 2x2 latent pixels each
# (cond inputs, uncond inputs, CFG scale): what the guidance runs every step.
Passes = tuple[dict, dict, float]


def pil_image(source: ImageLike) -> Image.Image:
    """An image path, or uint8 (H, W, 3), as an RGB PIL image."""
    pixels = read_image(source) if isinstance(source, (str, Path)) else torch.as_tensor(np.asarray(source))
    return Image.fromarray(pixels.to(torch.uint8).numpy()).convert("RGB")


class FlowImagePipeline:
    """The shared sampling of a flow-matching image pipeline; subclasses fill the class attributes and hooks.

    The constructor holds what every family has (transformer, VAE, text encoder, scheduler config, folder config,
    device, dtype); a family's constructor adds its own parts. :meth:`from_pretrained` loads a folder of the
    family's diffusers layout through the class attributes and :meth:`folder_components`.
    """

    label: ClassVar[str]  # the family's name in messages ("FLUX.1")
    family: ClassVar[str]  # the registered family whose folders from_pretrained loads ("flux")
    transformer_class: ClassVar[Any]  # loaded strictly from the folder's transformer_subpath
    vae_class: ClassVar[Any]  # loaded strictly from the folder's vae_subpath
    config_class: ClassVar[type]  # the folder config (layout and defaults) when none is given
    scheduler_release: ClassVar[Mapping[str, Any]] = {}  # the release's scheduler config (a folder's own wins)
    modes: ClassVar[Mapping[str, Mode]]
    samplers: ClassVar[tuple[str, ...]]
    sizes: ClassVar[ImageSizeRules]
    # attribute -> the methods the pipeline calls (offload hooks wrap these); by default one text encoder
    component_methods: ClassVar[dict[str, tuple[str, ...]]] = {
        "text_encoder": ("encode",),
        "transformer": ("forward",),
        "vae": ("encode", "decode"),
    }
    noise_modes: ClassVar[tuple[str, ...]] = ("t2i",)  # modes that start from pure noise (no strength)
    renorm_dim: ClassVar[int | None] = None  # axis the guided prediction is renormalised along (None: not)
    # family settings a call takes by keyword (Family.settings)
    call_settings: ClassVar[tuple[str, ...]] = ("distill_timesteps",)
    transformer: torch.nn.Module
    vae: Any
    config: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    def __init__(
        self,
        transformer: torch.nn.Module,
        vae: Any,
        text_encoder: Any,
        scheduler_config: Mapping[str, Any],
        config: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        # Entries such as _class_name / _diffusers_version are the file's, not the scheduler's arguments.
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.config = config or self.config_class()
        self.device = torch.device(device)
        self.dtype = dtype

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | Path | Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Any:
        """Load every component of a folder of the family (or one the family already recognised), strictly; the
        folder config's control file too, for families with one (:meth:`control_from_config`)."""
        found = recognised_as(folder, cls.family, cls.label)
        root, config = found.folder, found.config
        pipe = cls(
            transformer=cls.transformer_class.from_pretrained(root / config.transformer_subpath, torch_dtype=dtype),
            vae=cls.vae_class.from_pretrained(root / config.vae_subpath, dtype=dtype),
            **cls.folder_components(root, config, dtype),
            scheduler_config=cls.read_scheduler_config(root, config),
            config=config,
            device=device,
            dtype=dtype,
        )
        pipe.control_from_config(root)
        return pipe.to(device)

    @classmethod
    def folder_components(cls, root: Path, config: Any, dtype: torch.dtype) -> dict[str, Any]:
        """The family's other constructor arguments read from its folder: its text encoder(s), its variant."""
        raise NotImplementedError

    @classmethod
    def read_scheduler_config(cls, root: Path, config: Any) -> dict[str, Any]:
        """The folder's scheduler config, else the release's (:attr:`scheduler_release`)."""
        return folder_scheduler_config(root, config.scheduler_subpath, cls.scheduler_release)

    def control_from_config(self, root: Path) -> None:
        """Load the folder config's control file: nothing for a family without control models."""

    # -- hooks ---------------------------------------------------------------------------------
    @property
    def variant_name(self) -> str:
        """The checkpoint's variant, for the sidecar."""
        raise NotImplementedError

    def checked_guidance(self, scale: float) -> float:
        """The guidance scale this call runs with (checked; corrected with a message where it cannot apply)."""
        raise NotImplementedError

    def guidance_passes(
        self,
        prompt: str,
        settings: SamplingSettings,
        latent_size: tuple[int, int],
        guidance: ClassifierFreeGuidance,
        inputs: Mapping[str, Any],
    ) -> Passes:
        """The conditional and unconditional transformer inputs and the CFG scale of one call (``guidance``: how
        the passes run; ``inputs``: the call's media and :attr:`call_settings` by name, for families whose
        transformer reads them)."""
        raise NotImplementedError

    def call_record(self, settings: SamplingSettings, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """What the sidecar records of a call besides the shared settings (nothing by default)."""
        return {}

    def default_guidance(self, settings: SamplingSettings) -> ClassifierFreeGuidance:
        """The guidance a call runs when the runtime gives none (batched passes)."""
        return ClassifierFreeGuidance()

    @property
    def mode_table(self) -> Mapping[str, Mode]:
        """The modes this checkpoint serves (every mode of the family unless a variant serves fewer)."""
        return self.modes

    def default_size(self, mode: str, inputs: Mapping[str, Any]) -> tuple[int, int]:
        """(height, width) of a call that gives neither: the config's defaults."""
        return self.config.defaults.height, self.config.defaults.width

    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Flow velocity of (packed) latents at scheduler timesteps ``t`` (B,) in [0, 1000]."""
        raise NotImplementedError

    def sigmas(self, steps: int) -> Sequence[float] | None:
        """The sigmas of ``steps`` steps (None: ``flow_timesteps``' float64 linspace)."""
        return None

    def sampling_sigmas(self, settings: SamplingSettings) -> Sequence[float] | None:
        """The sigmas a call samples before the shift: a DMD student's training timesteps / 1000 (``Flow_Distill``
        with ``distill_timesteps``), else :meth:`sigmas`."""
        if settings.distill_timesteps:
            return distill_sigmas(settings.steps, settings.distill_timesteps).tolist()
        return self.sigmas(settings.steps)

    def token_count(self, height: int, width: int) -> int:
        """Image tokens of (h, w) latents (2x2 latent pixels each by default), which the shift depends on."""
        return (height // PATCH) * (width // PATCH)

    def shift_mu(self, tokens: int, steps: int) -> float | None:
        """mu of the dynamic shift (None: the scheduler config's resolution-dependent one, ``calculate_shift``)."""
        return None

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents in the layout the transformer reads (unchanged by default)."""
        return latents

    def unpack(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """:meth:`pack` undone: (B, C, h, w) latents of ``height x width``."""
        return tokens

    # -- components ----------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> FlowImagePipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module, _ in self.components().values():
            module.to(self.device)
        return self

    @property
    def transformers(self) -> tuple[torch.nn.Module]:
        """The denoising transformer (one)."""
        return (self.transformer,)

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """Every model by name, with the methods through which the pipeline calls it (offload hooks wrap these)."""
        return {name: (getattr(self, name), methods) for name, methods in self.component_methods.items()}

    # -- settings ------------------------------------------------------------------------------
    def valid_side(self, name: str, value: int) -> int:
        """A height or width as a multiple of the size rule's (8x VAE, 2x2 tokens), told when corrected."""
        return corrected(name, value, self.sizes.valid_size(value), f"a multiple of {self.sizes.multiple}")

    def resolve_settings(self, mode: str, inputs: Mapping[str, Any], **given: Any) -> SamplingSettings:
        """The settings of one call: the config's defaults for what is None, checked and size-corrected."""
        defaults = self.config.defaults
        require_inputs(self.mode_table, mode, inputs, check_input_file, family_table=self.modes)
        if given.get("height") is None and given.get("width") is None:
            given["height"], given["width"] = self.default_size(mode, inputs)
        values = {name: getattr(defaults, name) if given.get(name) is None else given[name]
                  for name in ("height", "width", "num_frames", "steps", "guidance_scale", "sampler",
                               "negative_prompt")}  # fmt: skip
        if values["sampler"] not in self.samplers:
            raise ValueError(f"unknown sampler {values['sampler']!r}; {self.label} takes {', '.join(self.samplers)}")
        # A terminal shift stretches the sigmas so the last is shift_terminal: one step (sigma 1 alone) divides 0 by 0.
        fewest = 2 if self.scheduler_config.get("shift_terminal") else 1
        if values["steps"] < fewest:
            why = " (the scheduler's terminal shift)" if fewest > 1 else ""
            raise ValueError(f"steps must be at least {fewest}{why}, got {values['steps']}")
        if values["num_frames"] != 1:
            corrected("frame count", values["num_frames"], 1, f"1 ({self.label} makes images)")
        return SamplingSettings(
            mode=mode,
            negative_prompt=values["negative_prompt"] or "",
            height=self.valid_side("height", values["height"]),
            width=self.valid_side("width", values["width"]),
            num_frames=1,
            steps=values["steps"],
            guidance_scale=self.checked_guidance(float(values["guidance_scale"])),
            guidance_scale_2=None,  # type: ignore[arg-type]  # one transformer
            # None (and a folder default of 0): the scheduler config's shift
            shift=given["shift"] if given.get("shift") is not None else (defaults.shift or None),  # type: ignore[arg-type]
            sampler=values["sampler"],
            distill_timesteps=student_timesteps(
                given.get("distill_timesteps"), defaults.distill_timesteps, values["sampler"], values["steps"]
            ),
        )

    def latent_size(self, settings: SamplingSettings) -> tuple[int, int]:
        """(h, w) of the latents: the image over the VAE's compression (8)."""
        s = self.vae.spatial_compression
        return settings.height // s, settings.width // s

    def image_latents(self, source: ImageLike, height: int, width: int) -> torch.Tensor:
        """An input image's normalised latents (1, C, h, w), read at ``height x width``."""
        image = image_tensor(source, height, width, self.device, self.dtype)  # (1, 3, H, W)
        return self.vae.encode(image).float()

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        mode: str | None = None,
        image: ImageLike | None = None,
        mask: ImageLike | None = None,
        control_video: ImageLike | None = None,
        ref_image: ImageLike | Sequence[ImageLike] | None = None,
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
        **extra: Any,
    ) -> GenerationOutput:
        """Generate one image. ``mode`` is inferred from the inputs when not given; ``guidance`` carries the
        runtime's guidance settings (batched or sequential passes, CFG skip), run at the family's scale;
        ``control_video`` is a control image (the control modes of families with a control model); ``ref_image``
        one or a list of reference pictures (the edit modes of Qwen-Image-Edit-2509 and FLUX.2); ``extra`` the
        family's :attr:`call_settings`."""
        unknown = sorted(set(extra) - set(self.call_settings))
        if unknown:
            raise TypeError(f"{self.label} takes no setting {', '.join(unknown)}")
        if guidance_scale_2:
            logger.info("guidance_scale_2=%s does not apply to %s (one transformer); ignored", guidance_scale_2,
                        self.label)  # fmt: skip
        inputs = {"image": image, "mask": mask, "control_video": control_video, "ref_image": ref_image}
        settings = self.resolve_settings(
            mode or infer_mode(self.mode_table, inputs), inputs, height=height, width=width, num_frames=num_frames,
            steps=num_inference_steps, guidance_scale=guidance_scale, shift=shift, sampler=sampler,
            negative_prompt=negative_prompt, distill_timesteps=extra.pop("distill_timesteps", None),
        )  # fmt: skip
        h, w = self.latent_size(settings)
        guidance = guidance or self.default_guidance(settings)
        passes = self.guidance_passes(prompt, settings, (h, w), guidance, {**inputs, **extra})
        shift = settings.shift  # the given one, else the folder's default (None: the scheduler config's)
        scheduler = flow_scheduler(self.scheduler_config, shift)
        start = 0 if settings.mode in self.noise_modes else strength_start(settings.steps, strength)
        tokens = self.token_count(h, w)
        sigmas, mu = self.sampling_sigmas(settings), self.shift_mu(tokens, settings.steps)
        timesteps, mu = flow_timesteps(scheduler, settings.steps, tokens, start, self.device, sigmas, mu)
        noise = seeded_noise((1, self.vae.latent_channels, h, w), seed, self.device)  # (1, C, h, w)
        latents, known = self.start_latents(settings, noise, scheduler, timesteps[:1], image, mask)
        latents = self.unpack(self._sample(latents, timesteps, scheduler, guidance, passes, known, callback, progress),
                              h, w)  # fmt: skip  # (1, C, h, w)

        decoded = self.vae.decode(latents.to(self.dtype)).float()  # (1, 3, H, W)
        record = {**settings.record(seed), "shift": shift, "mu": None if shift is not None else mu,
                  "sampler": settings.sampler, "variant": self.variant_name}  # fmt: skip
        if passes[2] != 1.0:
            record["negative_prompt"] = settings.negative_prompt
        if settings.mode not in self.noise_modes:
            record["strength"] = strength
        record.update(self.call_record(settings, {**inputs, **extra}))
        frames = tensor_to_frames(decoded[:, :, None][0].cpu())  # (1, H, W, 3)
        return GenerationOutput(frames=frames, latents=latents[:, :, None].cpu(), settings=record)

    def start_latents(
        self,
        settings: SamplingSettings,
        noise: torch.Tensor,
        scheduler: FlowMatchEulerDiscreteScheduler,
        first: torch.Tensor,
        image: ImageLike | None,
        mask: ImageLike | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """The packed latents the loop starts from (noise; i2i / inpaint: the image noised to timestep ``first``),
        and for inpaint the packed (clean latents, noise, generate mask) the loop keeps outside the mask."""
        if settings.mode in self.noise_modes:
            return self.pack(noise), None
        clean = self.image_latents(image, settings.height, settings.width)  # (1, C, h, w)
        latents = self.pack(scheduler.scale_noise(clean, first, noise))
        if settings.mode != "inpaint":
            return latents, None
        generate = generate_mask(mask, settings.height, settings.width, tuple(clean.shape[-2:])).to(self.device)
        return latents, (self.pack(clean), self.pack(noise), self.pack(generate.repeat(1, clean.shape[1], 1, 1)))

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: FlowMatchEulerDiscreteScheduler,
        guidance: ClassifierFreeGuidance,
        passes: Passes,
        known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop over ``passes``; ``known`` (inpaint) re-imposes the image outside the mask after each
        step. Returns the final (packed) latents."""
        for hook in getattr(self.transformer, "generation_hooks", ()):
            hook.begin(len(timesteps))  # step caches start fresh for every image
        cond, uncond, scale = passes
        num_steps = len(timesteps)
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            # Scale 1 is one conditional pass (inside its cache branch), whatever scale the runtime set.
            velocity = guidance(self._denoise, latents, t.expand(1), cond, uncond, step, num_steps, scale=scale,
                                renorm_dim=self.renorm_dim)  # fmt: skip
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
            if known is not None:
                latents = keep_known(latents, known, scheduler, timesteps, step)
            if callback is not None:
                callback(step, num_steps, latents)
        return latents


class PackedFlowImagePipeline(FlowImagePipeline):
    """A flow image pipeline whose transformer reads the latents as 2x2 tokens (FLUX.1, Qwen-Image)."""

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h/2 * w/2, C * 4) tokens."""
        return pack_latents(latents)

    def unpack(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, h/2 * w/2, C * 4) tokens -> (B, C, h, w)."""
        return unpack_latents(tokens, height, width)
