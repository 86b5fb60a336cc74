"""The Wan family spec: loading, conditioning inputs, cache records and validation for Wan2.1 / Fun models.

Which conditioning channels a model takes is read off its config (:func:`variant_of`) and
built with the functions the inference pipeline uses (:mod:`videox_fun.pipelines.conditioning`),
so a model is trained on exactly the inputs it is sampled with. Modes:

- ``normal``: text-to-video. On an InP model the whole video is "to generate" (t2v).
- ``inpaint``: InP models; the dataset's random generate-mask per sample (first frame known
  = i2v, first + last known, boxes, brushes, time segments, everything ...).
- ``control``: Control models; the control-video latent (zeroed for 10% of samples so the
  model also works without one) and, for half the samples, the first frame as start image.
- ``control_ref``: Fun V1.1 Control; as ``control`` plus the latent of a random frame of the
  clip as the reference image (``ref_latent``), zeroed for 10% of samples.
- ``i2v``: image-to-video models that take the start image through mask + image channels (Wan2.1 /
  Wan2.2 I2V, Fun InP): every sample's first frame known.
- ``ti2v``: Wan2.2 TI2V-5B: for half the samples the first latent frame is the clean image latent
  (timestep 0 on its tokens, left out of the loss), the others text-to-video. Models that sample
  this way (:attr:`WanVariant.first_frame`, Wan2.2-Fun 5B too) hold it in ``inpaint`` / ``i2v``
  training as well, whenever a sample's first frame is known.
- ``control_camera_ref``: Control-Camera models; the camera trajectory of each clip (the entry's
  ``control_file_path`` is a RealEstate10K-style .txt, one pose per frame) as Plücker rays, and the
  first frame as the start image (through the start-image or InP channels) for 90% of the samples.
- ``vace``: VACE models; each sample's VACE context from a drawn task (text only, masked editing,
  control video) and, for some micro-batches, a subject frame in front (:mod:`.wan_vace`).
  ``--trainable_modules vace`` trains the VACE stream alone, as the releases were trained.
- ``animate`` / ``replace``: Wan2.2-Animate; the reference image as latent frame 0, pose latents, face crops,
  and for some samples the clip's first frames carried over as known, as the pipeline's segments (:mod:`.wan_animate`).

Text dropout and inpaint masks come with the decoded samples (the dataset draws them); the
other random choices are drawn from one generator per sample (see :func:`sample_generators`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ...config import ModelConfig, config_for_folder
from ...models.loading import public_config
from ...models.wan.keys import blank_clip_tokens
from ...models.wan.transformer import WanTransformer3DModel
from ...models.wan.variants import variant_for_mode, variant_of
from ...pipelines.conditioning import (
    camera_condition,
    first_frame_latent,
    held_timestep_scale,
    mask_channels,
    masked_video,
    token_timesteps,
)
from ...pipelines.vace import SPATIAL
from ...pipelines.wan import default_boundary
from ..config import TrainConfig
from ..objectives import FlowMatching
from . import Device, FamilyModels, TrainInputs, choose, on_device, register_spec, uniform
from .wan_animate import (
    animate_cache_records,
    animate_inputs,
    animate_source,
    check_animate_mode,
    check_animate_settings,
)
from .wan_reward import WanRewardHooks
from .wan_vace import VACE_FILL, vace_inputs
from .wan_vace import cache_records as vace_cache_records

logger = logging.getLogger(__name__)

# Share of samples whose control / reference / CLIP condition is zeroed, as VideoX-Fun trains.
CONDITION_DROP = 0.1
# Control modes: share of samples given their first frame as the start image.
START_IMAGE_SHARE = 0.5
# Generation mode each training mode must be able to serve.
MODE_NEEDS = {
    "normal": "t2v",
    "inpaint": "inpaint",
    "i2v": "i2v",
    "ti2v": "i2v",
    "control": "control",
    "control_ref": "control",
    "control_camera_ref": "camera",
    "vace": "vace",
    "animate": "animate",
    "replace": "replace",
    "reward": "t2v",  # prompts only: videos sampled text-to-video (:mod:`.wan_reward`)
}
# Whole-frame mask kinds (of data.masks, with weights) drawn per sample by the modes that take no dataset
# masks: i2v knows the first frame; control_camera_ref too, but for CONDITION_DROP of the samples.
MODE_MASK_KINDS = {
    "i2v": {"i2v": 1.0},
    "control_camera_ref": {"i2v": 1.0 - CONDITION_DROP, "t2v": CONDITION_DROP},
}
# Generation mode of the validation samples by training mode (the control modes sample "control").
VALIDATION_MODES = {
    "normal": "t2v",
    "inpaint": "t2v",
    "i2v": "t2v",
    "ti2v": "t2v",
    "vace": "t2v",
    "control_camera_ref": "camera",
    "reward": "t2v",
}
# Mask kinds (of data.masks) trainable from cached latents: their masked videos are encoded into the cache.
# Spatial and random-segment masks need the pixels, so inpaint training from a cache uses these three only.
CACHED_MASK_KINDS = ("t2v", "i2v", "first_last")


def _expanded_in_dim(out_dim: int, mode: str) -> int:
    """in_dim of the Fun variant that serves ``mode`` (InP = z + 4 + z, Control = 3z)."""
    return {"normal": out_dim, "inpaint": 2 * out_dim + 4, "control": 3 * out_dim, "control_ref": 3 * out_dim}[mode]


def expert_subpath(settings: ModelConfig, boundary_type: str) -> str:
    """The transformer to train, from ``--boundary_type``.

    A two-expert (Wan2.2 A14B) folder needs ``high`` (its transformer_subpath) or ``low``
    (transformer_2_subpath); a single-transformer one takes ``full``.
    """
    if not settings.transformer_2_subpath:
        if boundary_type != "full":
            raise ValueError(f"--boundary_type {boundary_type} is for two-expert (Wan2.2 A14B) models; this has one")
        return settings.transformer_subpath
    if boundary_type == "full":
        raise ValueError("this is a two-expert (Wan2.2 A14B) model: train one expert, --boundary_type high or low")
    return settings.transformer_subpath if boundary_type == "high" else settings.transformer_2_subpath


def expert_sigma_range(boundary_type: str, boundary: float) -> tuple[float, float]:
    """The noise levels an expert denoises: [boundary, 1] high-noise, [0, boundary) low-noise, else all."""
    return {"high": (boundary, 1.0), "low": (0.0, boundary)}.get(boundary_type, (0.0, 1.0))


def init_from_t2v(model: WanTransformer3DModel, mode: str) -> WanTransformer3DModel:
    """An InP / Control model for ``mode`` started from T2V weights.

    The new input channels of ``patch_embedding`` are zero, so the model initially ignores them
    and predicts what the T2V model predicts; a V1.1 ``ref_conv`` gets its default init.
    """
    variant = variant_of(model.config)
    if variant.channels:
        raise ValueError(f"--init_from_t2v starts from a T2V checkpoint; this one is already {variant.name}")
    config = public_config(model.config)
    config.update(in_dim=_expanded_in_dim(config["out_dim"], mode), add_ref_conv=mode == "control_ref")
    state = model.state_dict()
    weight = state["patch_embedding.weight"]  # (dim, z, pf, ph, pw)
    padded = weight.new_zeros(weight.shape[0], config["in_dim"], *weight.shape[2:])
    padded[:, : weight.shape[1]] = weight
    state["patch_embedding.weight"] = padded
    with torch.device("meta"):
        expanded = WanTransformer3DModel.from_config(config)
    result = expanded.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or any(not k.startswith("ref_conv.") for k in result.missing_keys):
        raise ValueError(f"cannot expand the T2V checkpoint: {result}")
    if hasattr(expanded, "ref_conv"):
        expanded.ref_conv.to_empty(device="cpu")
        expanded.ref_conv.reset_parameters()
    logger.info("initialised a %s model from T2V weights (in_dim %d -> %d)", mode, weight.shape[1], config["in_dim"])
    return expanded if weight.dtype == torch.float32 else expanded.to(weight.dtype)  # ref_conv is built in fp32


def held_inputs(
    masks: torch.Tensor | None, first_known: Sequence[bool] | None, latent_shape: Sequence[int]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What a model that holds known latents (Wan2.2 5B: TI2V, Fun-5B) trains with, as its pipeline samples:
    (known latent frames (B, F') held clean, per-latent-pixel timestep scale (B, F', h, w)), or (None, None).

    masks: generate masks (B, 1, F, H, W) of an InP model's samples (the scale is their resized mask, a whole
    known first frame held); else ``first_known`` per sample (TI2V: that frame held, the rest at t).
    latent_shape: (B, z, F', h, w).
    """
    b, _, frames, h, w = latent_shape
    if masks is not None:
        scale = held_timestep_scale(masks, (frames, h, w))
    elif first_known is not None and any(first_known):
        scale = torch.ones(b, frames, h, w)
        scale[torch.tensor(list(first_known)), 0] = 0.0
    else:
        return None, None
    known = torch.zeros(b, frames, dtype=torch.bool)
    known[:, 0] = ~scale[:, 0].flatten(1).gt(0).any(dim=1)  # a first frame known whole is held
    return (known if known.any() else None), scale


