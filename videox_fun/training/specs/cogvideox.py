"""The CogVideoX(-Fun) family spec: loading, conditioning inputs, cache records, outputs and validation.

CogVideoX trains with v-prediction on a DDPM schedule (:class:`~videox_fun.training.objectives.VPrediction`,
built from the folder's ``scheduler/scheduler_config.json``). Modes:

- ``normal``: text-to-video, on a T2V model, or on a Fun InP model with its 17 condition channels
  all zero (what the pipeline gives when nothing is known);
- ``inpaint``: Fun InP models; the dataset's random generate-mask per sample. The condition
  channels are built as the pipeline builds them (:meth:`CogVideoXPipeline.inpaint_latents`,
  whose pieces :func:`resize_mask` / :func:`add_reference_noise` are called here): channel 0 the
  known-pixel mask on the latent grid times the VAE scaling factor, then the latents of the video
  with the generated pixels at -1. Known pixels get VideoX-Fun's training noise (std
  ``exp(N(-3, 0.5))`` per sample) when the config sets ``add_noise_in_inpaint_model``; a sample
  with nothing known gets zeros, as at inference;
- ``control``: Fun Control models; the control video's latents.

Layouts: the VAE works in (B, C, F, H, W); the CogVideoX VAE wrapper returns latents in the
transformer's (B, F', C, h, w). Training keeps every latent in the VAE's (B, C, F', h, w) layout
(as the other families, the latent cache and the objective do) and :meth:`CogVideoXSpec.predict`
permutes to the transformer's layout and back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...config import read_json_mapping
from ...models.cogvideox.transformer import CogVideoXTransformer
from ...models.cogvideox.variants import KIND_NAMES, variant_of
from ...pipelines.cogvideox import CogVideoXPipeline, add_reference_noise, resize_mask
from ...pipelines.common import SamplingSettings
from ..checkpoint import save_transformer_folder
from ..config import TrainConfig
from ..lora import save_diffusers_lora_file
from ..objectives import VPrediction, refuse_flow_settings
from . import Device, FamilyModels, TrainInputs, on_device, register_spec, uniform

logger = logging.getLogger(__name__)

# The kinds of checkpoint (variants.variant_of) each training mode can train.
MODE_KINDS = {"normal": ("t2v", "inp"), "inpaint": ("inp",), "control": ("control",)}
# Mask kinds trainable from cached latents (whole-frame patterns; spatial masks need the pixels).
CACHED_MASK_KINDS = ("t2v", "i2v", "first_last")
# VideoX-Fun's noise on the known pixels of InP training videos: std exp(N(mean, std)) per sample.
REFERENCE_NOISE_LOG_MEAN, REFERENCE_NOISE_LOG_STD = -3.0, 0.5
# The released name in transformer/config.json (diffusers' class; our loader takes it too).
TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
# The modules LoRA adapts: diffusers' attention projections and the feed-forward linears.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
LORA_PREFIX = "transformer."


def _to_transformer_layout(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F', h, w) -> (B, F', C, h, w); the same permutation undoes itself."""
    return latents.permute(0, 2, 1, 3, 4)


def reference_noise_strength(generator: torch.Generator) -> float:
    """A draw of VideoX-Fun's InP training noise std, exp(N(-3, 0.5))."""
    normal = torch.randn((), generator=generator).item()
    return float(torch.tensor(REFERENCE_NOISE_LOG_MEAN + REFERENCE_NOISE_LOG_STD * normal).exp())


