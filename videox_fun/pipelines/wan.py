"""One Wan pipeline for every mode: t2v, i2v, flf2v, v2v, inpaint, control, camera, and VACE's r2v and vace.

The mode only decides how the conditioning channels ``y`` (and CLIP tokens, the camera rays,
the reference latent or the VACE context) are built; the denoising loop, guidance and decoding
are shared. Which channels exist is read off the transformer's config (:func:`variant_of`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..config import FOLDER_CONFIG_NAME, ModelConfig, config_for_folder
from ..families import INPUT_NAMES, Mode, SizeRules, infer_mode, require_inputs
from ..families.wan import WAN_MODES, with_release_defaults
from ..io.camera import camera_poses, fit_num_frames
from ..io.inputs import check_input_file
from ..io.video import frames_to_tensor, read_image, tensor_to_frames
from ..models.wan.keys import blank_clip_tokens
from ..models.wan.variants import EXPERT_BOUNDARIES, variant_for_mode, variant_of
from .common import (
    GenerationOutput,
    ImageLike,
    SamplingSettings,
    StepCallback,
    corrected,
    image_tensor,
    seeded_noise,
    student_timesteps,
    video_tensor,
)
from .conditioning import (
    camera_condition,
    first_frame_latent,
    frame_generate_mask,
    held_timestep_scale,
    mask_channels,
    masked_video,
    token_timesteps,
)
from .guidance import ClassifierFreeGuidance, Denoiser
from .schedulers import NUM_TRAIN_TIMESTEPS, make_scheduler, start_index
from .vace import compose_source, mask_from_video, reference_canvas, vace_context

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from ..models.wan.image_encoder import WanImageEncoder
    from ..models.wan.text_encoder import WanTextEncoder
    from ..models.wan.transformer import WanTransformer3DModel
    from ..models.wan.vae import WanVAE
    from ..models.wan.variants import WanVariant

logger = logging.getLogger(__name__)


def valid_size(value: int, multiple: int = 16) -> int:
    """The nearest multiple of ``multiple`` (at least one multiple)."""
    return SizeRules(multiple=multiple).valid_size(value)


def valid_frame_count(frames: int, factor: int = 4) -> int:
    """The nearest count of the form factor*k + 1."""
    return SizeRules(frame_factor=factor).valid_frame_count(frames)


class WanPipeline:
    """Text/image/video-to-video generation with a Wan transformer, VAE and text (+ image) encoder."""

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: WanVAE,
        text_encoder: WanTextEncoder,
        image_encoder: WanImageEncoder | None = None,
        model_name: str = "wan",
        masked_fill: float = -1.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        transformer_2: WanTransformer3DModel | None = None,
        boundary: float | None = None,
    ):
        self.transformer = transformer
        # Wan2.2 A14B: ``transformer`` is the high-noise expert, ``transformer_2`` the low-noise one.
        self.transformer_2 = transformer_2
        self.boundary = boundary if transformer_2 is None or boundary is not None else default_boundary(transformer)
        self.vae = vae
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.model_name = model_name
        self.masked_fill = masked_fill
        self.device = torch.device(device)
        self.dtype = dtype
        self.variant = variant_of(transformer.config)
        self.config = ModelConfig()
        # Latents of fully masked videos (one constant colour), by shape: every text-to-video
        # call of an InP model at one size conditions on the same one, so it is encoded once.
        self._blank_latents: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        config: ModelConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> WanPipeline:
        """Load every component of a model folder (civitai or diffusers layout, see :class:`ModelConfig`).

        ``folder`` may also be a name the CLI's ``--model`` takes: a folder under
        ``models/Diffusion_Transformer/`` or a built-in model (``Wan2.1-Fun-Tiny-InP``...).
        """
        from ..models.wan.image_encoder import WanImageEncoder
        from ..models.wan.text_encoder import WanTextEncoder
        from ..models.wan.transformer import WanTransformer3DModel
        from ..models.wan.vae import WanVAE

        if not Path(folder).is_dir():
            from ..registry import resolve_model

            folder = resolve_model(folder)
        folder = Path(folder)
        layout_only = config is None and not (folder / FOLDER_CONFIG_NAME).is_file()
        config = config or config_for_folder(folder)
        transformer = WanTransformer3DModel.from_pretrained(folder / config.transformer_subpath, torch_dtype=dtype)
        if layout_only:  # no config names the defaults: the variant's released ones (VACE's)
            config = with_release_defaults(config, transformer.config)
        transformer_2 = (
            WanTransformer3DModel.from_pretrained(folder / config.transformer_2_subpath, torch_dtype=dtype)
            if config.transformer_2_subpath
            else None
        )
        vae = WanVAE.from_pretrained(folder / config.vae_subpath, dtype=dtype)
        text_encoder = WanTextEncoder.from_pretrained(
            folder / config.text_encoder_subpath, tokenizer_path=folder / config.tokenizer_subpath, dtype=dtype
        )
        image_encoder = (
            WanImageEncoder.from_model_folder(folder, config.image_encoder_subpath, dtype)
            if transformer.uses_clip
            else None
        )
        pipe = cls(
            transformer,
            vae,
            text_encoder,
            image_encoder,
            model_name=folder.name,
            masked_fill=config.masked_fill,
            device=device,
            dtype=dtype,
            transformer_2=transformer_2,
            boundary=config.boundary,
        )
        pipe.config = config
        warn_on_masked_fill(folder, config, pipe.variant)
        return pipe.to(device)

    def to(self, device: str | torch.device) -> WanPipeline:
        """Move every component to ``device``."""
        self.device = torch.device(device)
        for module in (*self.transformers, self.vae, self.text_encoder, self.image_encoder):
            if module is not None:
                module.to(self.device)
        return self

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """The pipeline's models by name, with the methods through which the pipeline calls each."""
        found = {
            "text_encoder": (self.text_encoder, ("encode",)),
            "transformer": (self.transformer, ("forward",)),
            **({"transformer_2": (self.transformer_2, ("forward",))} if self.transformer_2 is not None else {}),
            "vae": (self.vae, ("encode", "decode")),
        }
        if self.image_encoder is not None:
            found["image_encoder"] = (self.image_encoder, ("encode",))
        return found

    @property
    def transformers(self) -> tuple:
        """The denoising transformers: one, or the high- and low-noise experts of Wan2.2 A14B."""
        return (self.transformer,) if self.transformer_2 is None else (self.transformer, self.transformer_2)

    def expert_for(self, t: torch.Tensor) -> WanTransformer3DModel:
        """The transformer that denoises at timestep ``t`` (the low-noise expert below the boundary)."""
        # max: with per-token timesteps (TI2V) the conditioning frame's tokens sit at 0.
        if self.transformer_2 is None or float(t.max()) >= self.boundary * NUM_TRAIN_TIMESTEPS:
            return self.transformer
        return self.transformer_2

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: VAE compression x patch size (16 for Wan2.1, 32 for Wan2.2)."""
        return self.vae.spatial_compression * self.transformer.config.patch_size[1]

    # -- inputs --------------------------------------------------------------------------
    def mode_table(self) -> dict[str, Mode]:
        """The family's modes that this checkpoint serves."""
        return {name: mode for name, mode in WAN_MODES.items() if name in self.variant.modes}

    def _check_mode(self, mode: str) -> None:
        if mode not in self.variant.modes:
            raise ValueError(
                f"mode {mode!r} needs {variant_for_mode(mode)}; the loaded model is of the "
                f"{self.variant.name} variant, serving {', '.join(self.variant.modes)}"
            )
        if mode in ("i2v", "flf2v") and self.transformer.uses_clip and self.image_encoder is None:
            from ..models.wan.image_encoder import missing_image_encoder_error

            raise missing_image_encoder_error()

    def _video_tensor(self, source: ImageLike, num_frames: int, height: int, width: int) -> torch.Tensor:
        """A video (path or uint8 (F, H, W, 3)) -> (1, 3, F, H, W) in [-1, 1], cut or padded to F frames."""
        return video_tensor(source, num_frames, height, width, self.device, self.dtype)

    def _image_tensor(self, source: ImageLike, height: int, width: int) -> torch.Tensor:
        """An image -> (1, 3, H, W) in [-1, 1]."""
        return image_tensor(source, height, width, self.device, self.dtype)

    def _encode_prompts(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = self.transformer.config.text_len
        embeds = self.text_encoder.encode([prompt, negative_prompt], max_length=text_len, device=self.device)
        return embeds[:1].to(self.dtype), embeds[1:].to(self.dtype)

    def _clip_tokens(self, image: torch.Tensor | None) -> torch.Tensor | None:
        """CLIP tokens (1, 257, 1280) of the start image, zeros without one (as the Fun releases train)."""
        if not self.transformer.uses_clip:
            return None
        if image is None:
            return blank_clip_tokens(1, self.transformer.config.image_dim, self.device, self.dtype)
        if self.image_encoder is None:
            from ..models.wan.image_encoder import missing_image_encoder_error

            raise missing_image_encoder_error()
        return self.image_encoder.encode(image).to(self.dtype)

    def _inpaint_channels(self, video: torch.Tensor, generate_mask: torch.Tensor, latent_hw: tuple[int, int]) -> dict:
        """mask (4 ch) + masked-video latent (z ch) for InP variants."""
        kept = masked_video(video, generate_mask.to(video), self.masked_fill)
        return {
            "mask": mask_channels(generate_mask, latent_hw).to(self.device, self.dtype),
            "masked_video": self._encode_masked(kept, nothing_known=bool(generate_mask.all())),
        }

    def _encode_masked(self, kept: torch.Tensor, nothing_known: bool) -> torch.Tensor:
        """The latent of a masked video (1, 3, F, H, W); a fully masked one is encoded once per shape."""
        if not nothing_known:
            return self.vae.encode(kept).to(self.dtype)
        key = (id(self.vae), tuple(kept.shape), self.masked_fill, kept.dtype, str(kept.device))
        if key not in self._blank_latents:
            self._blank_latents[key] = self.vae.encode(kept).to(self.dtype)
        return self._blank_latents[key]

    def build_conditions(self, mode: str, inputs: dict, num_frames: int, height: int, width: int) -> dict:
        """The model inputs besides the latents for one mode: y, clip_fea, camera, ref_latent, vace_context (and
        first_frame, reference_frames: what the sampling loop holds or drops)."""
        if self.variant.vace:
            return self._vace_conditions(mode, inputs, num_frames, height, width)
        image = self._optional_image(inputs.get("image"), height, width)
        conditions: dict[str, torch.Tensor] = {}
        if self.variant.first_frame and image is not None:
            conditions["first_frame"] = self.vae.encode(image[:, :, None]).float()  # (1, z, 1, h, w)
        elif self.variant.first_frame and mode == "inpaint":
            conditions.update(self._held_inpaint(inputs, num_frames, height, width))
        if self.variant.channels:
            channels = self._y_channels(mode, inputs, image, num_frames, height, width)
            conditions["y"] = self.variant.assemble_y(channels)
        ref_image = self._optional_image(inputs.get("ref_image"), height, width)
        # CLIP sees the reference image when there is one, else the start image (VideoX-Fun's control
        # predict script; its control_ref training shows CLIP the reference frame too).
        clip = self._clip_tokens(ref_image if ref_image is not None else image)
        if clip is not None:
            conditions["clip_fea"] = clip
        if ref_image is not None:
            if not self.variant.ref_image:
                raise ValueError("a reference image needs a Fun V1.1 Control model (with ref_conv)")
            conditions["ref_latent"] = self.vae.encode(ref_image[:, :, None])[:, :, 0].to(self.dtype)  # (1, z, h, w)
        elif self.variant.ref_image:
            # No reference: an all-zero reference latent, so its tokens are there (VideoX-Fun's control
            # pipeline does this, and its training zeroes the reference rather than dropping it).
            _, latent_height, latent_width = self.vae.latent_shape(num_frames, height, width)
            conditions["ref_latent"] = torch.zeros(
                1, self.vae.z_dim, latent_height, latent_width, device=self.device, dtype=self.dtype
            )
        if mode == "camera":
            poses = fit_num_frames(camera_poses(inputs["camera"], num_frames), num_frames)
            conditions["camera"] = camera_condition(poses, height, width).to(self.device, self.dtype)
        return conditions

    def _held_inpaint(self, inputs: dict, num_frames: int, height: int, width: int) -> dict:
        """What a 16x-VAE model (Wan2.2-Fun 5B) holds in inpaint mode: the video's first frame when the mask
        keeps it whole (``first_frame``), else the mask's per-token ``timestep_scale`` (1, F', h, w)."""
        video, generate = self._inpaint_video(inputs, num_frames, height, width)
        scale = held_timestep_scale(generate, self.vae.latent_shape(num_frames, height, width))
        if not scale[:, 0].any():  # the first frame is known whole: held clean, as i2v holds its image
            return {"first_frame": self.vae.encode(video[:, :, :1]).float()}  # (1, z, 1, h, w)
        return {"timestep_scale": scale}

    def _vace_conditions(self, mode: str, inputs: dict, num_frames: int, height: int, width: int) -> dict:
        """The VACE context (1, 96, R + F', h, w) of the inputs, and R, the reference frames in front of it."""
        load_video = functools.partial(self._video_tensor, num_frames=num_frames, height=height, width=width)
        video, mask, control = (inputs.get(name) for name in ("video", "mask", "control_video"))
        if mode == "v2v":  # the video starts the latents (denoise strength): the context is text-to-video's
            video = None
        frames, generate = compose_source(
            num_frames,
            height,
            width,
            video=load_video(video) if video is not None else None,
            mask=mask_from_video(load_video(mask)) if mask is not None else None,
            control=load_video(control) if control is not None else None,
            first=self._optional_image(inputs.get("image"), height, width),
            last=self._optional_image(inputs.get("end_image"), height, width),
        )
        references = [reference_canvas(image, height, width) for image in self._reference_images(inputs)]
        context = vace_context(self.vae, frames.to(self.device), generate.to(self.device), references)
        return {"vace_context": context.to(self.dtype), "reference_frames": len(references)}

    def _reference_images(self, inputs: dict) -> list[torch.Tensor]:
        """The reference (subject) images, one or a list, each (1, 3, H0, W0) in [-1, 1] at its own size."""
        given = inputs.get("ref_image")
        if given is None:
            return []
        images = list(given) if isinstance(given, (list, tuple)) else [given]
        tensors = []
        for image in images:
            check_input_file("ref_image", image)  # a list's files were not checked with the request
            pixels = read_image(image) if isinstance(image, (str, Path)) else torch.as_tensor(image)  # (H0, W0, 3)
            tensors.append(frames_to_tensor(pixels[None]).transpose(0, 1).to(self.device))  # (1, 3, H0, W0)
        return tensors

    def _optional_image(self, source: ImageLike | None, height: int, width: int) -> torch.Tensor | None:
        """An input image as (1, 3, H, W) in [-1, 1], or None when not given."""
        return self._image_tensor(source, height, width) if source is not None else None

    def _y_channels(
        self, mode: str, inputs: dict, image: torch.Tensor | None, num_frames: int, height: int, width: int
    ) -> dict[str, torch.Tensor]:
        """Each conditioning channel kind the variant has, (1, width, F', h, w), from the mode's inputs."""
        num_latent_frames, latent_height, latent_width = self.vae.latent_shape(num_frames, height, width)
        latent_hw = (latent_height, latent_width)
        zeros = functools.partial(torch.zeros, device=self.device, dtype=self.dtype)
        kinds = self.variant.channel_kinds
        channels: dict[str, torch.Tensor] = {}
        if "mask" in kinds:
            video, generate = self._inpaint_source(mode, inputs, image, num_frames, height, width)
            channels.update(self._inpaint_channels(video, generate, latent_hw))
        if "control" in kinds:
            control = inputs.get("control_video")
            channels["control"] = (
                self.vae.encode(self._video_tensor(control, num_frames, height, width)).to(self.dtype)
                if control is not None
                else zeros(1, self.vae.z_dim, num_latent_frames, *latent_hw)
            )
        if "start_image" in kinds:
            start = (
                self.vae.encode(image[:, :, None]).to(self.dtype)
                if image is not None
                else zeros(1, self.vae.z_dim, 1, *latent_hw)
            )
            channels["start_image"] = first_frame_latent(start, num_latent_frames)
        return channels

    def _inpaint_video(
        self, inputs: dict, num_frames: int, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inpaint mode's video (1, 3, F, H, W) and its generate mask (1, 1, F, H, W) from the mask video."""
        video = self._video_tensor(inputs["video"], num_frames, height, width)
        mask = self._video_tensor(inputs["mask"], num_frames, height, width)
        return video, (mask.mean(dim=1, keepdim=True) > 0).float()  # white (> 0 in [-1, 1]) = generate

    def _inpaint_source(
        self, mode: str, inputs: dict, image: torch.Tensor | None, num_frames: int, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The video (1, 3, F, H, W) an InP model sees and its generate mask (1, 1, F, H, W), 1 = generate.

        inpaint: the given video and mask; otherwise a blank video with the start / end images
        placed, and those frames known.
        """
        if mode == "inpaint":
            return self._inpaint_video(inputs, num_frames, height, width)
        video = torch.zeros(1, 3, num_frames, height, width, device=self.device, dtype=self.dtype)
        known = []
        if image is not None:
            video[:, :, 0], known = image, [0]
        end_image = self._optional_image(inputs.get("end_image"), height, width)
        if end_image is not None:
            video[:, :, -1] = end_image
            known.append(num_frames - 1)
        return video, frame_generate_mask(num_frames, height, width, tuple(known)).to(self.device)

    # -- generation ----------------------------------------------------------------------
    def _expert_settings(self, guidance_scale_2: float) -> dict:
        """What a two-expert run adds to the settings record."""
        if self.transformer_2 is None:
            return {}
        return {"guidance_scale_2": guidance_scale_2, "boundary": self.boundary}

    def _denoise(self, latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
        return self.expert_for(t)(latents.to(self.dtype), t, **inputs).float()

    def _held_denoiser(self, first: torch.Tensor | None, scale: torch.Tensor | None) -> Denoiser:
        """A denoiser with per-token timesteps, as Wan2.2 TI2V and VideoX-Fun's 5B pipelines sample.

        ``first`` (1, z, 1, h, w): the first latent frame is held at it, its tokens at timestep 0 (i2v);
        else ``scale`` (1, F', h, w) scales each token's timestep (a spatial inpaint mask).
        """
        patch_size = self.transformer.config.patch_size

        def denoise(latents: torch.Tensor, t: torch.Tensor, inputs: dict) -> torch.Tensor:
            weights = scale
            if first is not None:
                latents = with_first_frame(latents, first)
                weights = torch.ones_like(latents[:1, 0])  # (1, F', h, w)
                weights[:, 0] = 0
            return self._denoise(latents, token_timesteps(t, weights, patch_size), inputs)

        return denoise

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
        vace_context_scale: float | list[float] | None = None,
        distill_timesteps: Sequence[int] | str | None = None,
    ) -> GenerationOutput:
        """Generate one video. ``mode`` is inferred from the inputs when not given.

        Settings left as None take the model config's defaults (what the model was trained for).
        ``ref_image`` may be a list (VACE: several subjects); ``vace_context_scale`` (VACE only, default
        1) scales the VACE hints, one number or one per VACE layer; ``distill_timesteps`` (``Flow_Distill``) the
        timesteps a DMD student was trained on (default the folder's, else the uniform grid).
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
        given = {
            "negative_prompt": negative_prompt,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "guidance_scale_2": guidance_scale_2,
            "shift": shift,
            "sampler": sampler,
            "distill_timesteps": distill_timesteps,
        }
        settings = self.resolve_settings(mode or infer_mode(self.mode_table(), inputs), inputs, **given)
        cond_text, uncond_text = self._encode_prompts(prompt, settings.negative_prompt)
        conditions = self.build_conditions(settings.mode, inputs, settings.num_frames, settings.height, settings.width)
        first_frame = conditions.pop("first_frame", None)  # held by the loop below, not a transformer input
        scale = conditions.pop("timestep_scale", None)  # a spatial inpaint mask's, per token (16x-VAE models)
        reference_frames = conditions.pop("reference_frames", 0)  # VACE: latent frames dropped after sampling
        conditions.update(self._vace_scale(vace_context_scale))
        cond = {"context": cond_text, **conditions}
        uncond = {"context": uncond_text, **conditions}

        scheduler = make_scheduler(settings.sampler, settings.shift, distill_timesteps=settings.distill_timesteps)
        scheduler.set_timesteps(settings.steps, device=self.device)
        first = start_index(settings.steps, strength) if settings.mode == "v2v" else 0
        scheduler.set_begin_index(first)
        latents = self._initial_latents(settings, seed, scheduler, first, video, reference_frames)
        held = first_frame is not None or scale is not None
        denoise = self._held_denoiser(first_frame, scale) if held else self._denoise
        guidance = guidance or ClassifierFreeGuidance(scale=settings.guidance_scale)
        latents = self._sample(latents, scheduler.timesteps[first:], scheduler, denoise, guidance, cond, uncond,
                               settings, callback, progress)  # fmt: skip
        if first_frame is not None:
            latents = with_first_frame(latents, first_frame)
        latents = latents[:, :, reference_frames:]

        decoded = self.vae.decode(latents.to(self.dtype)).float()  # (1, 3, F, H, W)
        record = {
            **settings.record(seed),
            **self._expert_settings(settings.guidance_scale_2),
            **({"vace_context_scale": cond["vace_context_scale"]} if self.variant.vace else {}),
            "shift": settings.shift,
            "sampler": settings.sampler,
        }
        return GenerationOutput(frames=tensor_to_frames(decoded[0].cpu()), latents=latents.cpu(), settings=record)

    def resolve_settings(
        self,
        mode: str,
        inputs: dict[str, ImageLike | str | None],
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        distill_timesteps: Sequence[int] | str | None = None,
    ) -> SamplingSettings:
        """The settings of one call: the config's defaults for what is None, checked and size-corrected.

        Fails on a mode this model cannot run, missing or unused inputs, and values below 1; sizes
        and frame counts the VAE and patches cannot take are corrected with a warning.
        """
        defaults = self.config.defaults
        height = defaults.height if height is None else height
        width = defaults.width if width is None else width
        num_frames = defaults.num_frames if num_frames is None else num_frames
        steps = defaults.steps if steps is None else steps
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {steps}")
        guidance_scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        if guidance_scale_2 is None:
            guidance_scale_2 = defaults.guidance_scale_2 if defaults.guidance_scale_2 is not None else guidance_scale
        self._check_mode(mode)
        require_inputs(WAN_MODES, mode, {name: inputs.get(name) for name in INPUT_NAMES}, check_input_file)
        multiple = self.size_multiple
        return SamplingSettings(
            mode=mode,
            negative_prompt=defaults.negative_prompt if negative_prompt is None else negative_prompt,
            height=corrected("height", height, valid_size(height, multiple), f"a multiple of {multiple}"),
            width=corrected("width", width, valid_size(width, multiple), f"a multiple of {multiple}"),
            num_frames=corrected("frame count", num_frames, valid_frame_count(num_frames), "of the form 4k+1"),
            steps=steps,
            guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2,
            shift=defaults.shift if shift is None else shift,
            sampler=sampler or defaults.sampler,
            distill_timesteps=student_timesteps(
                distill_timesteps, defaults.distill_timesteps, sampler or defaults.sampler, steps
            ),
        )

    def _vace_scale(self, scale: float | list[float] | None) -> dict:
        """The transformer's ``vace_context_scale`` input (1 unless given); a clear error on a model without VACE."""
        if not self.variant.vace:
            if scale is not None:
                raise ValueError(
                    f"vace_context_scale is a VACE setting; the loaded model is of the {self.variant.name} variant"
                )
            return {}
        return {"vace_context_scale": 1.0 if scale is None else scale}

    def _initial_latents(
        self,
        settings: SamplingSettings,
        seed: int,
        scheduler: SchedulerMixin,
        first: int,
        video: ImageLike | None,
        reference_frames: int = 0,
    ) -> torch.Tensor:
        """Seeded noise (1, z, R + F', h, w) with R VACE reference frames in front; for v2v the input video's
        latents noised to the first step's sigma."""
        frames, height, width = self.vae.latent_shape(settings.num_frames, settings.height, settings.width)
        shape = (1, self.vae.z_dim, reference_frames + frames, height, width)
        latents = seeded_noise(shape, seed, self.device)
        if settings.mode != "v2v":
            return latents
        pixels = self._video_tensor(video, settings.num_frames, settings.height, settings.width)
        clean = self.vae.encode(pixels).float()
        sigma = scheduler.sigmas[first].to(self.device)
        return (1.0 - sigma) * clean + sigma * latents

    def _sample(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        scheduler: SchedulerMixin,
        denoise: Denoiser,
        guidance: ClassifierFreeGuidance,
        cond: dict,
        uncond: dict,
        settings: SamplingSettings,
        callback: StepCallback | None,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop over ``timesteps``: guided velocity, scheduler step; returns the final latents."""
        for transformer in self.transformers:
            for hook in getattr(transformer, "generation_hooks", ()):
                hook.begin(len(timesteps))  # step caches start fresh for every video
        for step, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
            t_batch = t.expand(1).to(self.device, torch.float32)
            scale = None  # the guidance's own
            if self.transformer_2 is not None:  # each expert has its own guidance scale
                high = self.expert_for(t_batch) is self.transformer
                scale = settings.guidance_scale if high else settings.guidance_scale_2
            velocity = guidance(denoise, latents, t_batch, cond, uncond, step, len(timesteps), scale=scale)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(step, len(timesteps), latents)
        return latents


def warn_on_masked_fill(folder: Path, config: ModelConfig, variant: WanVariant) -> None:
    """Warn when a Fun InP-looking folder runs with Wan-AI's zero fill of unknown frames.

    The two releases share one architecture, so the config decides; VideoX-Fun users pass its
    ``wan_civitai.yaml`` to Fun models out of habit. Only a warning: the folder name is a hint.
    """
    inpaint = "masked_video" in variant.channel_kinds
    if inpaint and config.masked_fill == 0.0 and "fun" in folder.name.lower():
        logger.warning(
            "%s looks like a Wan2.1-Fun release, but this config fills unknown frames with 0 (Wan-AI I2V); "
            "the Fun InP models were trained with -1: use config/wan2.1/wan_fun_civitai.yaml",
            folder.name,
        )


def with_first_frame(latents: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """``latents`` (B, z, F, h, w) with its first frame replaced by ``first`` (1, z, 1, h, w)."""
    return torch.cat([first.to(latents).expand(latents.shape[0], -1, -1, -1, -1), latents[:, :, 1:]], dim=2)


def default_boundary(transformer: WanTransformer3DModel) -> float:
    """The released Wan2.2 A14B boundary for a high-noise expert: 0.900 for I2V, 0.875 for T2V."""
    return EXPERT_BOUNDARIES["i2v" if variant_of(transformer.config).channels else "t2v"]
