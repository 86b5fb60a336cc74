"""Training specs of the flow-matching image families: FLUX.1, FLUX.2, Z-Image and Qwen-Image.

One base, :class:`FlowImageSpec`, serves all four: a sample is one image (the dataset's ``"type": "image"``
entries, batched by aspect-ratio bucket), its latents are the family VAE's normalised latents (B, C, h, w) (FLUX.2:
its 32 channels patchified 2x2 into 128), kept as one latent frame (B, C, 1, h, w) as the trainer and the objectives
expect. The family's own pipeline (:mod:`videox_fun.pipelines.flux` / ``flux2`` / ``zimage`` / ``qwenimage``) is
built around the loaded models and supplies what inference does, so that training sees exactly the inputs sampling
gives the transformer: its text encoding, its token layout (``pack``: FLUX.1 and Qwen-Image pack 2x2 latent pixels
into a token, FLUX.2 makes each latent pixel one, Z-Image patchifies itself) and its transformer call
(``_denoise``: the timestep convention, Z-Image's negated velocity). The thin per-family specs below add the text
and image-shape inputs of their transformer.

Objective: flow matching (x_t = (1 - s) x0 + s noise, target noise - x0) with the noise levels shifted as the
family's scheduler config shifts them at inference: a static ``shift`` (Z-Image 3, FLUX.1-schnell 1), or, where
the config shifts dynamically (FLUX.1-dev, FLUX.2, Qwen-Image), the resolution-dependent shift of the batch's token
count (mu from ``calculate_shift``; exponential time shift: shift = e^mu). ``--shift`` gives a static shift instead.

Outputs: the LoRA file in diffusers' key layout (``transformer.<module>.lora_A.weight``), which the family's
diffusers pipeline (``FluxPipeline`` / ``ZImagePipeline`` / ``QwenImagePipeline``) ``.load_lora_weights`` reads and
``videox-fun generate --lora-path`` merges; a full fine-tune as a diffusers-layout ``transformer/`` folder.

``--train_mode control`` (Z-Image, FLUX.2, Qwen-Image: the families with VideoX-Fun's Fun control files) trains
the control stream beside the frozen transformer, on images with their control images (:mod:`.image_control`), and
writes the control file in the release's keys.

**The latent cache** (``videox-fun cache``, then ``--use_cached_latents``): a record per image holds its latents at
its bucket size (C, 1, h, w), as :meth:`FlowImageSpec.encode` makes them (FLUX.2: patchified and BatchNorm-normalised;
FLUX.1 / Z-Image: shift and scale; Qwen-Image: its causal VAE's mean / std), the text encoder's outputs as the
transformer takes them (:meth:`text_record`: the token sequence ``context`` cut to its real tokens, ``context_length``,
FLUX.1's CLIP ``pooled``), and for control training the control image's latents and, when the control file's context
reads a mask, the image's pixels: the masked image's latents depend on a box / ellipse drawn per step, so they are
encoded then, with the VAE (small beside the text encoders the cache leaves unloaded), keeping VideoX-Fun's mask mix.
A cached run reads the dataset's own text-dropout draws and the empty prompt's cached encoding, so it is the run from
the images (same draws, same inputs). A cached run loads no text encoder (and no VAE, unless that control context).

**Step distillation** (``--distill``, :mod:`..distill`): the student's rollout visits the noise levels the family's
Euler sampler visits for the batch's resolution (:meth:`FlowImageSpec.distill_schedule`: the folder's scheduler with
its static or resolution-dependent shift, its terminal stretch, FLUX.2's empirical mu), so ``videox-fun generate
--steps 4`` runs the grid the student learnt. The teacher's guidance is baked in (:meth:`teacher_passes`): true CFG
against the empty prompt at ``--real_guidance_scale`` in the family's own units (Qwen-Image's true CFG scale,
renormalised per token as its pipeline does; Z-Image's g: cond + g (cond - uncond)); FLUX.1-dev and FLUX.2 embed
their guidance, so their teacher is one pass at the embedded value ``--real_guidance_scale`` (default the folder's)
and the student (and critic) see the embedded value 1, the ``--guidance 1`` it samples with. Students sample without
guidance: ``--guidance 1`` (Z-Image: 0, its "none").

Not offered (refused in one line): the inpaint training mode, control training of FLUX.1 (no Fun control release),
Qwen-Image-Edit, distillation of a control stream and reward training.
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
import torch.nn.functional as F
from torch import nn

from ...families import Recognised
from ...families.qwenimage import folder_variant as qwenimage_folder_variant
from ...io.video import frames_to_tensor, tensor_to_frames
from ...models.flux2.vae import patchify
from ...models.fun_control import MASK_CHANNELS, SideRelease, SideStreamControl
from ...models.qwenimage.variants import VARIANTS as QWENIMAGE_VARIANTS
from ...models.zimage.control import LATENT_CHANNELS, ControlRelease, ZImageControl, control_config
from ...models.zimage.variants import variant_of as zimage_variant_of
from ...pipelines.common import calculate_shift, flow_scheduler, flow_timesteps
from ...pipelines.flux import FluxPipeline, image_ids
from ...pipelines.flux2 import Flux2Pipeline
from ...pipelines.flux2 import image_ids as flux2_image_ids
from ...pipelines.flux2 import text_ids as flux2_text_ids
from ...pipelines.fun_control import FunControlPipeline
from ...pipelines.guidance import renormalised
from ...pipelines.image import PATCH
from ...pipelines.qwenimage import QwenImagePipeline
from ...pipelines.schedulers import NUM_TRAIN_TIMESTEPS
from ...pipelines.zimage import ZImagePipeline
from ..checkpoint import TRANSFORMER_DIR, save_transformer_folder
from ..config import TrainConfig
from ..lora import save_diffusers_lora_file
from ..objectives import FlowMatching, Objective, denoising_loss
from . import Device, FamilyModels, TrainInputs, on_device, register_spec
from .image_control import (
    CONTROL_MODE,
    TRAIN_SCALE,
    ControlTrainee,
    check_control_batch,
    control_state,
    copy_blocks,
    draw_context,
    merged_lora_state,
    save_control,
    spaced_count,
    start_control,
)

# What the image specs train: text to image. i2i / inpaint are sampling modes of the same weights. The families with
# Fun control files train a control stream too (--train_mode control).
IMAGE_MODES = ("normal",)
# A new control stream's spacing: a copy every n-th main block, as the releases (and VideoX-Fun's defaults) do.
VIDEOX_FUN_STRIDES = {"zimage": 2, "flux2": 2, "qwenimage": 12}
# The embedded guidance a distilled student of FLUX.1-dev / FLUX.2 trains and samples at (`generate --guidance 1`).
DISTILLED_GUIDANCE = 1.0
# The modules LoRA adapts, named as diffusers' transformers name them (so diffusers' loaders find them).
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
JOINT_ATTENTION = (*ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FLUX_LORA_TARGETS = (*JOINT_ATTENTION, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                     "proj_mlp")  # fmt: skip
ZIMAGE_LORA_TARGETS = (*ATTENTION, "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
QWENIMAGE_LORA_TARGETS = (*JOINT_ATTENTION, "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
                          "txt_mlp.net.2")  # fmt: skip
# FLUX.2's double blocks (attention, image and text MLPs) and single blocks (fused qkv + MLP in, attention out).
FLUX2_LORA_TARGETS = (*JOINT_ATTENTION, "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                      "ff_context.linear_out", "attn.to_qkv_mlp_proj", "attn.to_out")  # fmt: skip


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
        objective = self.at_tokens(spec.pipe.token_count(h, w))
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

    def __init__(self, config: TrainConfig):
        self.config = config
        self.pipe: Any = None  # the family's pipeline around the loaded models (load_models sets it)
        self.transformer_class: Any = None  # the loaded transformer's class (diffusers' with strict loading)
        self.control: Any = None  # --train_mode control: the control model being trained (load_models sets it)
        self._empty: dict[str, torch.Tensor] | None = None  # --distill: the empty prompt's text record, made once

    @property
    def trains_control(self) -> bool:
        """Whether the family has Fun control files, so that ``--train_mode control`` trains one."""
        return issubclass(self.pipeline_class, FunControlPipeline)

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

    def new_control(self, transformer: nn.Module) -> nn.Module:
        """A new control stream for ``transformer`` in the layout of the family's release (control training with no
        control file to start from)."""
        raise NotImplementedError

    def keep_grid(self, generate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The known-pixels mask (B, m, h, w) of a generate mask (B, 1, H, W) (1 = generate) on the latent grid of
        ``size``, as the family's pipeline lays it out (``keep_mask``): nearest pixel, one channel by default."""
        return 1 - F.interpolate(generate, size=size)

    def text_record(self, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The text inputs of a batch (:meth:`text_inputs`) as latent-cache tensors, one row per sample: ``context``
        (B, L, D) the token sequence, ``context_length`` (B,) its real tokens (the rest is padding the record drops),
        and the family's others."""
        raise NotImplementedError

    def cached_text_inputs(self, pipe: Any, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The transformer's text inputs from cache tensors (:meth:`text_record`'s, ``context`` zero-padded), as
        :meth:`text_inputs` makes them from the prompts."""
        raise NotImplementedError

    def text_free_components(self, recognised: Recognised) -> dict[str, Any]:
        """The pipeline's constructor arguments besides the transformer and VAE with no text encoder loaded (a run
        from the latent cache): the text encoders None, the variant read off the folder."""
        return {"text_encoder": None}

    def cfg_scale(self, scale: float) -> float:
        """The classifier-free guidance scale s (uncond + s (cond - uncond)) of the family's guidance number
        ``scale`` (``--guidance``); 1: one conditional pass. Default: true CFG, the number is s."""
        return scale

    def embedded_guidance(self, pipe: Any) -> float:
        """The embedded guidance value the trained transformer sees (FLUX.1-dev, FLUX.2): the folder's default, or
        for a distilled student :data:`DISTILLED_GUIDANCE` (the teacher's guidance is baked in)."""
        return DISTILLED_GUIDANCE if self.config.distill else float(pipe.config.defaults.guidance_scale)

    # -- loading -------------------------------------------------------------------------------
    def refuse_settings(self, config: TrainConfig) -> None:
        """One line for each training setting the image families do not offer."""
        if config.init_from_t2v:
            raise ValueError(f"--init_from_t2v expands a Wan T2V checkpoint; {self.label} has no such variant")
        if config.distill and config.train_mode == CONTROL_MODE:
            raise ValueError(f"--distill makes a few-step {self.label} transformer (text to image); a control stream "
                             "trains beside a frozen one (--train_mode control): leave out one of them")  # fmt: skip
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
        self.check_mode_name(config.train_mode)
        # A run from the latent cache reads no text encoder (validation samples from prompts: it needs them).
        encoders = not config.use_cached_latents or bool(config.validation_steps)
        pipe = self.load_pipeline(recognised, encoders)
        transformer = trained = pipe.transformer
        self.transformer_class = type(transformer)
        if config.train_mode == CONTROL_MODE:  # the control stream trains; the transformer is frozen with the rest
            self.control = start_control(pipe, config.transformer_path, config.use_lora, self.new_control)
            trained = ControlTrainee(pipe, self.control)
            if pipe.vae is None and pipe.control_inpaints:  # the masked image's latents are drawn per step
                pipe.vae = self.pipeline_class.vae_class.from_pretrained(
                    recognised.folder / recognised.config.vae_subpath, dtype=torch.float32
                )
        elif config.transformer_path:
            load_trained_weights(transformer, Path(config.transformer_path))
        control = getattr(pipe, "control", None)  # a folder config's control file (pipelines with Fun control)
        frozen = {name: module for name, (module, _) in pipe.components().items()
                  if module is not None and module is not transformer and module is not control}  # fmt: skip
        for module in frozen.values():
            module.to(dtype).requires_grad_(False).eval()
        if trained is not transformer:  # frozen in the compute dtype (diffusers warns on a cast to its own dtype)
            transformer.requires_grad_(False).eval()
            if dtype != transformer.dtype:
                transformer.to(dtype)
        pipe.dtype = dtype  # what the pipeline casts the transformer's inputs to (its frozen models' dtype)
        self.pipe = pipe
        models = FamilyModels(trained, frozen, recognised.folder, recognised.config, low_vram=config.low_vram)
        self.check_mode(models, config.train_mode)
        return models

    def load_pipeline(self, recognised: Recognised, encoders: bool) -> Any:
        """The family's pipeline of the folder in fp32; without ``encoders`` (a run from the latent cache) its
        transformer alone, with no VAE or text encoder read.

        The pipeline's ``from_pretrained`` reads every component; the text encoders are the largest models of these
        families (T5-XXL, Mistral 24B, Qwen2.5-VL 7B), which a cached run must not load: built here, as it builds it.
        """
        pipeline_class = self.pipeline_class
        if encoders:
            return pipeline_class.from_pretrained(recognised, dtype=torch.float32)
        root, folder_config = recognised.folder, recognised.config
        subpath = root / folder_config.transformer_subpath
        pipe = pipeline_class(
            transformer=pipeline_class.transformer_class.from_pretrained(subpath, torch_dtype=torch.float32),
            vae=None,
            **self.text_free_components(recognised),
            scheduler_config=pipeline_class.read_scheduler_config(root, folder_config),
            config=folder_config,
        )
        pipe.control_from_config(root)
        return pipe

    def check_mode_name(self, mode: str) -> None:
        """Text-to-image training (``normal``), and ``control`` for a family with Fun control files; inpaint
        training is not offered."""
        offered = (*IMAGE_MODES, CONTROL_MODE) if self.trains_control else IMAGE_MODES
        if mode not in offered:
            control = "a Fun control stream (--train_mode control)" if self.trains_control else "no Fun control"
            raise ValueError(f"--train_mode {mode} is not offered for {self.label}: it trains text to image "
                             f"(--train_mode {IMAGE_MODES[0]}) and {control}; inpaint training is not "
                             "offered")  # fmt: skip

    def check_mode(self, models: FamilyModels, mode: str) -> None:
        """The modes of :meth:`check_mode_name`; control training needs the control model it loaded."""
        self.check_mode_name(mode)
        if mode == CONTROL_MODE and self.control is None:
            raise ValueError(f"--train_mode {mode}: the {self.label} spec was loaded for another mode; load it again")

    def objective(self, models: FamilyModels, config: TrainConfig) -> FlowMatching:
        """Flow matching shifted as the folder's scheduler config shifts (:func:`image_objective`)."""
        return image_objective(config, self.pipe.scheduler_config, models.sigma_range)

    # -- step distillation -----------------------------------------------------------------------
    def sampler_sigmas(self, steps: Sequence[int], tokens: int) -> torch.Tensor:
        """The noise levels (K,) the family's Euler sampler visits at images of ``tokens`` tokens, from the training
        timesteps ``steps`` (sigma t / 1000 before the shift): the folder's scheduler with its static (``--shift``)
        or resolution-dependent shift, terminal stretch and mu (FLUX.2: the empirical one), as the pipeline sets
        them. For K uniform steps (1000, 750, 500, 250) that is the grid of ``generate --steps K``."""
        scheduler = flow_scheduler(self.pipe.scheduler_config, self.config.shift)
        sigmas = [t / NUM_TRAIN_TIMESTEPS for t in steps]
        mu = self.pipe.shift_mu(tokens, len(steps))
        flow_timesteps(scheduler, len(steps), tokens, 0, torch.device("cpu"), sigmas, mu)
        return scheduler.sigmas[: len(steps)].float()

    def distill_schedule(
        self, flow: Objective, steps: Sequence[int], inputs: TrainInputs
    ) -> tuple[Objective, torch.Tensor]:
        """(the objective at the batch's token count, the rollout's noise levels (K,): :meth:`sampler_sigmas`)."""
        _, _, _, h, w = inputs.latents.shape
        tokens = self.pipe.token_count(h, w)
        if isinstance(flow, TokenShiftFlowMatching):
            flow = flow.at_tokens(tokens)
        return flow, self.sampler_sigmas(steps, tokens)

    def teacher_passes(
        self, models: FamilyModels, inputs: TrainInputs, batch: dict, scale: float, device: Device
    ) -> tuple[TrainInputs, TrainInputs | None, float]:
        """The teacher's passes with its guidance ``scale`` (``--real_guidance_scale``, the family's units) baked in:
        (conditional inputs, unconditional ones or None, CFG scale). Embedded guidance (the inputs carry
        ``guidance``): one pass at that value. Else CFG against the empty prompt at :meth:`cfg_scale`."""
        conditions = inputs.conditions
        if "guidance" in conditions:
            guided = {**conditions, "guidance": torch.full_like(conditions["guidance"], scale)}
            return dataclasses.replace(inputs, conditions=guided), None, 1.0
        cfg = self.cfg_scale(scale)
        if cfg == 1.0:
            return inputs, None, 1.0
        empty = self.empty_text_inputs(models, batch, len(inputs.latents), device)
        return inputs, dataclasses.replace(inputs, conditions={**conditions, **empty}), cfg

    def guided_prediction(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """The teacher's CFG of its two predictions (B, C, 1, h, w) as the family's pipeline guides: uncond + s (cond -
        uncond), renormalised per token where the pipeline renormalises (Qwen-Image's true CFG)."""
        guided = uncond + scale * (cond - uncond)
        dim = self.pipe.renorm_dim
        if dim is None:
            return guided
        _, _, _, h, w = guided.shape
        tokens = renormalised(self.pipe.pack(guided[:, :, 0]), self.pipe.pack(cond[:, :, 0]), dim)  # in its layout
        return self.pipe.unpack(tokens, h, w)[:, :, None]

    def empty_text_inputs(self, models: FamilyModels, batch: dict, size: int, device: Device) -> dict[str, Any]:
        """The transformer's text inputs of the empty prompt for ``size`` samples: a cached batch's ``empty_*``
        tensors, else the text encoders' (encoded once per run)."""
        if "empty_context" in batch:
            text = {key.removeprefix("empty_"): value for key, value in batch.items() if key.startswith("empty_")}
        else:
            if self._empty is None:
                self._empty = self.empty_context(models, device)
            text = {name: value.expand(size, *value.shape) for name, value in self._empty.items()}
        pipe = self.pipeline_on(device)
        return self.cached_text_inputs(pipe, {name: value.to(pipe.device) for name, value in text.items()})

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
        """Latents (B, C, 1, h, w) and the transformer's text and shape inputs for a batch of images, decoded (the
        dataset already dropped some texts to "") or cached (the dataset's drops applied to the cached encodings)."""
        device = torch.device(device)
        pipe = self.pipeline_on(device)
        cached = "latents" in batch
        pixels = None if cached else image_pixels(batch, self.label)  # (B, 3, H, W)
        if cached:
            latents = cached_tensor(batch, "latents", "image latents", device)[:, :, 0]  # (B, C, h, w)
            conditions = self.cached_text_inputs(pipe, cached_text(batch, device))
        else:
            latents = self.encode(models, pixels, device)  # (B, C, h, w)
            conditions = self.encoded_text(models, list(batch["text"]), device)
        conditions.update(self.shape_inputs(pipe, (latents.shape[2], latents.shape[3]), len(latents)))
        if mode == CONTROL_MODE:
            conditions.update(self.control_inputs(models, batch, pixels, generators, device))
        return TrainInputs(latents=latents[:, :, None], conditions=conditions)

    def encoded_text(self, models: FamilyModels, texts: list[str], device: torch.device) -> dict[str, Any]:
        """The transformer's text inputs of ``texts``, the text encoders visiting ``device`` (low-VRAM runs)."""
        encoders = [module for name, module in models.frozen.items() if name != "vae"]
        with torch.no_grad(), ExitStack() as stack:
            for encoder in encoders:
                stack.enter_context(on_device(encoder, device, models.low_vram))
            return self.text_inputs(self.pipeline_on(device), texts)

    def control_inputs(
        self,
        models: FamilyModels,
        batch: dict,
        pixels: torch.Tensor | None,
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> dict[str, Any]:
        """The control context (VideoX-Fun's draws, :func:`.image_control.draw_context`) and its training scale, from
        the batch's control images and ``pixels`` (B, 3, H, W), or from a cached batch's control latents and pixels."""
        if pixels is not None:
            control = check_control_batch(batch, self.label)  # (B, 3, H, W)
            grid = draw_context(self, models, control, pixels, generators, device)  # (B, C', h, w)
        else:
            latents = cached_tensor(batch, "control_latents", "control images' latents", device)  # (B, C, h, w)
            if self.pipe.control_inpaints:  # the masked image's latents follow a mask drawn now: from the pixels
                pixels = torch.stack([frames_to_tensor(frames)[:, 0] for frames in cached_tensor(
                    batch, "pixels", "image pixels, for the masked image", device, float_values=False)])  # fmt: skip
            grid = draw_context(self, models, None, pixels, generators, device, control_latents=latents)
        return {"control_context": self.pipe.pack_control(grid), "control_scale": TRAIN_SCALE}

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
        tokens = self.pipe.pack(noisy[:, :, 0])  # (B, C, h, w) in the transformer's layout: (B, N, D) tokens or as is
        if self.control is not None:  # the trainee: the control model with the frozen transformer
            velocity = transformer(tokens, timesteps, inputs.conditions)
        else:
            velocity = self.denoiser(transformer)._denoise(tokens, timesteps, inputs.conditions)
        return self.pipe.unpack(velocity, h, w)[:, :, None]  # (B, C, 1, h, w)

    def encode_for_cache(
        self, models: FamilyModels, batch: dict, mode: str, device: Device
    ) -> list[dict[str, torch.Tensor]]:
        """Per-sample records: ``latents`` (C, 1, h, w), the text tensors of :meth:`text_record` (``context`` cut to
        its real tokens), and for control training ``control_latents`` (C, h, w) and, when the control file's context
        reads a mask, ``pixels`` (1, H, W, 3) uint8 (the masked image's latents depend on a mask drawn per step)."""
        device = torch.device(device)
        pixels = image_pixels(batch, self.label)  # (B, 3, H, W)
        records = {"latents": self.encode(models, pixels, device)[:, :, None]}
        records.update(self.text_record(self.encoded_text(models, list(batch["text"]), device)))
        if mode == CONTROL_MODE:
            records["control_latents"] = self.encode(models, check_control_batch(batch, self.label), device)
            if self.pipe.control_inpaints:
                records["pixels"] = torch.stack([tensor_to_frames(video) for video in batch["pixel_values"]])
        return [trimmed_record(records, row) for row in range(len(pixels))]

    def empty_context(self, models: FamilyModels, device: Device) -> dict[str, torch.Tensor]:
        """The empty prompt's text record (the cache's ``empty_context.safetensors``, the teacher's unconditional
        text): :meth:`text_record` of its encoding, ``context`` cut to its real tokens."""
        return trimmed_record(self.text_record(self.encoded_text(models, [""], torch.device(device))), 0)

    # -- outputs -------------------------------------------------------------------------------
    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """The diffusers layout of a release (``config.json`` naming diffusers' class + safetensors); a control run's
        control model in the release's keys (:func:`.image_control.save_control`)."""
        if self.control is not None:
            save_control(self.control, control_state(state), folder)
            return
        model_class = self.transformer_class  # as loaded: sharding (FSDP) swaps the module's class for a wrapper
        save_transformer_folder(model_class, model_class.released_class_name, transformer, state, folder)

    def save_lora(self, state: dict[str, torch.Tensor], path: Path, rank: int, alpha: float) -> Path:
        """The LoRA file in diffusers' layout for this family's pipeline (``transformer.<module>.lora_A.weight``); a
        control run's adapters merged into its control model, written beside ``path`` as a full control run writes
        it (``transformer/``), whose weights file is returned."""
        if self.control is not None:
            merged = merged_lora_state(control_state(state), rank, alpha)
            return save_control(self.control, merged, path.parent / TRANSFORMER_DIR)
        return save_diffusers_lora_file(state, path, rank, alpha)

    def sample(
        self, models: FamilyModels, transformer: nn.Module, prompt: str, seed: int, device: Device
    ) -> tuple[torch.Tensor, float]:
        """A validation image (1, H, W, 3) uint8 and its fps, sampled by the family's pipeline with the transformer
        being trained; settings: the ``validation_*`` fields, else the folder's defaults."""
        config, defaults = self.config, models.settings.defaults
        control: dict[str, Any] = {}
        if self.control is not None:  # the trainee's control model steers the frozen transformer
            pipe = copy.copy(self.pipe)
            pipe.control = transformer.control
            control = {"mode": CONTROL_MODE, "control_video": config.validation_control_video}
        else:
            pipe = self.denoiser(transformer)
        pipe.device = torch.device(device)
        size = config.validation_sample_size or [defaults.height, defaults.width]
        out = pipe(prompt, height=size[0], width=size[-1], seed=seed, progress=False,
                   num_inference_steps=config.validation_inference_steps or defaults.steps, **control)  # fmt: skip
        return out.frames, float(defaults.fps)


def image_pixels(batch: Mapping[str, Any], label: str) -> torch.Tensor:
    """The batch's images (B, 3, H, W) in [-1, 1]; a batch of videos is one line saying what to give."""
    pixels = batch["pixel_values"]  # (B, 3, F, H, W)
    if pixels.shape[2] != 1:
        raise ValueError(f"{label} trains on images: this batch holds {pixels.shape[2]}-frame videos; give the "
                         'metadata entries "type": "image"')  # fmt: skip
    return pixels[:, :, 0]


def trimmed_record(records: Mapping[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """Row ``row`` of batched cache tensors on the CPU, floats in fp32 (the compute dtype's values, exactly), the
    text ``context`` cut to its ``context_length`` real tokens."""
    record = {}
    for name, tensor in records.items():
        value = tensor[row].detach().cpu()
        record[name] = (value.float() if value.is_floating_point() else value).contiguous()
    record["context"] = record["context"][: int(record["context_length"])].contiguous()
    return record


def cached_tensor(
    batch: Mapping[str, Any], name: str, what: str, device: torch.device, float_values: bool = True
) -> torch.Tensor:
    """A cached batch's ``name`` on ``device`` (fp32 unless ``float_values`` is False); a cache without it is one line
    saying to rebuild it for this training mode."""
    if name not in batch:
        raise ValueError(f"the latent cache has no {name!r} ({what}): rebuild it with `videox-fun cache` and the "
                         "--train_mode of this run")  # fmt: skip
    value = batch[name].to(device)
    return value.float() if float_values else value


def cached_text(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A cached batch's text tensors (``context`` (B, L, D) zero-padded, ``context_length`` (B,), a family's others)
    with the dataset's text dropout applied: a sample whose ``text_dropped`` is set takes the empty prompt's."""
    dropped = cached_tensor(batch, "text_dropped", "the text-dropout draws", device, float_values=False)  # (B,)
    text = {}
    for name in [key.removeprefix("empty_") for key in batch if key.startswith("empty_")]:
        mine, empty = batch[name].to(device), batch[f"empty_{name}"].to(device)
        text[name] = torch.where(dropped.view(-1, *[1] * (mine.dim() - 1)), empty, mine)
    return text


def longest(text: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The ``context`` (B, L, D) of cache text tensors cut to its longest real sequence (as a batch of prompts is
    padded to its longest)."""
    return text["context"][:, : int(text["context_length"].max())]


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
            inputs["guidance"] = torch.full((batch_size,), self.embedded_guidance(pipe), device=pipe.device)
        return inputs

    def text_record(self, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T5's states as ``context`` (every prompt padded to the text length: all tokens kept) and CLIP's
        ``pooled``."""
        embeds = conditions["encoder_hidden_states"]  # (B, L, D)
        lengths = torch.full((len(embeds),), embeds.shape[1], dtype=torch.int64)
        return {"context": embeds, "context_length": lengths, "pooled": conditions["pooled_projections"]}

    def cached_text_inputs(self, pipe: Any, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        """T5 ``encoder_hidden_states`` (B, L, D), CLIP ``pooled_projections`` (B, D), ``txt_ids`` (L, 3) of zeros."""
        embeds = longest(text).to(pipe.device, pipe.dtype)
        return {"encoder_hidden_states": embeds, "pooled_projections": text["pooled"].to(pipe.device, pipe.dtype),
                "txt_ids": torch.zeros(embeds.shape[1], 3, device=pipe.device, dtype=pipe.dtype)}  # fmt: skip

    def text_free_components(self, recognised: Recognised) -> dict[str, Any]:
        """No CLIP, no T5."""
        return {"text_encoder": None, "text_encoder_2": None}

    def cfg_scale(self, scale: float) -> float:
        """FLUX.1 runs no classifier-free guidance (dev embeds its guidance; schnell has none)."""
        return 1.0

    def check_variant(self, recognised: Recognised) -> None:
        """A teacher's guidance for FLUX.1-schnell, which has none, is one line."""
        if self.config.distill and self.config.real_guidance_scale is not None and "schnell" in recognised.variant:
            raise ValueError(f"{recognised.variant} has no guidance (neither embedded nor classifier-free): leave out "
                             "--real_guidance_scale")  # fmt: skip


@register_spec("zimage")
class ZImageSpec(FlowImageSpec):
    """Z-Image / Z-Image-Turbo: Qwen3 caption features of each prompt's real tokens, latents patchified by the
    transformer itself."""

    name = "zimage"
    label = "Z-Image"
    lora_target_modules = ZIMAGE_LORA_TARGETS
    pipeline_class = ZImagePipeline

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """``cap_feats`` (B, L, D) zero-padded and ``cap_lens`` (B,), the real token counts."""
        features = pipe.text_encoder.encode(texts, max_length=pipe.config.text_len)  # (L_i, D) each
        return pipe.caption_inputs(features, max(f.shape[0] for f in features))

    def text_record(self, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Qwen3's second-to-last hidden states as ``context``, each prompt's own length as ``context_length``."""
        return {"context": conditions["cap_feats"], "context_length": conditions["cap_lens"].long()}

    def cached_text_inputs(self, pipe: Any, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``cap_feats`` (B, L, D) padded to the longest prompt and ``cap_lens`` (B,), as :meth:`text_inputs`."""
        lengths = text["context_length"].tolist()
        features = [row[:length] for row, length in zip(text["context"], lengths, strict=True)]  # (L_i, D) each
        return pipe.caption_inputs(features, max(lengths))

    def text_free_components(self, recognised: Recognised) -> dict[str, Any]:
        """No Qwen3; the variant as the pipeline reads it (Z-Image or Z-Image-Turbo)."""
        config = recognised.config
        return {"text_encoder": None, "variant": zimage_variant_of(recognised.folder, config.variant).name}

    def cfg_scale(self, scale: float) -> float:
        """diffusers' Z-Image guidance g: cond + g (cond - uncond), CFG scale g + 1; 0 is none."""
        return scale + 1.0 if scale > 0 else 1.0

    def new_control(self, transformer: nn.Module) -> nn.Module:
        """A new 2.1 stream (33 channels: control, mask, masked image): a copy every second main block (the release's
        15 of 30) and one of each noise-refiner block, started as those blocks; linked to ``transformer``."""
        config = transformer.config
        blocks = spaced_count(config["n_layers"], VIDEOX_FUN_STRIDES["zimage"])
        release = ControlRelease("2.1", 2 * LATENT_CHANNELS + 1, blocks, config["dim"])
        control = ZImageControl.from_model_config(control_config(release, config, "a new control stream"))
        copy_blocks(control.control_layers, transformer.layers, control.control_layers_places)
        copy_blocks(control.control_noise_refiner, transformer.noise_refiner, control.control_refiner_layers_places)
        control.release = release
        return control.attach(transformer)


@register_spec("qwenimage")
class QwenImageSpec(FlowImageSpec):
    """Qwen-Image: Qwen2.5-VL's last hidden state behind the release's template (masked where padded), packed
    tokens with their grid in ``img_shapes``."""

    name = "qwenimage"
    label = "Qwen-Image"
    lora_target_modules = QWENIMAGE_LORA_TARGETS
    pipeline_class = QwenImagePipeline

    def check_variant(self, recognised: Recognised) -> None:
        """The edit models (Qwen-Image-Edit, Edit-2509 / 2511: edit pictures beside each sample) are not trained yet."""
        edit_names = {variant.name for variant in QWENIMAGE_VARIANTS.values() if variant.edit}
        if recognised.variant in edit_names or recognised.variant.startswith("Qwen-Image-Edit"):
            raise ValueError(f"training {recognised.variant} (edit pairs) is not supported yet; train a Qwen-Image "
                             "(text-to-image) folder")  # fmt: skip

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """``encoder_hidden_states`` (B, L, D) and its mask (B, L) (None when no prompt is padded)."""
        embeds, mask = pipe.text_encoder.encode(texts, pipe.variant.template, None, pipe.config.text_len)
        return {"encoder_hidden_states": embeds.to(pipe.device, pipe.dtype), "encoder_hidden_states_mask": mask}

    def text_record(self, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Qwen2.5-VL's states as ``context``, the real tokens of each (its mask's) as ``context_length``."""
        embeds, mask = conditions["encoder_hidden_states"], conditions["encoder_hidden_states_mask"]
        if mask is None:  # no prompt padded
            return {"context": embeds, "context_length": torch.full((len(embeds),), embeds.shape[1])}
        return {"context": embeds, "context_length": mask.sum(dim=1).long()}

    def cached_text_inputs(self, pipe: Any, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``encoder_hidden_states`` (B, L, D) padded to the longest prompt and its mask (B, L) of real tokens, None
        when no prompt is padded (:meth:`text_inputs`)."""
        embeds = longest(text).to(pipe.device, pipe.dtype)
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        mask = (positions < text["context_length"].to(embeds.device)[:, None]).long()  # (B, L)
        return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": None if bool(mask.all()) else mask}

    def text_free_components(self, recognised: Recognised) -> dict[str, Any]:
        """No Qwen2.5-VL; the variant of the folder's ``model_index.json``."""
        return {"text_encoder": None, "variant": qwenimage_folder_variant(recognised.folder)}

    def shape_inputs(self, pipe: Any, latent_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
        """``img_shapes``: the (frames, rows, columns) of tokens of the image, for the rotary positions."""
        h, w = latent_size
        return {"img_shapes": [(1, h // PATCH, w // PATCH)]}

    def new_control(self, transformer: nn.Module) -> nn.Module:
        """A new stream of the release's layout (132 channels; a copy every 12th block: 5 of 60)."""
        return new_side_stream(self.pipeline_class.control_class, transformer, VIDEOX_FUN_STRIDES["qwenimage"])


@register_spec("flux2")
class Flux2Spec(FlowImageSpec):
    """FLUX.2-dev: Mistral3's stacked hidden states with (0, 0, 0, index) ids, one 128-channel token per latent pixel
    (the VAE's patchified latents) with (0, row, column, 0) ids, the embedded guidance at the folder's default scale.
    The dynamic shift follows the scheduler config at the batch's token count, as VideoX-Fun's FLUX.2 training
    computes it (``calculate_shift``; sampling uses BFL's empirical mu, which also depends on the step count)."""

    name = "flux2"
    label = "FLUX.2"
    lora_target_modules = FLUX2_LORA_TARGETS
    pipeline_class = Flux2Pipeline

    def text_inputs(self, pipe: Any, texts: list[str]) -> dict[str, Any]:
        """``encoder_hidden_states`` (B, L, 3 D) (every prompt padded to the text length) and ``txt_ids`` (L, 4)."""
        embeds = pipe.text_encoder.encode(texts, pipe.config.text_len, pipe.config.text_layers)
        return {"encoder_hidden_states": embeds.to(pipe.device, pipe.dtype),
                "txt_ids": flux2_text_ids(embeds.shape[1], pipe.device)}  # fmt: skip

    def shape_inputs(self, pipe: Any, latent_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
        """``img_ids`` (N, 4) of the tokens and the embedded guidance (B,) at the folder's default scale."""
        scale = self.embedded_guidance(pipe)
        return {"img_ids": flux2_image_ids(*latent_size, pipe.device),
                "guidance": torch.full((batch_size,), scale, device=pipe.device, dtype=torch.float32)}  # fmt: skip

    def text_record(self, conditions: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The stacked Mistral states as ``context`` (every prompt padded to the text length: all tokens kept)."""
        embeds = conditions["encoder_hidden_states"]  # (B, L, 3 D)
        return {"context": embeds, "context_length": torch.full((len(embeds),), embeds.shape[1], dtype=torch.int64)}

    def cached_text_inputs(self, pipe: Any, text: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``encoder_hidden_states`` (B, L, 3 D) and ``txt_ids`` (L, 4)."""
        embeds = longest(text).to(pipe.device, pipe.dtype)
        return {"encoder_hidden_states": embeds, "txt_ids": flux2_text_ids(embeds.shape[1], pipe.device)}

    def keep_grid(self, generate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 4, h, w): the known-pixels mask at the VAE's resolution (2h, 2w), patchified 2x2 as the latents are
        (the pipeline's ``keep_mask``)."""
        return patchify(1 - F.interpolate(generate, size=(2 * size[0], 2 * size[1])))

    def new_control(self, transformer: nn.Module) -> nn.Module:
        """A new stream of the release's layout (260 channels; a copy every second double block: 4 of 8)."""
        return new_side_stream(self.pipeline_class.control_class, transformer, VIDEOX_FUN_STRIDES["flux2"])


def new_side_stream(control_class: type[SideStreamControl], transformer: nn.Module, stride: int) -> SideStreamControl:
    """A side stream for ``transformer`` reading the mask and the masked image, a copy every ``stride``-th main block
    (fewer where that does not divide them), each started as the main block at its place."""
    config = transformer.config
    main = getattr(transformer, control_class.main_blocks_name)
    latent = control_class.latent_channels
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    release = SideRelease(control_class.release_label, 2 * latent + MASK_CHANNELS, spaced_count(len(main), stride),
                          dim, latent)  # fmt: skip
    control = control_class.from_model_config(control_class.config_for(release, config, "a new control stream"))
    copy_blocks(control.copies, main, control.config.control_layers)
    control.release = release
    return control