@register_spec("cogvideox")
class CogVideoXSpec:
    """CogVideoX / CogVideoX1.5 T2V and the alibaba-pai CogVideoX-Fun InP and Control variants."""

    name = "cogvideox"
    lora_target_modules = LORA_TARGETS

    def __init__(self, config: TrainConfig):
        self.config = config

    # -- loading -----------------------------------------------------------------------------
    def load_models(self, config: TrainConfig, dtype: torch.dtype) -> FamilyModels:
        """Transformer in fp32 (the trained weights), frozen VAE and T5 in ``dtype``; all on the CPU."""
        from ...families import recognise
        from ...models.loading import load_into, read_folder_state_dict, read_state_dict
        from ...registry import resolve_model

        if config.boundary_type != "full":
            raise ValueError("--boundary_type high/low is for two-expert Wan2.2 models; CogVideoX has one transformer")
        if config.init_from_t2v:
            raise ValueError("--init_from_t2v is not supported for CogVideoX yet: start from a Fun InP / Control model")
        recognised = recognise(resolve_model(config.pretrained_model_name_or_path), config.config_path)
        if recognised.family.name != self.name:
            raise ValueError(
                f"{recognised.folder} is a {recognised.family.name} model; the {self.name} spec (--family) "
                "trains CogVideoX folders: leave --family out to use the folder's own"
            )
        folder, settings = recognised.folder, recognised.config
        transformer = CogVideoXTransformer.from_pretrained(folder / settings.transformer_subpath)
        if config.transformer_path:
            path = Path(config.transformer_path)
            state = read_folder_state_dict(path) if path.is_dir() else read_state_dict(path)
            load_into(transformer, {k: v.float() for k, v in state.items()}, source=str(path))
        models = FamilyModels(transformer, {}, folder, settings, low_vram=config.low_vram)
        self.check_mode(models, config.train_mode)
        if not config.use_cached_latents or config.validation_steps:
            models.frozen.update(self.load_encoders(models, dtype))
        return models

    @staticmethod
    def load_encoders(models: FamilyModels, dtype: torch.dtype) -> dict[str, nn.Module]:
        """The VAE and the T5 text encoder of the folder, frozen."""
        from ...models.cogvideox.text_encoder import CogVideoXTextEncoder
        from ...models.cogvideox.vae import CogVideoXVAE

        folder, settings = models.folder, models.settings
        frozen: dict[str, nn.Module] = {
            "vae": CogVideoXVAE.from_pretrained(folder / settings.vae_subpath, dtype=dtype),
            "text_encoder": CogVideoXTextEncoder.from_pretrained(
                folder / settings.text_encoder_subpath, folder / settings.tokenizer_subpath, dtype=dtype
            ),
        }
        for module in frozen.values():
            module.requires_grad_(False).eval()
        return frozen

    def check_mode(self, models: FamilyModels, mode: str) -> None:
        """Fail with what to change when the model cannot train ``mode``."""
        if mode not in MODE_KINDS:
            raise ValueError(
                f"--train_mode {mode!r} is not a CogVideoX training mode; choose one of {', '.join(MODE_KINDS)}"
            )
        variant = variant_of(models.transformer.config)
        if variant.kind in MODE_KINDS[mode]:
            return
        if variant.kind == "i2v":
            raise ValueError(
                f"{models.folder} is a {variant.name} model: training CogVideoX I2V models is not supported yet; "
                "train image-to-video on a CogVideoX-Fun InP model with --train_mode inpaint"
            )
        wanted = " or ".join(f"a CogVideoX {KIND_NAMES[kind]}" for kind in MODE_KINDS[mode])
        raise ValueError(
            f"--train_mode {mode} needs {wanted} model; {models.folder} is {variant.name} "
            f"(in_channels {models.transformer.config.in_channels}). Choose a model that serves {mode}, "
            "or another --train_mode."
        )

    # -- the objective -------------------------------------------------------------------------
    @staticmethod
    def scheduler_config(models: FamilyModels) -> dict[str, Any]:
        """The folder's ``scheduler/scheduler_config.json``."""
        path = models.folder / models.settings.scheduler_subpath / "scheduler_config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{models.folder}: no scheduler config at {path} (CogVideoX trains on its schedule)"
            )
        return dict(read_json_mapping(path, "scheduler config"))

    def objective(self, models: FamilyModels, config: TrainConfig) -> VPrediction:
        """v-prediction on the DDPM schedule of the folder's scheduler config; flow-matching settings refused."""
        refuse_flow_settings(config, "CogVideoX (v-prediction on a DDPM schedule) does not use")
        return VPrediction.from_scheduler_config(self.scheduler_config(models))

    # -- shapes and the pipeline's helpers -----------------------------------------------------
    def pipeline(self, models: FamilyModels, device: Device) -> CogVideoXPipeline:
        """Our CogVideoX pipeline around the loaded models (its helpers build the conditions).

        Without a loaded VAE (training from the latent cache) it gets one built on the meta device:
        only its config is read (compressions and latent shapes).
        """
        from ...models.cogvideox.vae import CogVideoXVAE

        vae = models.frozen.get("vae")
        if vae is None:
            config = read_json_mapping(models.folder / models.settings.vae_subpath / "config.json", "VAE config")
            with torch.device("meta"):
                vae = CogVideoXVAE.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        return CogVideoXPipeline(
            models.transformer,
            vae,
            models.frozen.get("text_encoder"),
            self.scheduler_config(models),
            config=models.settings,
            model_name=models.folder.name,
            device=device,
            dtype=vae.dtype,
        )

    @staticmethod
    def settings_for(pipe: CogVideoXPipeline, latent_frames: int, height: int, width: int) -> SamplingSettings:
        """Sampling settings of the pixel size whose latents are (F', h, w) (what the pipeline's helpers read)."""
        vae = pipe.vae
        return SamplingSettings(
            mode="t2v",
            negative_prompt="",
            height=height * vae.spatial_compression,
            width=width * vae.spatial_compression,
            num_frames=(latent_frames - 1) * vae.temporal_compression + 1,
            steps=1,
            guidance_scale=1.0,
            guidance_scale_2=None,  # type: ignore[arg-type]
            shift=None,  # type: ignore[arg-type]
            sampler="DDIM_Origin",
        )

    @staticmethod
    def trimmed(batch: dict, models: FamilyModels) -> dict:
        """The batch with its pixel frames cut so that CogVideoX 1.5 (``patch_size_t`` 2) gets an even latent count.

        VideoX-Fun cuts its training clips so; a 4k+1 clip loses 4 frames (one latent frame) when needed.
        """
        p_t = models.transformer.config.patch_size_t or 1
        if p_t == 1 or "pixel_values" not in batch:
            return batch
        frames = batch["pixel_values"].shape[2]
        extra = ((frames - 1) // 4 + 1) % p_t
        if not extra:
            return batch
        keep = frames - 4 * extra
        if keep < 1:
            raise ValueError(f"{frames} frames are too few for CogVideoX 1.5 (patch_size_t {p_t}): use 8k+5 frames")
        cut = dict(batch)
        for name in ("pixel_values", "mask", "control_pixel_values"):
            if name in batch:
                cut[name] = batch[name][:, :, :keep]
        return cut

    # -- inputs --------------------------------------------------------------------------------
    def encode(self, models: FamilyModels, video: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Pixels (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, F', h, w): the posterior's mode."""
        vae = models.frozen["vae"]
        step = max(1, self.config.vae_mini_batch)
        with torch.no_grad(), on_device(vae, device, models.low_vram):
            parts = [vae.encode(video[i : i + step].to(device)) for i in range(0, video.shape[0], step)]
        return _to_transformer_layout(torch.cat(parts).float())  # (B, F', C, h, w) -> (B, C, F', h, w)

    def text(self, models: FamilyModels, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """T5 embeddings (B, 226, D) of ``texts``, padding tokens encoded too (as CogVideoX was trained)."""
        encoder = models.frozen["text_encoder"]
        text_len = models.transformer.config.max_text_seq_length
        with on_device(encoder, device, models.low_vram):
            return encoder.encode(list(texts), max_length=text_len).float().to(device)

    def inpaint_condition(
        self,
        models: FamilyModels,
        pixels: torch.Tensor,
        masks: torch.Tensor,
        strengths: Sequence[float] | None,
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> torch.Tensor:
        """A Fun InP model's 17 condition channels (B, 1 + C, F', h, w) for pixels (B, 3, F, H, W) and
        generate masks (B, 1, F, H, W) (1 = generate), laid out as the pipeline's ``inpaint_latents``.

        ``strengths`` (one per sample, or None for none) is the std of the noise on the known pixels,
        drawn from the sample's generator. A sample with nothing known gets zeros.
        """
        vae = models.frozen["vae"]
        masks = masks.to(pixels)
        masked = torch.where(masks < 0.5, pixels, torch.full_like(pixels, -1.0))  # (B, 3, F, H, W)
        if strengths is not None:
            masked = torch.cat(
                [
                    add_reference_noise(masked[b : b + 1], strength, g)
                    for b, (strength, g) in enumerate(zip(strengths, generators, strict=True))
                ]
            )
        latents = self.encode(models, masked, device)  # (B, C, F', h, w)
        _, _, frames, h, w = latents.shape
        known = resize_mask(1.0 - masks.float(), (frames, h, w)).to(latents) * vae.scaling_factor  # (B, 1, F', h, w)
        condition = torch.cat([known, latents], dim=1)  # (B, 1 + C, F', h, w)
        nothing_known = torch.tensor([bool((m > 0.5).all()) for m in masks], device=condition.device)
        return condition * (~nothing_known).view(-1, 1, 1, 1, 1).to(condition)

    def _pixel_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Latents (B, C, F', h, w), text (B, 226, D) and the condition (B, C', F', h, w) or None, from pixels."""
        batch = self.trimmed(batch, models)
        pixels = batch["pixel_values"]  # (B, 3, F, H, W) in [-1, 1]
        latents = self.encode(models, pixels, device)
        context = self.text(models, batch["text"], device)  # the dataset already dropped some texts to ""
        kind = variant_of(models.transformer.config).kind
        condition = None
        if kind == "inp":
            if mode == "inpaint":
                if "mask" not in batch:
                    raise ValueError("inpaint training needs the dataset's masks: build it with train_mode='inpaint'")
                masks = batch["mask"]  # (B, 1, F, H, W), 1 = generate
            else:
                masks = torch.ones(pixels.shape[0], 1, *pixels.shape[2:])
            strengths = None
            if getattr(models.transformer.config, "add_noise_in_inpaint_model", False):
                strengths = [reference_noise_strength(g) for g in generators]
            condition = self.inpaint_condition(models, pixels, masks, strengths, generators, device)
        elif kind == "control":
            if "control_pixel_values" not in batch:
                raise ValueError("control training needs control videos: give control_file_path in the metadata")
            condition = self.encode(models, batch["control_pixel_values"], device)  # (B, C, F', h, w)
        return latents, context, condition

    def _cached_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The same from latent-cache records; text dropout and whole-frame masks drawn per sample."""
        from ..data.masks import MASK_KINDS, choose_mask_kind, generate_mask

        def get(name: str, why: str) -> torch.Tensor:
            if name not in batch:
                raise ValueError(f"the latent cache has no {name!r} ({why}); rebuild it with `videox-fun cache`")
            return batch[name].to(device).float()

        latents = get("latents", "video latents")  # (B, C, F', h, w)
        keep = torch.tensor([uniform(g) >= self.config.text_drop_ratio for g in generators], device=device)
        context = torch.where(
            keep.view(-1, 1, 1), get("context", "text embeddings"), get("empty_context", "the empty prompt")
        )  # (B, 226, D)
        kind = variant_of(models.transformer.config).kind
        condition = None
        if kind == "inp":
            _, channels, frames, h, w = latents.shape
            weights = {k: MASK_KINDS[k][1] for k in CACHED_MASK_KINDS} if mode == "inpaint" else {"t2v": 1.0}
            scale = self.pipeline(models, device).vae.scaling_factor
            rows = []
            for row, (num_frames, g) in enumerate(zip(batch["num_frames"].tolist(), generators, strict=True)):
                mask_kind = choose_mask_kind(num_frames, g, weights)
                if mask_kind == "t2v":  # nothing known: zeros, as the pipeline gives
                    rows.append(latents.new_zeros(1 + channels, frames, h, w))
                    continue
                # Whole-frame masks built at latent resolution give the same mask channel as at pixel resolution.
                generate = generate_mask(mask_kind, num_frames, h, w, g)[None].to(latents)  # (1, 1, F, h, w)
                known = resize_mask(1.0 - generate, (frames, h, w))[0] * scale  # (1, F', h, w)
                masked = get(f"masked_latents_{mask_kind}", f"masked video of {mask_kind} masks")[row]
                rows.append(torch.cat([known, masked]))  # (1 + C, F', h, w)
            condition = torch.stack(rows)
        elif kind == "control":
            condition = get("control_latents", "control videos")
        return latents, context, condition

    def build_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: Device
    ) -> TrainInputs:
        """Latents (B, C, F', h, w) and conditions: ``context`` (B, 226, D), ``condition`` (B, C', F', h, w)
        for InP / Control models, and the rotary tables of the 5b / 1.5 models (as the pipeline makes them)."""
        device = torch.device(device)
        source = self._cached_inputs if "latents" in batch else self._pixel_inputs
        latents, context, condition = source(models, batch, mode, generators, device)
        conditions: dict[str, Any] = {"context": context}
        if condition is not None:
            conditions["condition"] = condition
        _, _, frames, h, w = latents.shape
        pipe = self.pipeline(models, device)
        rotary = pipe.rotary_embeddings(self.settings_for(pipe, frames, h, w))
        if rotary is not None:
            conditions["image_rotary_emb"] = rotary
        return TrainInputs(latents=latents, conditions=conditions)

    def predict(
        self, transformer: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: TrainInputs
    ) -> torch.Tensor:
        """v-prediction (B, C, F', h, w) for noisy latents (B, C, F', h, w) at integer timesteps (B,)."""
        hidden = noisy
        condition = inputs.conditions.get("condition")
        if condition is not None:
            hidden = torch.cat([hidden, condition.to(hidden)], dim=1)  # (B, C + C', F', h, w)
        output = transformer(
            hidden_states=_to_transformer_layout(hidden),  # (B, F', C + C', h, w)
            encoder_hidden_states=inputs.conditions["context"],
            timestep=timesteps,
            image_rotary_emb=inputs.conditions.get("image_rotary_emb"),
            return_dict=False,
        )[0]  # (B, F', C, h, w)
        return _to_transformer_layout(output)  # (B, C, F', h, w)

    # -- latent cache --------------------------------------------------------------------------
    def encode_for_cache(
        self, models: FamilyModels, batch: dict, mode: str, device: Device
    ) -> list[dict[str, torch.Tensor]]:
        """Per-sample records: latents (C, F', h, w), text (226, D), and what the model's conditions need.

        InP models: the latents of the video masked by each whole-frame mask kind (i2v, first_last;
        t2v is zeros), without the random noise of pixel training on the known frames.
        """
        from ..data.masks import generate_mask

        device = torch.device(device)
        batch = self.trimmed(batch, models)
        pixels = batch["pixel_values"]  # (B, 3, F, H, W)
        b, _, f, h, w = pixels.shape
        records: dict[str, torch.Tensor] = {
            "latents": self.encode(models, pixels, device),
            "num_frames": torch.full((b,), f, dtype=torch.int64),
            "context": self.text(models, batch["text"], device),
        }
        kind = variant_of(models.transformer.config).kind
        if kind == "inp":
            for mask_kind in CACHED_MASK_KINDS[1:]:  # fixed frame patterns: the generator is unused
                generate = generate_mask(mask_kind, f, h, w, torch.Generator()).expand(b, -1, -1, -1, -1)
                masked = torch.where(generate.to(pixels) < 0.5, pixels, torch.full_like(pixels, -1.0))
                records[f"masked_latents_{mask_kind}"] = self.encode(models, masked, device)
        if kind == "control" and "control_pixel_values" in batch:
            records["control_latents"] = self.encode(models, batch["control_pixel_values"], device)
        return [{name: t[row].detach().cpu().contiguous() for name, t in records.items()} for row in range(b)]

    def empty_context(self, models: FamilyModels, device: Device) -> torch.Tensor:
        """The empty prompt's embedding (226, D) (CogVideoX's text is never trimmed: padding is encoded)."""
        return self.text(models, [""], torch.device(device))[0].cpu().contiguous()

    # -- outputs -------------------------------------------------------------------------------
    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """The diffusers layout of a release (``config.json`` + safetensors), read by our loader and diffusers'."""
        save_transformer_folder(CogVideoXTransformer, TRANSFORMER_CLASS, transformer, state, folder)

    def save_lora(self, state: dict[str, torch.Tensor], path: Path, rank: int, alpha: float) -> Path:
        """A LoRA file for diffusers' ``CogVideoXPipeline.load_lora_weights`` (``transformer.<module>.lora_A.weight``,
        alpha / rank folded into ``lora_B``: :func:`~videox_fun.training.lora.save_diffusers_lora_file`)."""
        return save_diffusers_lora_file(state, path, rank, alpha, LORA_PREFIX)

    def sample(
        self, models: FamilyModels, transformer: nn.Module, prompt: str, seed: int, device: Device
    ) -> tuple[torch.Tensor, float]:
        """A validation video (F, H, W, 3) uint8 and its fps, sampled by our CogVideoXPipeline with the
        transformer being trained. Settings: the ``validation_*`` fields, else the model's defaults."""
        config, defaults = self.config, models.settings.defaults
        pipe = self.pipeline(models, device)
        pipe.transformer = transformer
        size = config.validation_sample_size or [defaults.height, defaults.width]
        out = pipe(
            prompt,
            negative_prompt=defaults.negative_prompt,
            mode="control" if config.train_mode == "control" else "t2v",
            control_video=config.validation_control_video if config.train_mode == "control" else None,
            height=size[0],
            width=size[-1],
            num_frames=config.validation_num_frames or defaults.num_frames,
            num_inference_steps=config.validation_inference_steps or defaults.steps,
            guidance_scale=defaults.guidance_scale,
            sampler=defaults.sampler,
            seed=seed,
            progress=False,
        )
        return out.frames, defaults.fps
