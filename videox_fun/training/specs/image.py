"""Training specs of the flow-matching image families: FLUX.1, Z-Image and Qwen-Image.

One base, :class:`FlowImageSpec`, serves all three: a sample is one image (the dataset's ``"type": "image"``
entries, batched by aspect-ratio bucket), its latents are the family VAE's normalised latents (B, 16, h, w), kept
as one latent frame (B, 16, 1, h, w) as the trainer and the objectives expect. The family's own pipeline
(:mod:`videox_fun.pipelines.flux` / ``zimage`` / ``qwenimage``) is built around the loaded models and supplies
what inference does, so that training sees exactly the inputs sampling gives the transformer: its text encoding,
its token layout (FLUX.1 and Qwen-Image pack 2x2 latent pixels into a token; Z-Image patchifies itself) and its
transformer call (``_denoise``: the timestep convention, Z-Image's negated velocity). The thin per-family specs
below add the text and image-shape inputs of their transformer.

Objective: flow matching (x_t = (1 - s) x0 + s noise, target noise - x0) with the noise levels shifted as the
family's scheduler config shifts them at inference: a static ``shift`` (Z-Image 3, FLUX.1-schnell 1), or, where
the config shifts dynamically (FLUX.1-dev, Qwen-Image), the resolution-dependent shift of the batch's token count
(mu from ``calculate_shift``; exponential time shift: shift = e^mu). ``--shift`` gives a static shift instead.

Outputs: the LoRA file in diffusers' key layout (``transformer.<module>.lora_A.weight``), which the family's
diffusers pipeline (``FluxPipeline`` / ``ZImagePipeline`` / ``QwenImagePipeline``) ``.load_lora_weights`` reads and
``videox-fun generate --lora-path`` merges; a full fine-tune as a diffusers-layout ``transformer/`` folder.

Not offered (refused in one line): the latent cache, control / inpaint training modes, Qwen-Image-Edit, step
distillation and reward training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...families import Recognised
from ...models.qwenimage.variants import EDIT
from ...pipelines.common import calculate_shift, pack_latents, unpack_latents
from ...pipelines.flux import FluxPipeline, image_ids
from ...pipelines.image import PATCH
from ...pipelines.qwenimage import QwenImagePipeline
from ...pipelines.zimage import ZImagePipeline
from ..checkpoint import save_transformer_folder
from ..config import TrainConfig
from ..lora import save_diffusers_lora_file
from ..objectives import FlowMatching, denoising_loss
from . import Device, FamilyModels, TrainInputs, on_device, register_spec

# What the image specs train: text to image. i2i / inpaint are sampling modes of the same weights.
IMAGE_MODES = ("normal",)
NO_CACHE = "the latent cache is not offered for {label} (image families): train from the images (leave out {flag})"
# The modules LoRA adapts, named as diffusers' transformers name them (so diffusers' loaders find them).
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
JOINT_ATTENTION = (*ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FLUX_LORA_TARGETS = (*JOINT_ATTENTION, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                     "proj_mlp")  # fmt: skip
ZIMAGE_LORA_TARGETS = (*ATTENTION, "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
QWENIMAGE_LORA_TARGETS = (*JOINT_ATTENTION, "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
                          "txt_mlp.net.2")  # fmt: skip


# ----------------------------------------------------------------------------------------
# The objective: flow matching shifted as the family's scheduler shifts
# ----------------------------------------------------------------------------------------
def token_shift(tokens: int, scheduler_config: Mapping[str, Any]) -> float:
    """The static shift equal to a dynamic scheduler's time shift at ``tokens`` image tokens: e^mu for the
    exponential time shift (diffusers' default), mu for the linear one (both with exponent 1, diffusers' own)."""
    mu = calculate_shift(tokens, scheduler_config)
    return mu if scheduler_config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


@dataclasses.dataclass
class TokenShiftFlowMatching(FlowMatching):
    """Flow matching whose shift follows each batch's image token count, as a dynamically shifting scheduler
    shifts its sigmas at inference (buckets of different sizes train at their own shift)."""

    scheduler_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def at_tokens(self, tokens: int) -> FlowMatching:
        """The plain flow matching of images of ``tokens`` tokens."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(FlowMatching)}
        return FlowMatching(**{**fields, "shift": token_shift(tokens, self.scheduler_config)})

    def batch_loss(
        self,
        spec: FlowImageSpec,
        models: FamilyModels,
        transformer: nn.Module,
        batch: dict,
        mode: str,
        generators: Sequence[torch.Generator],
        device: Device,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> torch.Tensor:
        """The micro-batch's loss (``objective_loss`` calls this): the inputs, then the shift of their token count."""
        inputs = spec.build_inputs(models, batch, mode, generators, device)
        _, _, _, h, w = inputs.latents.shape
        objective = self.at_tokens((h // PATCH) * (w // PATCH))
        return denoising_loss(spec, transformer, objective, inputs, generators, autocast)


def image_objective(
    config: TrainConfig, scheduler_config: Mapping[str, Any], sigma_range: tuple[float, float] = (0.0, 1.0)
) -> FlowMatching:
    """Flow matching as ``config`` says, shifted as ``scheduler_config`` shifts (static, or by token count when it
    shifts dynamically); ``--shift`` is a static shift either way, as ``--shift`` at inference."""
    flow = FlowMatching.from_config(config, float(scheduler_config.get("shift", 1.0)), sigma_range)
    if config.shift is None and scheduler_config.get("use_dynamic_shifting"):
        return TokenShiftFlowMatching(**dataclasses.asdict(flow), scheduler_config=dict(scheduler_config))
    return flow


# ----------------------------------------------------------------------------------------
# The shared spec
# ----------------------------------------------------------------------------------------
class FlowImageSpec:
    """What FLUX.1, Z-Image and Qwen-Image share as training specs; subclasses name their family and pipeline,
    and build their transformer's text and image-shape inputs."""

    name: ClassVar[str]  # the spec's and the family's name
    label: ClassVar[str]  # the family in messages
    lora_target_modules: ClassVar[tuple[str, ...]]
    pipeline_class: ClassVar[type]
    packed: ClassVar[bool]  # latents travel as 2x2-packed tokens (B, N, 64), else as (B, C, h, w)

    def __init__(self, config: TrainConfig):
        self.config = config
        self.pipe: Any = None  # the family's pipeline around the loaded models (load_models sets it)
        self.transformer_class: Any = None  # the loaded transformer's class (diffusers' with strict loading)

    # -- hooks ---------------------------------------------------------------------------------
    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """The transformer's text inputs of a batch of prompts, as the pipeline encodes them."""
        raise NotImplementedError

    def shape_inputs(self, pipe: Any, latent_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
        """The transformer's inputs that depend on the latent size (positions, guidance), none by default."""
        return {}

    def check_variant(self, recognised: Recognised) -> None:
        """Raise ValueError (one line) when the folder's variant cannot be trained (read off its config files, before
        any weight loads); every variant can by default."""

    # -- loading -------------------------------------------------------------------------------
    def refuse_settings(self, config: TrainConfig) -> None:
        """One line for each training setting the image families do not offer."""
        refused = {
            "use_cached_latents": NO_CACHE.format(label=self.label, flag="--use_cached_latents"),
            "distill": f"--distill (step distillation) is not offered for {self.label} yet",
            "init_from_t2v": f"--init_from_t2v expands a Wan T2V checkpoint; {self.label} has no such variant",
        }
        for name, message in refused.items():
            if getattr(config, name):
                raise ValueError(message)
        if config.boundary_type != "full":
            raise ValueError(f"--boundary_type {config.boundary_type} is for two-expert Wan2.2 models; "
                             f"{self.label} has one transformer")  # fmt: skip

    def load_models(self, config: TrainConfig, dtype: torch.dtype) -> FamilyModels:
        """The folder's pipeline; its transformer (fp32, the trained weights) and frozen VAE and text encoders
        (in ``dtype``), all on the CPU.

        The pipeline loads in fp32 and the frozen models are cast after: the same values as loading them in
        ``dtype``, through the family's one loader (no second copy of its component list here).
        """
        from ...families import recognise
        from ...registry import resolve_model

        self.refuse_settings(config)
        recognised = recognise(resolve_model(config.pretrained_model_name_or_path), config.config_path)
        if recognised.family.name != self.name:
            raise ValueError(f"{recognised.folder} is a {recognised.family.name} model; --family {self.name} "
                             f"trains {self.label} folders: leave --family out for the folder's own")  # fmt: skip
        self.check_variant(recognised)
        pipe = self.pipeline_class.from_pretrained(recognised, dtype=torch.float32)
        transformer = pipe.transformer
        self.transformer_class = type(transformer)
        if config.transformer_path:
            load_trained_weights(transformer, Path(config.transformer_path))
        frozen = {name: module for name, (module, _) in pipe.components().items() if module is not transformer}
        for module in frozen.values():
            module.to(dtype).requires_grad_(False).eval()
        pipe.dtype = dtype  # what the pipeline casts the transformer's inputs to (its frozen models' dtype)
        self.pipe = pipe
        models = FamilyModels(transformer, frozen, recognised.folder, recognised.config, low_vram=config.low_vram)
        self.check_mode(models, config.train_mode)
        return models

    def check_mode(self, models: FamilyModels, mode: str) -> None:
        """Only text-to-image training (``normal``); control / inpaint training are not offered."""
        if mode not in IMAGE_MODES:
            raise ValueError(f"--train_mode {mode} is not offered for {self.label}: it trains text to image "
                             f"(--train_mode {IMAGE_MODES[0]}); control / inpaint training is not offered")  # fmt: skip

    def objective(self, models: FamilyModels, config: TrainConfig) -> FlowMatching:
        """Flow matching shifted as the folder's scheduler config shifts (:func:`image_objective`)."""
        return image_objective(config, self.pipe.scheduler_config, models.sigma_range)

    # -- inputs --------------------------------------------------------------------------------
    def pipeline_on(self, device: Device) -> Any:
        """The pipeline, placing what it makes on ``device`` (the trainer moved the frozen models there)."""
        self.pipe.device = torch.device(device)
        return self.pipe

    def encode(self, models: FamilyModels, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w) (the posterior's mode), fp32, in
        chunks of ``vae_mini_batch``."""
        vae, step = models.frozen["vae"], max(1, self.config.vae_mini_batch)
        with torch.no_grad(), on_device(vae, device, models.low_vram):
            return torch.cat([vae.encode(images[i : i + step].to(device)) for i in range(0, len(images), step)]).float()

    def build_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: Device
    ) -> TrainInputs:
        """Latents (B, C, 1, h, w) and the transformer's text and shape inputs for a batch of images (the dataset
        already dropped some texts to "")."""
        if "latents" in batch:
            raise ValueError(NO_CACHE.format(label=self.label, flag="--use_cached_latents"))
        pixels = batch["pixel_values"]  # (B, 3, F, H, W)
        if pixels.shape[2] != 1:
            raise ValueError(f"{self.label} trains on images: this batch holds {pixels.shape[2]}-frame videos; give "
                             'the metadata entries "type": "image"')  # fmt: skip
        device = torch.device(device)
        pipe = self.pipeline_on(device)
        latents = self.encode(models, pixels[:, :, 0], device)  # (B, C, h, w)
        encoders = [module for name, module in models.frozen.items() if name != "vae"]
        with torch.no_grad(), ExitStack() as stack:
            for encoder in encoders:
                stack.enter_context(on_device(encoder, device, models.low_vram))
            conditions = self.text_inputs(pipe, list(batch["text"]))
        conditions.update(self.shape_inputs(pipe, (latents.shape[2], latents.shape[3]), len(latents)))
        return TrainInputs(latents=latents[:, :, None], conditions=conditions)

    def denoiser(self, transformer: nn.Module) -> Any:
        """The pipeline with ``transformer`` (the one being trained, maybe wrapped for DDP) as its denoiser."""
        pipe = copy.copy(self.pipe)
        pipe.transformer = transformer
        return pipe

    def predict(
        self, transformer: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: TrainInputs
    ) -> torch.Tensor:
        """The flow velocity (B, C, 1, h, w) of noisy latents (B, C, 1, h, w) at timesteps (B,) in [0, 1000],
        through the pipeline's own transformer call."""
        _, _, _, h, w = noisy.shape
        latents = noisy[:, :, 0]  # (B, C, h, w)
        tokens = pack_latents(latents) if self.packed else latents  # (B, N, 4C) or (B, C, h, w)
        velocity = self.denoiser(transformer)._denoise(tokens, timesteps, inputs.conditions)
        return (unpack_latents(velocity, h, w) if self.packed else velocity)[:, :, None]  # (B, C, 1, h, w)

    def encode_for_cache(
        self, models: FamilyModels, batch: dict, mode: str, device: Device
    ) -> list[dict[str, torch.Tensor]]:
        """Not offered: image families train from the images."""
        raise ValueError(NO_CACHE.format(label=self.label, flag="`videox-fun cache`"))

    # -- outputs -------------------------------------------------------------------------------
    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """The diffusers layout of a release (``config.json`` naming diffusers' class + safetensors)."""
        model_class = self.transformer_class  # as loaded: sharding (FSDP) swaps the module's class for a wrapper
        save_transformer_folder(model_class, model_class.released_class_name, transformer, state, folder)

    def save_lora(self, state: dict[str, torch.Tensor], path: Path, rank: int, alpha: float) -> Path:
        """The LoRA file in diffusers' layout for this family's pipeline (``transformer.<module>.lora_A.weight``)."""
        return save_diffusers_lora_file(state, path, rank, alpha)

    def sample(
        self, models: FamilyModels, transformer: nn.Module, prompt: str, seed: int, device: Device
    ) -> tuple[torch.Tensor, float]:
        """A validation image (1, H, W, 3) uint8 and its fps, sampled by the family's pipeline with the transformer
        being trained; settings: the ``validation_*`` fields, else the folder's defaults."""
        config, defaults = self.config, models.settings.defaults
        pipe = self.denoiser(transformer)
        pipe.device = torch.device(device)
        size = config.validation_sample_size or [defaults.height, defaults.width]
        out = pipe(prompt, height=size[0], width=size[-1], seed=seed, progress=False,
                   num_inference_steps=config.validation_inference_steps or defaults.steps)  # fmt: skip
        return out.frames, float(defaults.fps)


def load_trained_weights(transformer: nn.Module, path: Path) -> None:
    """``--transformer_path``: weights (a file or a folder; the family's other layouts where its transformer reads
    them) loaded strictly into the transformer, in fp32."""
    from ...models.loading import load_into, read_folder_state_dict, read_state_dict

    reader = getattr(transformer, "read_weights", None)
    if reader is not None:
        state = reader(path)
    else:
        state = read_folder_state_dict(path) if path.is_dir() else read_state_dict(path)
    load_into(transformer, {k: v.float() for k, v in state.items()}, source=str(path))


# ----------------------------------------------------------------------------------------
# The families
# ----------------------------------------------------------------------------------------
@register_spec("flux")
class FluxSpec(FlowImageSpec):
    """FLUX.1-dev / schnell: T5 sequence + CLIP pooled text, packed tokens with (row, column) ids, dev's embedded
    guidance at the folder's default scale."""

    name = "flux"
    label = "FLUX.1"
    lora_target_modules = FLUX_LORA_TARGETS
    pipeline_class = FluxPipeline
    packed = True

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """T5 ``encoder_hidden_states`` (B, L, D), CLIP ``pooled_projections`` (B, D), ``txt_ids`` (L, 3)."""
        prompts = [pipe.encode_prompt(text) for text in texts]  # T5 pads every prompt to one length
        return {
            "encoder_hidden_states": torch.cat([p["encoder_hidden_states"] for p in prompts]),
            "pooled_projections": torch.cat([p["pooled_projections"] for p in prompts]),
            "txt_ids": prompts[0]["txt_ids"],
        }

    def shape_inputs(self, pipe: Any, latent_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
        """``img_ids`` (N, 3) of the packed tokens and, for dev, the embedded guidance (B,)."""
        inputs: dict[str, Any] = {"img_ids": image_ids(*latent_size, pipe.device).to(pipe.dtype)}
        if pipe.variant.guidance_embeds:
            scale = pipe.config.defaults.guidance_scale
            inputs["guidance"] = torch.full((batch_size,), float(scale), device=pipe.device)
        return inputs


@register_spec("zimage")
class ZImageSpec(FlowImageSpec):
    """Z-Image / Z-Image-Turbo: Qwen3 caption features of each prompt's real tokens, latents patchified by the
    transformer itself."""

    name = "zimage"
    label = "Z-Image"
    lora_target_modules = ZIMAGE_LORA_TARGETS
    pipeline_class = ZImagePipeline
    packed = False

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """``cap_feats`` (B, L, D) zero-padded and ``cap_lens`` (B,), the real token counts."""
        features = pipe.text_encoder.encode(texts, max_length=pipe.config.text_len)  # (L_i, D) each
        return pipe.caption_inputs(features, max(f.shape[0] for f in features))


@register_spec("qwenimage")
class QwenImageSpec(FlowImageSpec):
    """Qwen-Image: Qwen2.5-VL's last hidden state behind the release's template (masked where padded), packed
    tokens with their grid in ``img_shapes``."""

    name = "qwenimage"
    label = "Qwen-Image"
    lora_target_modules = QWENIMAGE_LORA_TARGETS
    pipeline_class = QwenImagePipeline
    packed = True

    def check_variant(self, recognised: Recognised) -> None:
        """Qwen-Image-Edit (an edit image beside each sample) is not trained yet."""
        if recognised.variant == EDIT.name:
            raise ValueError(f"training {EDIT.name} (edit pairs) is not supported yet; train a Qwen-Image "
                             "(text-to-image) folder")  # fmt: skip

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """``encoder_hidden_states`` (B, L, D) and its mask (B, L) (None when no prompt is padded)."""
        embeds, mask = pipe.text_encoder.encode(texts, pipe.variant.template, None, pipe.config.text_len)
        return {"encoder_hidden_states": embeds.to(pipe.device, pipe.dtype), "encoder_hidden_states_mask": mask}

    def shape_inputs(self, pipe: Any, latent_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
        """``img_shapes``: the (frames, rows, columns) of tokens of the image, for the rotary positions."""
        h, w = latent_size
        return {"img_shapes": [(1, h // PATCH, w // PATCH)]}