# ----------------------------------------------------------------------------------------
# Sources: decoded pixels (the frozen encoders run now) or cached latents
# ----------------------------------------------------------------------------------------
class ConditionSource(Protocol):
    """Where :meth:`WanSpec.build_inputs` gets the pieces of a micro-batch: :class:`PixelSource` encodes
    decoded pixels with the frozen encoders, :class:`CachedSource` reads latent-cache records.

    B samples; z latent channels, F' latent frames of h x w; F frames of H x W (pixels, or latents for a cache).
    Tensors are float32 on the source's device. Methods taking ``generators`` (one per sample) draw from them.
    """

    def latents(self) -> torch.Tensor:
        """Clean normalised video latents x0 (B, z, F', h, w)."""
        ...

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Text context (B, L, C) of the batch's texts, text dropout applied."""
        ...

    def inpaint(self, mode: str, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate masks (B, 1, F, H, W) (1 = to generate) and the masked-video latents (B, z, F', h, w)."""
        ...

    def control_latents(self) -> torch.Tensor:
        """Latents of the control videos (B, z, F', h, w)."""
        ...

    def frame_latents(self, frames: Sequence[int]) -> torch.Tensor:
        """Latents (B, z, h, w) of one frame per sample, frame ``frames[b]`` of sample b."""
        ...

    def ref_frames(self, generators: Sequence[torch.Generator]) -> list[int]:
        """The frame index per sample whose latent is the reference image (Fun V1.1 ``ref_latent``)."""
        ...

    def clip(self, frames: Sequence[int | None]) -> torch.Tensor:
        """CLIP tokens (B, 257, image_dim) of one frame per sample, zeros where the frame is None."""
        ...

    def camera(self) -> torch.Tensor:
        """The Control-Camera input (B, 24, F', H, W) of the clips' camera trajectories."""
        ...


class PixelSource:
    """Conditioning pieces computed from a collated pixel batch with the frozen encoders."""

    def __init__(self, spec: WanSpec, models: FamilyModels, batch: dict, device: torch.device):
        self.spec, self.models, self.batch, self.device = spec, models, batch, device
        self.pixels = batch["pixel_values"]  # (B, 3, F, H, W) in [-1, 1]
        self._latents: torch.Tensor | None = None

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, F, H, W) -> normalised latents (B, z, F', h, w), in VAE mini-batches."""
        vae = self.models.frozen["vae"]
        step = max(1, self.spec.config.vae_mini_batch)
        with torch.no_grad(), on_device(vae, self.device, self.models.low_vram):
            parts = [vae.encode(video[i : i + step].to(self.device)) for i in range(0, video.shape[0], step)]
        return torch.cat(parts).float()

    def latents(self) -> torch.Tensor:
        """The batch's video latents (B, z, F', h, w), encoded once."""
        if self._latents is None:
            self._latents = self.encode(self.pixels)
        return self._latents

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Text context (B, text_len, C) of the batch's texts (the dataset already dropped some to "")."""
        encoder = self.models.frozen["text_encoder"]
        with on_device(encoder, self.device, self.models.low_vram):
            context = encoder.encode(list(self.batch["text"]), self.spec.text_len(self.models), device=self.device)
        return context.float()

    def inpaint(self, mode: str, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate masks (B, 1, F, H, W) and the masked-video latents (B, z, F', h, w)."""
        _, _, f, h, w = self.pixels.shape
        if mode == "inpaint":
            if "mask" not in self.batch:
                raise ValueError("inpaint training needs the dataset's masks: build it with train_mode='inpaint'")
            masks = self.batch["mask"]  # (B, 1, F, H, W)
        elif mode in MODE_MASK_KINDS:
            from ..data.masks import choose_mask_kind, generate_mask

            kinds = [choose_mask_kind(f, g, MODE_MASK_KINDS[mode]) for g in generators]
            masks = torch.stack([generate_mask(k, f, h, w, g) for k, g in zip(kinds, generators, strict=True)])
        else:
            masks = torch.ones(len(generators), 1, f, h, w)
        kept = masked_video(self.pixels, masks.to(self.pixels), self.spec.masked_fill(self.models))
        return masks, self.encode(kept)

    def empty_latents(self) -> torch.Tensor:
        """Latents (B, z, F', h, w) of an all-grey video: one encode for the batch."""
        grey = torch.full_like(self.pixels[:1], VACE_FILL)  # (1, 3, F, H, W)
        return self.encode(grey).expand(self.pixels.shape[0], -1, -1, -1, -1)

    def vace_masked(
        self, rows: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's masks of samples ``rows`` (N, 1, F, H, W) and their videos greyed out under them, encoded."""
        if "mask" not in self.batch:
            raise ValueError("VACE masked editing needs the dataset's masks: build it with train_mode='vace'")
        masks = self.batch["mask"][list(rows)]  # (N, 1, F, H, W)
        return masks, self.encode(masked_video(self.pixels[list(rows)], masks.to(self.pixels), VACE_FILL))

    def control_latents(self) -> torch.Tensor:
        """The control videos (B, 3, F, H, W) encoded to latents (B, z, F', h, w)."""
        if "control_pixel_values" not in self.batch:
            raise ValueError("this mode needs control videos: give control_file_path in the metadata")
        return self.encode(self.batch["control_pixel_values"])

    def frame_latents(self, frames: Sequence[int]) -> torch.Tensor:
        """Latents (B, z, h, w) of one pixel frame per sample, encoded as an image (as the pipeline does)."""
        images = torch.stack([self.pixels[b, :, i] for b, i in enumerate(frames)])  # (B, 3, H, W)
        return self.encode(images[:, :, None])[:, :, 0]

    def ref_frames(self, generators: Sequence[torch.Generator]) -> list[int]:
        """A random pixel frame per sample, drawn from its generator."""
        return [choose(g, self.pixels.shape[2]) for g in generators]

    def clip(self, frames: Sequence[int | None]) -> torch.Tensor:
        """CLIP tokens of one frame per sample (zeros where None)."""
        b = len(frames)
        dim = self.models.transformer.config.image_dim
        chosen = [(row, i) for row, i in enumerate(frames) if i is not None]
        if not chosen:
            return blank_clip_tokens(b, dim, self.device)
        tokens = self.clip_images(torch.stack([self.pixels[row, :, i] for row, i in chosen]))  # (N, T, dim)
        out = torch.zeros(b, tokens.shape[1], dim, device=self.device)
        out[[row for row, _ in chosen]] = tokens
        return out

    def clip_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP tokens (N, T, image_dim) of images (N, 3, H, W) in [-1, 1]."""
        encoder = self.models.frozen.get("image_encoder")
        if encoder is None:
            from ...models.wan.image_encoder import missing_image_encoder_error

            raise missing_image_encoder_error()
        with on_device(encoder, self.device, self.models.low_vram):
            return encoder.encode(images, device=self.device).float()

    def camera(self) -> torch.Tensor:
        """Plücker rays of the batch's camera poses at the pixel size, packed in time (B, 24, F', H, W)."""
        return camera_input(self.batch, self.pixels.shape[-2:], self.device)


def camera_input(batch: dict, pixel_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """The ``camera`` condition (B, 24, F', H, W) of a batch's ``camera_poses`` (B, F, 19) at ``pixel_size``."""
    if "camera_poses" not in batch:
        raise ValueError(
            "control_camera_ref needs a camera trajectory per clip: give a .txt of poses as control_file_path"
        )
    from ...io.camera import CameraPose

    rows = []
    for poses in batch["camera_poses"].tolist():  # F lines of 19 numbers each
        rows.append(
            camera_condition([CameraPose.from_values(v) for v in poses], int(pixel_size[0]), int(pixel_size[1]))
        )
    return torch.cat(rows).to(device)


class CachedSource:
    """The same pieces read from latent-cache records (see :mod:`videox_fun.training.cache`)."""

    def __init__(self, spec: WanSpec, models: FamilyModels, batch: dict, device: torch.device):
        self.spec, self.models, self.batch, self.device = spec, models, batch, device

    def _get(self, name: str, why: str) -> torch.Tensor:
        if name not in self.batch:
            raise ValueError(f"the latent cache has no {name!r} ({why}); rebuild it with `videox-fun cache`")
        return self.batch[name].to(self.device).float()

    def latents(self) -> torch.Tensor:
        """The cached video latents (B, z, F', h, w)."""
        return self._get("latents", "video latents")

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Cached text context, replaced by the empty prompt's for ``text_drop_ratio`` of the samples."""
        context = self._get("context", "text embeddings")  # (B, L, C)
        empty = self._get("empty_context", "the empty prompt")  # (B, L, C)
        ratio = self.spec.config.text_drop_ratio
        keep = torch.tensor([uniform(g) >= ratio for g in generators], device=self.device).view(-1, 1, 1)
        return torch.where(keep, context, empty)

    def inpaint(self, mode: str, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """A cached mask kind per sample: its masks (B, 1, F, h, w) and masked-video latents."""
        from ..data.masks import MASK_KINDS, choose_mask_kind, generate_mask

        latents = self.latents()
        _, _, _, h, w = latents.shape
        weights = {"inpaint": {k: MASK_KINDS[k][1] for k in CACHED_MASK_KINDS}, **MODE_MASK_KINDS}.get(
            mode, {"t2v": 1.0}
        )
        masks, masked = [], []
        for row, (frames, g) in enumerate(zip(self.batch["num_frames"].tolist(), generators, strict=True)):
            kind = choose_mask_kind(frames, g, weights)
            # Whole-frame masks: built at latent resolution they give the same mask channels.
            masks.append(generate_mask(kind, frames, h, w, g))  # (1, F, h, w)
            masked.append(self._get(f"masked_latents_{kind}", f"masked video of {kind} masks")[row])
        return torch.stack(masks), torch.stack(masked)

    def control_latents(self) -> torch.Tensor:
        """The cached control-video latents (B, z, F', h, w)."""
        return self._get("control_latents", "control videos")

    def frame_latents(self, frames: Sequence[int]) -> torch.Tensor:
        """Latents (B, z, h, w) of pixel frame ``frames[b]`` of each sample: frame 0 is latent frame 0 (causal
        VAE); a VACE cache holds a few more (``ref_latents``)."""
        if not any(frames):
            return self.latents()[:, :, 0]
        if "ref_latents" not in self.batch:
            raise ValueError("the cache holds latents of the first frame only")
        indices = self.batch["ref_frame_index"].tolist()  # (B, K)
        cached = self._get("ref_latents", "reference frames")  # (B, K, z, h, w)
        return torch.stack([cached[row, indices[row].index(frame)] for row, frame in enumerate(frames)])

    def ref_frames(self, generators: Sequence[torch.Generator]) -> list[int]:
        """A cached frame per sample drawn from its generator (VACE caches), else frame 0 for every sample (no draw)."""
        if "ref_frame_index" not in self.batch:
            return [0] * len(generators)
        indices = self.batch["ref_frame_index"].tolist()
        return [row[choose(g, len(row))] for row, g in zip(indices, generators, strict=True)]

    def camera(self) -> torch.Tensor:
        """Plücker rays of the cached camera poses at the cached pixel size (B, 24, F', H, W)."""
        if "pixel_size" not in self.batch:
            raise ValueError("the latent cache has no camera poses; rebuild it with `videox-fun cache`")
        return camera_input(self.batch, self.batch["pixel_size"][0].tolist(), self.device)

    def empty_latents(self) -> torch.Tensor:
        """The cached latents of an all-grey video (B, z, F', h, w)."""
        return self._get("vace_empty", "VACE's empty source")

    def vace_masked(
        self, rows: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A cached whole-frame mask kind per sample of ``rows``: masks (N, 1, F, H, W) at pixel resolution and
        the cached latents of the videos greyed out under them."""
        from ..data.masks import choose_mask_kind, generate_mask
        from .wan_vace import CACHED_MASK_KINDS

        _, _, _, h, w = self.latents().shape
        masks, masked = [], []
        for row, g in zip(rows, generators, strict=True):
            frames = int(self.batch["num_frames"][row])
            kind = choose_mask_kind(frames, g, CACHED_MASK_KINDS)
            masks.append(generate_mask(kind, frames, h * SPATIAL, w * SPATIAL, g))  # (1, F, H, W)
            masked.append(self._get(f"vace_masked_{kind}", f"masked video of {kind} masks")[row])
        return torch.stack(masks).to(self.device), torch.stack(masked)

    def clip(self, frames: Sequence[int | None]) -> torch.Tensor:
        """The cached first-frame CLIP tokens (B, 257, image_dim), zeros where None (all zeros when not cached)."""
        b = len(frames)
        if "clip_first" not in self.batch:
            return blank_clip_tokens(b, self.models.transformer.config.image_dim, self.device)
        tokens = self._get("clip_first", "CLIP tokens")
        keep = torch.tensor([i is not None for i in frames], device=self.device).view(-1, 1, 1)
        return tokens * keep


# ----------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------
@register_spec("wan")
class WanSpec(WanRewardHooks):
    """Wan2.1 / Wan2.2 and the alibaba-pai Fun variants."""

    name = "wan"
    # The modules VideoX-Fun adapts; all have diffusers / ComfyUI names (see training/lora.py).
    lora_target_modules = ("q", "k", "v", "o", "ffn.0", "ffn.2")

    def __init__(self, config: TrainConfig):
        self.config = config

    # -- loading -----------------------------------------------------------------------------
    def load_models(self, config: TrainConfig, dtype: torch.dtype) -> FamilyModels:
        """Transformer in fp32 (the trained weights), frozen encoders in ``dtype``; all on the CPU."""
        from ...models.loading import load_into
        from ...models.wan.transformer import read_transformer_weights
        from ...registry import resolve_model
        from ...runtime.fp8 import dequantize_fp8_state

        folder = resolve_model(config.pretrained_model_name_or_path)
        settings = config_for_folder(folder, config.config_path)
        transformer = WanTransformer3DModel.from_pretrained(folder / expert_subpath(settings, config.boundary_type))
        boundary = settings.boundary if settings.boundary is not None else default_boundary(transformer)
        sigma_range = expert_sigma_range(config.boundary_type, boundary)
        if config.transformer_path:
            # Trained weights are full precision: fp8 files (ComfyUI's fp8_scaled) are widened first.
            state = dequantize_fp8_state(read_transformer_weights(config.transformer_path))
            load_into(transformer, state, source=config.transformer_path)
        if config.init_from_t2v:
            transformer = init_from_t2v(transformer, config.train_mode)
        models = FamilyModels(transformer, {}, folder, settings, low_vram=config.low_vram, sigma_range=sigma_range)
        self.check_mode(models, config.train_mode)
        if variant_of(transformer.config).animate:
            check_animate_settings(config)

        # a cache holds what the encoders made of its clips; validation and prompt-only --distill batches need them
        needs_encoders = not config.use_cached_latents or bool(config.validation_steps or config.distill_prompt_path)
        if needs_encoders:
            models.frozen.update(self.load_encoders(folder, settings, transformer, dtype))
        return models

    @staticmethod
    def load_encoders(
        folder: Path, settings: ModelConfig, transformer: WanTransformer3DModel, dtype: torch.dtype
    ) -> dict[str, nn.Module]:
        """VAE, text encoder and (for CLIP models, when shipped) the image encoder, frozen."""
        from ...models.wan.image_encoder import WanImageEncoder
        from ...models.wan.text_encoder import WanTextEncoder
        from ...models.wan.vae import WanVAE

        frozen: dict[str, nn.Module] = {
            "vae": WanVAE.from_pretrained(folder / settings.vae_subpath, dtype=dtype),
            "text_encoder": WanTextEncoder.from_pretrained(
                folder / settings.text_encoder_subpath, tokenizer_path=folder / settings.tokenizer_subpath, dtype=dtype
            ),
        }
        encoder = (
            WanImageEncoder.from_model_folder(folder, settings.image_encoder_subpath, dtype)
            if transformer.uses_clip
            else None
        )
        if encoder is not None:
            frozen["image_encoder"] = encoder
        for module in frozen.values():
            module.requires_grad_(False).eval()
        return frozen

    def check_mode(self, models: FamilyModels, mode: str) -> None:
        """Fail with what to change when the model cannot serve ``mode``."""
        if mode not in MODE_NEEDS:
            raise ValueError(f"--train_mode {mode!r} is unknown; choose one of {', '.join(MODE_NEEDS)}")
        variant = variant_of(models.transformer.config)
        if variant.animate or mode in ("animate", "replace"):
            check_animate_mode(variant, mode, models.folder)
            return
        if variant.vace or mode == "vace":
            if variant.vace and mode == "vace":
                return
            raise ValueError(
                "--train_mode vace trains Wan VACE models, and a VACE model trains with --train_mode vace (its "
                f"tasks come through the VACE context); {models.folder} is of the {variant.name} variant"
            )
        if mode == "ti2v" and (variant.channels or not variant.first_frame):
            raise ValueError(
                f"--train_mode ti2v trains Wan2.2 TI2V-5B-style models (the image held as the clean first latent "
                f"frame, no conditioning channels); {models.folder} is of the {variant.name} variant: "
                "use --train_mode i2v or inpaint for models with mask + image channels"
            )
        if mode == "i2v" and "mask" not in variant.channel_kinds:
            hint = "--train_mode ti2v" if variant.first_frame else "a Wan I2V or Fun InP model"
            raise ValueError(
                f"--train_mode i2v trains models that take the start image through mask + image channels; "
                f"{models.folder} is of the {variant.name} variant: use {hint}"
            )
        need = MODE_NEEDS[mode]
        if need in variant.modes and (mode != "control_ref" or variant.ref_image):
            return
        wanted = "a Fun V1.1 Control model (with ref_conv)" if mode == "control_ref" else variant_for_mode(need)
        hint = (
            " or start one from these T2V weights with --init_from_t2v"
            if not variant.channels and mode != "normal"
            else ""
        )
        raise ValueError(
            f"--train_mode {mode} needs {wanted}; {models.folder} is of the {variant.name} variant "
            f"(in_dim {models.transformer.config.in_dim}) serving {', '.join(variant.modes)}. "
            f"Choose a model that serves {mode}{hint}, or another --train_mode."
        )

    # -- small facts ---------------------------------------------------------------------------
    @staticmethod
    def text_len(models: FamilyModels) -> int:
        """Text tokens the transformer takes (the text encoder pads or cuts prompts to it)."""
        return models.transformer.config.text_len

    @staticmethod
    def masked_fill(models: FamilyModels) -> float:
        """The pixel value that fills masked-out regions before VAE encoding (the model config's)."""
        return models.settings.masked_fill

    def default_shift(self, models: FamilyModels) -> float:
        """The flow shift of the model config's generation defaults (training applies the same one)."""
        return models.settings.defaults.shift

    def objective(self, models: FamilyModels, config: TrainConfig) -> FlowMatching:
        """Flow matching as the config says; the model's own shift unless ``--shift`` is given, over the
        noise range of the trained expert."""
        return FlowMatching.from_config(config, self.default_shift(models), models.sigma_range)

    # -- inputs --------------------------------------------------------------------------------
    def build_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: Device
    ) -> TrainInputs:
        """Latents and conditions for one micro-batch; per-sample draws in a fixed order."""
        source_type = CachedSource if "latents" in batch else PixelSource
        source: ConditionSource = source_type(self, models, batch, torch.device(device))
        transformer = models.transformer
        variant = variant_of(transformer.config)
        kinds = variant.channel_kinds

        # Animate: its own inputs (reference, pose, face crops, carried-over frames) and, from a cache, the dataset's
        # text-dropout draws (a decoded batch's texts are dropped already)
        if variant.animate:
            return animate_inputs(animate_source(source), generators, transformer.config.motion_encoder_size)
        conditions: dict[str, torch.Tensor] = {"context": source.context(generators)}
        latents = source.latents()  # (B, z, F', h, w)
        b, _, f_lat, h, w = latents.shape
        clip_frames: list[int | None] = [None] * b

        channels: dict[str, torch.Tensor] = {}
        first_known: list[bool] | None = None  # samples whose first frame is given (held clean where the variant does)
        masks: torch.Tensor | None = None  # generate masks (B, 1, F, H, W) of InP-channel models
        if "mask" in kinds:
            masks, masked = source.inpaint(mode, generators)
            channels["mask"] = mask_channels(masks.to(latents), (h, w))
            channels["masked_video"] = masked
            # i2v-style samples (first frame known) show CLIP the first frame, as the pipeline does.
            first_known = [bool((m[:, 0] < 0.5).all()) for m in masks]
            clip_frames = [0 if known else None for known in first_known]
        elif mode == "ti2v":
            first_known = [uniform(g) < START_IMAGE_SHARE for g in generators]
        if "control" in kinds:
            keep = torch.tensor([uniform(g) >= CONDITION_DROP for g in generators], device=latents.device)
            channels["control"] = source.control_latents() * keep.view(-1, 1, 1, 1, 1)
        if "start_image" in kinds:
            given = [uniform(g) < START_IMAGE_SHARE for g in generators]
            start = first_frame_latent(latents[:, :, :1], f_lat)  # (B, z, F', h, w)
            channels["start_image"] = start * torch.tensor(given, device=latents.device).view(-1, 1, 1, 1, 1)
            clip_frames = [0 if g else None for g in given]
        if variant.channels:
            conditions["y"] = variant.assemble_y(channels)
        if mode == "vace":
            latents, conditions["vace_context"] = vace_inputs(
                source, latents, generators, self.config.vace_reference_share
            )
        if mode == "control_camera_ref":
            conditions["camera"] = source.camera()
        if mode == "control_ref":
            frames = source.ref_frames(generators)
            keep = torch.tensor([uniform(g) >= CONDITION_DROP for g in generators], device=latents.device)
            conditions["ref_latent"] = source.frame_latents(frames) * keep.view(-1, 1, 1, 1)  # (B, z, h, w)
            clip_frames = [i if k else None for i, k in zip(frames, keep.tolist(), strict=True)]
        if transformer.uses_clip:
            clip_frames = [
                i if uniform(g) >= CONDITION_DROP else None for i, g in zip(clip_frames, generators, strict=True)
            ]
            conditions["clip_fea"] = source.clip(clip_frames)
        known_frames, timestep_scale = None, None
        if variant.first_frame:
            held_masks = masks.to(latents) if masks is not None else None
            known_frames, timestep_scale = held_inputs(held_masks, first_known, latents.shape)
        return TrainInputs(latents, conditions, known_frames=known_frames, timestep_scale=timestep_scale)

    def predict(
        self, transformer: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: TrainInputs
    ) -> torch.Tensor:
        """Velocity prediction (B, z, F', h, w) for noisy latents (B, z, F', h, w) at timesteps (B,).

        With a timestep scale (models that hold known latents) each token gets t x its scale, as the pipeline
        samples them (0 on a held first frame).
        """
        if inputs.timestep_scale is not None:
            config = getattr(transformer, "module", transformer).config  # DDP wraps the model
            timesteps = token_timesteps(timesteps, inputs.timestep_scale.to(noisy.device), config.patch_size)
        return transformer(noisy, timesteps, **inputs.conditions)

    # -- latent cache --------------------------------------------------------------------------
    def encode_for_cache(
        self, models: FamilyModels, batch: dict, mode: str, device: Device
    ) -> list[dict[str, torch.Tensor]]:
        """Per-sample records: latents, trimmed text context, and what the mode's conditions need."""
        source = PixelSource(self, models, batch, torch.device(device))
        variant = variant_of(models.transformer.config)
        kinds = () if variant.animate else variant.channel_kinds  # Animate: its own records (below)
        b, _, f, h, w = source.pixels.shape
        records: dict[str, torch.Tensor] = {
            "latents": source.latents(),
            "num_frames": torch.full((b,), f, dtype=torch.int64),
        }
        encoder = models.frozen["text_encoder"]
        _, token_mask = encoder.tokenize(list(batch["text"]), self.text_len(models))
        records["context"] = source.context([])
        if "mask" in kinds:
            from ..data.masks import generate_mask

            for kind in CACHED_MASK_KINDS:  # these kinds are fixed frame patterns: the generator is unused
                masks = generate_mask(kind, f, h, w, torch.Generator()).expand(b, -1, -1, -1, -1)  # (B, 1, F, H, W)
                kept = masked_video(source.pixels, masks.to(source.pixels), self.masked_fill(models))
                if kind == "t2v":  # every pixel masked: one video for the whole batch, encoded once
                    records[f"masked_latents_{kind}"] = source.encode(kept[:1]).expand(b, -1, -1, -1, -1)
                else:
                    records[f"masked_latents_{kind}"] = source.encode(kept)
        if ("control" in kinds or mode == "vace") and "control_pixel_values" in batch:
            records["control_latents"] = source.control_latents()
        if "camera_poses" in batch:
            records["camera_poses"] = batch["camera_poses"]
            records["pixel_size"] = torch.tensor([h, w]).expand(b, 2)
        if mode == "vace":
            records.update(vace_cache_records(source, f, functools.partial(self._greyed_latents, source, f, h, w)))
        if variant.animate:
            records.update(animate_cache_records(source))
        elif models.transformer.uses_clip:
            records["clip_first"] = source.clip([0] * b)
        rows = []
        for row in range(b):
            record = {name: tensor[row].detach().cpu().contiguous() for name, tensor in records.items()}
            record["context"] = record["context"][: int(token_mask[row].sum())].contiguous()  # drop zero padding
            rows.append(record)
        return rows

    @staticmethod
    def _greyed_latents(source: PixelSource, frames: int, height: int, width: int, kind: str) -> torch.Tensor:
        """Latents (B, z, F', h, w) of the batch's videos greyed out (VACE's fill) under whole-frame mask ``kind``."""
        from ..data.masks import generate_mask

        mask = generate_mask(kind, frames, height, width, torch.Generator())[None]  # (1, 1, F, H, W): no draw
        return source.encode(masked_video(source.pixels, mask.to(source.pixels), VACE_FILL))

    def empty_context(self, models: FamilyModels, device: Device) -> torch.Tensor:
        """The text context of the empty prompt (L, C), trimmed like cached contexts."""
        encoder = models.frozen["text_encoder"]
        _, token_mask = encoder.tokenize([""], self.text_len(models))
        with on_device(encoder, torch.device(device), models.low_vram):
            context = encoder.encode([""], max_length=self.text_len(models), device=device)
        return context[0, : int(token_mask[0].sum())].float().cpu().contiguous()

    # -- outputs -------------------------------------------------------------------------------
    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """The original (Wan-AI / alibaba-pai) layout, loadable by ``WanTransformer3DModel.from_pretrained``."""
        from ...models.loading import load_into

        with torch.device("meta"):
            clean = WanTransformer3DModel.class_for_config(transformer.config).from_config(
                public_config(transformer.config)
            )
        load_into(clean, state, source="trained weights")
        clean.save_original(folder)

    def sample(
        self, models: FamilyModels, transformer: nn.Module, prompt: str, seed: int, device: Device
    ) -> tuple[torch.Tensor, float]:
        """A validation video (F, H, W, 3) uint8 and its fps, sampled by WanPipeline with the transformer being trained.

        Settings: the ``validation_*`` fields of the config, else the model config's generation defaults.
        """
        from ...pipelines.wan import WanPipeline

        config, defaults = self.config, models.settings.defaults
        pipe = WanPipeline(
            transformer,
            models.frozen["vae"],
            models.frozen["text_encoder"],
            models.frozen.get("image_encoder"),
            model_name=models.folder.name,
            masked_fill=self.masked_fill(models),
            device=device,
            dtype=models.frozen["vae"].dtype,
        )
        size = config.validation_sample_size or [defaults.height, defaults.width]
        out = pipe(
            prompt,
            negative_prompt=defaults.negative_prompt,
            mode=VALIDATION_MODES.get(config.train_mode, "control"),
            control_video=config.validation_control_video if config.train_mode != "control_camera_ref" else None,
            camera=config.validation_control_video if config.train_mode == "control_camera_ref" else None,
            ref_image=config.validation_image if config.train_mode == "control_ref" else None,
            height=size[0],
            width=size[-1],
            num_frames=config.validation_num_frames or defaults.num_frames,
            num_inference_steps=config.validation_inference_steps or defaults.steps,
            guidance_scale=defaults.guidance_scale,
            shift=defaults.shift,
            sampler=defaults.sampler,
            seed=seed,
            progress=False,
        )
        return out.frames, defaults.fps
