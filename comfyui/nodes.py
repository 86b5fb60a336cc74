# ruff: noqa: N801, N802, N803  (VideoX-Fun's node names (Wan2_2...), ComfyUI's INPUT_TYPES, its GPU_memory_mode widget)
"""The node classes, with VideoX-Fun's node names, sockets and widget order (so its workflows load).

Every node is thin: loaders recognise a folder and return :class:`~.models.FunModels`, option
nodes return a changed copy, samplers turn their sockets into one :class:`videox_fun.api.GenerationRequest`
and call the library. Which mode a sampler runs is inferred by the library from the media given,
from the family's mode table; a sampler's media sockets map onto the library's input names
(:data:`videox_fun.families.INPUT_NAMES`).

The video families' nodes are here; the image families' (Z-Image, FLUX.2, Qwen-Image) in :mod:`.image_nodes`.
``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` gather both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from videox_fun.api import GenerationRequest
from videox_fun.models.wan import single_files as wan_files
from videox_fun.runtime.options import CACHES, DEFAULT_SKIP_START_STEPS, DEFAULT_THRESHOLDS

from . import camera, host, media, single_files
from .common import (
    BOOL_CHOICE,
    CATEGORY,
    FUN_MODELS,
    PROMPT,
    SAMPLER_ALIASES,
    SEED_MAX,
    FunLora,
    ModelFileWidgets,
    family_samplers,
    memory_modes,
)
from .image_nodes import IMAGE_DISPLAY_NAMES, IMAGE_NODES
from .models import (
    ATTENTION_TYPES,
    COMBINE_MODEL_TYPES,
    MODEL_TYPES,
    PRECISIONS,
    FunModels,
    StepCache,
    config_choices,
    drop_held_pipeline,
    generate,
    load_fun_models,
    load_single_file_models,
    model_choices,
)
from .single_files import CLIP_ENCODER_MODEL, TEXT_ENCODER_MODEL, TOKENIZER, TRANSFORMER_MODEL, VAE_MODEL

host.register_model_folders()
host.on_unload_all_models(drop_held_pipeline)  # ComfyUI's "unload models" drops the pack's pipeline too

RIFLEX = "RIFLEXT_ARGS"
CAMERA_POSE = "CameraPose"
# VideoX-Fun's base_resolution choices, with small ones first for the tiny models (64x64 toy world).
BASE_RESOLUTIONS = [64, 128, 256, 512, 640, 768, 896, 960, 1024]
# VideoX-Fun's release names per loader (kept in the lists so its workflows validate).
WAN_FUN_RELEASES = tuple(
    f"Wan2.1-Fun-{v}{size}-{kind}"
    for v in ("", "V1.1-")
    for size in ("1.3B", "14B")
    for kind in ("InP", "Control", *(("Control-Camera",) if v else ()))
)
WAN_RELEASES = ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-720P")
WAN22_RELEASES = ("Wan2.2-T2V-A14B", "Wan2.2-I2V-A14B", "Wan2.2-TI2V-5B")
WAN22_FUN_RELEASES = tuple(
    f"Wan2.2-Fun-{size}-{kind}" for size in ("A14B", "5B") for kind in ("InP", "Control", "Control-Camera")
)
COGVIDEOX_FUN_RELEASES = (
    "CogVideoX-Fun-2b-InP",
    "CogVideoX-Fun-5b-InP",
    *(f"CogVideoX-Fun-V1.1-{size}-{kind}" for kind in ("InP", "Pose", "Control") for size in ("2b", "5b")),
    "CogVideoX-Fun-V1.5-5b-InP",
)


# ------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------


class LoadWanFunModel:
    """Choose a Wan2.1-Fun model (InP, Control, Control-Camera): from ``models/Fun_Models/`` or a packaged tiny one.

    The Wan loaders differ only in their class attributes: the release names offered, the widgets' defaults,
    and whether they have a model_type widget (VideoX-Fun's Wan2.1 / Wan2.2 loaders have none).
    """

    FAMILY = "wan"
    RELEASES: ClassVar[tuple[str, ...]] = WAN_FUN_RELEASES
    TINY_PREFIXES: ClassVar[tuple[str, ...]] = ("Wan2.1-Fun-Tiny",)
    MODEL_TYPE = True
    DEFAULT_CONFIG = "wan2.1/wan_civitai.yaml"
    DEFAULT_PRECISION = "bf16"
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Wan2.1-Fun"

    @classmethod
    def model_widget(cls) -> tuple[list[str], dict]:
        """The model list: releases on disk, the tiny models, VideoX-Fun's release names."""
        names = model_choices(cls.RELEASES, cls.TINY_PREFIXES, cls.FAMILY)
        return names, {"default": names[0]}

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required: dict[str, tuple] = {"model": cls.model_widget()}
        if cls.MODEL_TYPE:
            required["model_type"] = (list(MODEL_TYPES), {"default": "Inpaint"})
        required["GPU_memory_mode"] = memory_modes()
        required["config"] = (config_choices(), {"default": cls.DEFAULT_CONFIG})
        required["precision"] = (list(PRECISIONS), {"default": cls.DEFAULT_PRECISION})
        return {"required": required}

    def loadmodel(self, model: str, GPU_memory_mode: str, config: str, precision: str,
                  model_type: str | None = None) -> tuple:  # fmt: skip
        return (load_fun_models(model, self.FAMILY, GPU_memory_mode, precision, config, model_type),)


class LoadWan2_2FunModel(LoadWanFunModel):
    """Choose a Wan2.2-Fun model (A14B: two experts, or 5B; InP, Control, Control-Camera) from
    ``models/Fun_Models/`` or a packaged tiny one."""

    RELEASES: ClassVar[tuple[str, ...]] = WAN22_FUN_RELEASES
    DEFAULT_CONFIG = "wan2.2/wan_civitai_i2v.yaml"
    DEFAULT_PRECISION = "fp16"  # VideoX-Fun's Wan2.2 loaders' default
    CATEGORY = f"{CATEGORY}/Wan2.2-Fun"


class LoadWanModel(LoadWanFunModel):
    """Choose a Wan2.1 model (T2V, I2V) from ``models/Fun_Models/`` (or ``Wan-AI/``), or a packaged tiny one."""

    RELEASES: ClassVar[tuple[str, ...]] = WAN_RELEASES
    MODEL_TYPE = False
    CATEGORY = f"{CATEGORY}/Wan2.1"


class LoadWan2_2Model(LoadWanModel):
    """Choose a Wan2.2 model (T2V-A14B, I2V-A14B: two experts; TI2V-5B) from ``models/Fun_Models/`` (or
    ``Wan-AI/``), or a packaged tiny one."""

    RELEASES: ClassVar[tuple[str, ...]] = WAN22_RELEASES
    DEFAULT_CONFIG = "wan2.2/wan_civitai_t2v.yaml"
    DEFAULT_PRECISION = "fp16"
    CATEGORY = f"{CATEGORY}/Wan2.2"


class LoadCogVideoXFunModel:
    """Choose a CogVideoX-Fun model (InP, Control, Pose) from ``models/CogVideoX_Fun/`` or a built-in tiny one."""

    FAMILY = "cogvideox"
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("cogvideoxfun_model",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/CogVideoX-Fun"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = model_choices(COGVIDEOX_FUN_RELEASES, ("CogVideoX-Fun-Tiny",), cls.FAMILY)
        return {
            "required": {
                "model": (names, {"default": names[0]}),
                "model_type": (list(MODEL_TYPES), {"default": "Inpaint"}),
                "GPU_memory_mode": memory_modes(),
                "precision": (list(PRECISIONS), {"default": "fp16"}),
            }
        }

    def loadmodel(self, model: str, model_type: str, GPU_memory_mode: str, precision: str) -> tuple:
        return (load_fun_models(model, self.FAMILY, GPU_memory_mode, precision, None, model_type),)


# ------------------------------------------------------------------------------------------
# Chunked loaders: one component per file, from ComfyUI's own model folders
# ------------------------------------------------------------------------------------------


class LoadWanTransformerModel(ModelFileWidgets):
    """Read a Wan transformer single file from ComfyUI's ``diffusion_models/`` (original Wan names or ComfyUI's,
    ``*_fp8_scaled`` too). Its variant (T2V, InP, Control, Control-Camera, TI2V) and size are told from its tensor
    shapes, and model_name says what was found; the weights load when a sampler first needs them.
    """

    RETURN_TYPES: tuple[str, ...] = (TRANSFORMER_MODEL, "STRING")
    RETURN_NAMES: tuple[str, ...] = ("transformer", "model_name")
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Wan single files"

    def loadmodel(self, model_name: str, precision: str) -> tuple:
        return self.read(host.model_file_path(model_name, *self.FOLDERS), PRECISIONS[precision])

    def read(self, path: Path, dtype: str) -> tuple:
        """The node's outputs for a file (read from its header)."""
        found = wan_files.read_transformer_file(path, dtype)
        return found, found.label


class LoadWanVAEModel(LoadWanTransformerModel):
    """Read a Wan VAE single file from ComfyUI's ``vae/`` (``wan_2.1_vae.safetensors``, ``Wan2.1_VAE.pth``, the
    Wan2.2 VAE)."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("vae",)
    RETURN_TYPES: tuple[str, ...] = (VAE_MODEL,)
    RETURN_NAMES: tuple[str, ...] = ("vae",)

    def read(self, path: Path, dtype: str) -> tuple:
        return (wan_files.read_vae_file(path, dtype),)


class LoadWanTextEncoderModel(LoadWanTransformerModel):
    """Read a umT5 encoder single file from ComfyUI's ``text_encoders/`` (ComfyUI's ``umt5_xxl_*``, fp8_scaled
    too, or Wan's ``models_t5_umt5-xxl-enc-bf16.pth``); the tokenizer is ``google/umt5-xxl`` (beside the file, or
    in ``models/Fun_Models/`` as VideoX-Fun keeps it)."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("text_encoders",)
    RETURN_TYPES: tuple[str, ...] = (TEXT_ENCODER_MODEL, TOKENIZER)
    RETURN_NAMES: tuple[str, ...] = ("text_encoder", "tokenizer")

    def read(self, path: Path, dtype: str) -> tuple:
        return wan_files.read_text_encoder_file(path, dtype), single_files.find_tokenizer(path)


class LoadWanClipEncoderModel(LoadWanTransformerModel):
    """Read a CLIP vision tower single file from ComfyUI's ``clip_vision/`` (``clip_vision_h.safetensors``) or
    ``text_encoders/`` (Wan's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``), for i2v models."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("clip_vision", "text_encoders")
    RETURN_TYPES: tuple[str, ...] = (CLIP_ENCODER_MODEL,)
    RETURN_NAMES: tuple[str, ...] = ("clip_encoder",)

    def read(self, path: Path, dtype: str) -> tuple:
        return (wan_files.read_image_encoder_file(path, dtype),)


class CombineWanPipeline:
    """Join the single-file components into a model for the Wan samplers; model_type Inpaint takes any model
    without control (T2V too), Control a Control or Control-Camera one. The pipeline loads at the first sampler
    run, in the transformer's precision."""

    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Wan single files"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "transformer": (TRANSFORMER_MODEL,),
                "vae": (VAE_MODEL,),
                "text_encoder": (TEXT_ENCODER_MODEL,),
                "tokenizer": (TOKENIZER,),
                "model_name": ("STRING", {"default": ""}),  # VideoX-Fun's; linked from the transformer loader
                "GPU_memory_mode": memory_modes(),
                "model_type": (list(COMBINE_MODEL_TYPES), {"default": "Inpaint"}),
            },
            "optional": {"clip_encoder": (CLIP_ENCODER_MODEL,)},
        }

    def loadmodel(self, model_name: str, GPU_memory_mode: str, model_type: str,
                  transformer: wan_files.TransformerFile, vae: wan_files.VAEFile,
                  text_encoder: wan_files.TextEncoderFile, tokenizer: Path,
                  clip_encoder: wan_files.ImageEncoderFile | None = None) -> tuple:  # fmt: skip
        name = model_name or transformer.path.stem
        parts = wan_files.WanParts(transformer, vae, text_encoder, Path(tokenizer), clip_encoder, name)
        return (load_single_file_models(parts, GPU_memory_mode, model_type),)


class LoadWanFunLora(FunLora):
    """Add a LoRA to a Wan2.1-Fun model from ComfyUI's ``loras/`` folder (chainable); merged for each run and taken
    out after it."""


class LoadWanLora(LoadWanFunLora):
    """Add a LoRA to a Wan2.1 model (chainable)."""


class LoadWan2_2Lora(LoadWanFunLora):
    """Add a LoRA pair to a Wan2.2 model (chainable): lora_name for the low-noise expert (or the one transformer),
    lora_high_name for the high-noise expert of a two-expert model, both at strength_model."""

    CATEGORY = f"{CATEGORY}/Wan2.2"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = dict(super().INPUT_TYPES()["required"])
        names = list(required)
        names.insert(names.index("lora_name") + 1, "lora_high_name")  # VideoX-Fun's widget order
        required["lora_high_name"] = (host.lora_names(), {"default": None})
        return {"required": {name: required[name] for name in names}}

    def load_lora(self, lora_name: str | None, strength_model: float, lora_cache: bool,
                  lora_high_name: str | None = None, **models: FunModels) -> tuple:  # fmt: skip
        (fun_models,) = super().load_lora(lora_name, strength_model, lora_cache, **models)
        if lora_high_name:
            high = (*fun_models.loras_high, (host.lora_path(lora_high_name), strength_model))
            fun_models = fun_models.replace(loras_high=high)
        return (fun_models,)


class LoadWan2_2FunLora(LoadWan2_2Lora):
    """Add a LoRA pair to a Wan2.2-Fun model (chainable): low-noise expert and high-noise expert."""

    CATEGORY = f"{CATEGORY}/Wan2.2-Fun"


class LoadCogVideoXFunLora(LoadWanFunLora):
    """Add a LoRA to a CogVideoX-Fun model (chainable)."""

    MODELS = "cogvideoxfun_model"
    RETURN_NAMES = ("cogvideoxfun_model",)


# ------------------------------------------------------------------------------------------
# Option nodes
# ------------------------------------------------------------------------------------------


class FunTextBox:
    """A multi-line prompt (VideoX-Fun's STRING_PROMPT type)."""

    RETURN_TYPES = (PROMPT,)
    RETURN_NAMES = ("prompt",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"prompt": ("STRING", {"multiline": True, "default": ""})}}

    def process(self, prompt: str) -> tuple:
        return (prompt,)


class FunRiflex:
    """RIFLEx: the frame frequency index k that lets a model run longer than it was trained for (0 = off)."""

    RETURN_TYPES = (RIFLEX,)
    RETURN_NAMES = ("riflex_k",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"riflex_k": ("INT", {"default": 6, "min": 0, "max": 10086})}}

    def process(self, riflex_k: int) -> tuple:
        return (riflex_k,)


class FunCompile:
    """Compile the transformer blocks with torch.compile (the model loads again with compile on)."""

    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "compile"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "cache_size_limit": ("INT", {"default": 64, "min": 0, "max": 10086}),
                "funmodels": (FUN_MODELS,),
            }
        }

    def compile(self, cache_size_limit: int, funmodels: FunModels) -> tuple:
        return (funmodels.with_load_options(compile=True).replace(compile_cache_size_limit=cache_size_limit),)


class FunAttention:
    """Choose the attention kernel (flash-attn, SageAttention or PyTorch SDPA) for the runs of this model."""

    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "funattention"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "attention_type": (list(ATTENTION_TYPES), {"default": "flash"}),
                "funmodels": (FUN_MODELS,),
            }
        }

    def funattention(self, attention_type: str, funmodels: FunModels) -> tuple:
        from videox_fun.models.attention import resolve_backend

        backend = ATTENTION_TYPES[attention_type]
        resolve_backend(backend)  # fails here, naming what to install, when the kernel cannot run
        return (funmodels.with_load_options(attention=backend),)


class FunStepCache:
    """A step cache (TeaCache or first-block cache) for every sampler run of this model; it overrides the
    samplers' TeaCache widgets."""

    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Options"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "funmodels": (FUN_MODELS,),
                "cache": (list(CACHES), {"default": "teacache"}),
                "threshold": (
                    "FLOAT",
                    {"default": DEFAULT_THRESHOLDS["teacache"], "min": 0.0, "max": 1.0, "step": 0.005},
                ),
                "num_skip_start_steps": ("INT", {"default": DEFAULT_SKIP_START_STEPS, "min": 0, "max": 50}),
                "offload": (BOOL_CHOICE, {"default": False}),
            }
        }

    def process(self, funmodels: FunModels, cache: str, threshold: float, num_skip_start_steps: int,
                offload: bool) -> tuple:  # fmt: skip
        return (funmodels.replace(step_cache=StepCache(cache, threshold, num_skip_start_steps, offload)),)


# ------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------


class FunSampler:
    """The shared sampler: subclasses choose the family, the widgets and the media sockets.

    The widgets come in VideoX-Fun's order (UI-format workflows give them by position).
    """

    FAMILY = "wan"
    MODELS = "funmodels"
    SIZE = "width_height"  # or "base_resolution"
    VIDEO_LENGTH: ClassVar[dict] = {"default": 81, "min": 5, "max": 161, "step": 4}
    DEFAULT_SIZE = (480, 832)  # (height, width)
    DEFAULT_BASE_RESOLUTION = 640
    DEFAULT_SCHEDULER = "Flow"
    STRENGTH = False  # a denoise_strength widget (video to video)
    SHIFT = True
    BOUNDARY: float | None = None  # the Wan2.2 samplers' boundary widget default (two-expert models)
    TEACACHE = True
    # Optional media sockets -> (library input name, kind: image / video / mask / camera).
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {}
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "process"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required: dict[str, Any] = {cls.MODELS: (FUN_MODELS,), "prompt": (PROMPT,), "negative_prompt": (PROMPT,)}
        required["video_length"] = ("INT", dict(cls.VIDEO_LENGTH))
        if cls.SIZE == "width_height":
            height, width = cls.DEFAULT_SIZE
            required["width"] = ("INT", {"default": width, "min": 64, "max": 2048, "step": 16})
            required["height"] = ("INT", {"default": height, "min": 64, "max": 2048, "step": 16})
            required["is_image"] = (BOOL_CHOICE, {"default": False})
        else:
            required["base_resolution"] = (BASE_RESOLUTIONS, {"default": cls.DEFAULT_BASE_RESOLUTION})
        required["seed"] = ("INT", {"default": 43, "min": 0, "max": SEED_MAX})
        required["steps"] = ("INT", {"default": 50, "min": 1, "max": 200, "step": 1})
        required["cfg"] = ("FLOAT", {"default": 6.0, "min": 1.0, "max": 20.0, "step": 0.01})
        if cls.STRENGTH:
            required["denoise_strength"] = ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.01})
        required["scheduler"] = (family_samplers(cls.FAMILY), {"default": cls.DEFAULT_SCHEDULER})
        if cls.SHIFT:
            required["shift"] = ("INT", {"default": 5, "min": 1, "max": 100, "step": 1})
        if cls.BOUNDARY is not None:
            required["boundary"] = ("FLOAT", {"default": cls.BOUNDARY, "min": 0.0, "max": 1.0, "step": 0.001})
        if cls.TEACACHE:
            required |= {
                "teacache_threshold": ("FLOAT", {"default": 0.10, "min": 0.0, "max": 1.0, "step": 0.005}),
                "enable_teacache": (BOOL_CHOICE, {"default": True}),
                "num_skip_start_steps": ("INT", {"default": 5, "min": 0, "max": 50, "step": 1}),
                "teacache_offload": (BOOL_CHOICE, {"default": True}),
                "cfg_skip_ratio": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        optional: dict[str, Any] = {socket: media_socket(kind) for socket, (_, kind) in cls.MEDIA.items()}
        if cls.TEACACHE:
            optional["riflex_k"] = (RIFLEX,)
        return {"required": required, "optional": optional}

    def process(self, **kwargs: Any) -> tuple:
        """Generate: the sockets as one request, the TeaCache widgets as a step cache; frames out as IMAGE."""
        models: FunModels = kwargs[self.MODELS]
        if models.family != self.FAMILY:
            raise ValueError(f"{type(self).__name__} runs {self.FAMILY} models; this one is {models.family}")
        inputs = self.media_inputs(kwargs)
        height, width, frames = self.size(models, kwargs, inputs)
        request = GenerationRequest(
            prompt=kwargs["prompt"],
            negative_prompt=kwargs["negative_prompt"],
            height=height,
            width=width,
            num_frames=frames,
            steps=kwargs["steps"],
            guidance_scale=kwargs["cfg"],
            shift=kwargs.get("shift"),
            sampler=SAMPLER_ALIASES.get(kwargs["scheduler"], kwargs["scheduler"]),
            seed=kwargs["seed"],
            strength=kwargs.get("denoise_strength", 1.0),
            **inputs,
        )
        cache = None
        if kwargs.get("enable_teacache"):
            cache = StepCache("teacache", kwargs["teacache_threshold"], kwargs["num_skip_start_steps"],
                              bool(kwargs["teacache_offload"]))  # fmt: skip
        result = generate(models, request, cache, kwargs.get("riflex_k") or 0, kwargs.get("cfg_skip_ratio", 0.0),
                          boundary=kwargs.get("boundary"))  # fmt: skip
        return (media.frames_to_image(result.frames),)

    def media_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The given media sockets as the library's inputs (uint8 frames, a mask video, a trajectory file)."""
        inputs: dict[str, Any] = {}
        for socket, (name, kind) in self.MEDIA.items():
            value = kwargs.get(socket)
            if value is None or (kind == "camera" and not value):
                continue
            if kind == "image":
                inputs[name] = media.image_to_frames(value, socket)[0]
            elif kind == "video":
                inputs[name] = media.image_to_frames(value, socket)
            elif kind == "mask":
                inputs[name] = media.mask_to_frames(value)
            else:
                inputs[name] = str(camera.trajectory_file(value, host.temp_folder()))
        return inputs

    def size(self, models: FunModels, kwargs: dict[str, Any], inputs: dict[str, Any]) -> tuple[int, int, int]:
        """(height, width, frames): the widgets', or from base_resolution in the first given medium's aspect."""
        frames = kwargs["video_length"]
        if self.SIZE == "width_height":
            return kwargs["height"], kwargs["width"], 1 if kwargs["is_image"] else frames
        shapes = [value.shape for value in inputs.values() if isinstance(value, torch.Tensor)]
        defaults = models.recognised.defaults
        reference = tuple(shapes[0][-3:-1]) if shapes else (defaults.height, defaults.width)
        multiple = models.recognised.sizes.multiple
        height, width = media.size_for_resolution(kwargs["base_resolution"], reference, multiple)
        return height, width, frames


def media_socket(kind: str) -> tuple:
    """The ComfyUI type of a media socket."""
    if kind == "camera":
        return ("STRING", {"forceInput": True})
    return ("MASK",) if kind == "mask" else ("IMAGE",)


class WanFunT2VSampler(FunSampler):
    """Wan2.1-Fun text to video (or one image with is_image)."""

    CATEGORY = f"{CATEGORY}/Wan2.1-Fun"


class WanFunInpaintSampler(FunSampler):
    """Wan2.1-Fun image to video: a start image, optionally an end image (text to video with neither)."""

    SIZE = "base_resolution"
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {"start_img": ("image", "image"), "end_img": ("end_image", "image")}
    CATEGORY = f"{CATEGORY}/Wan2.1-Fun"


class WanFunV2VSampler(FunSampler):
    """Wan2.1-Fun video to video: a validation video (v2v; with mask_video, inpaint), a control video, or a camera
    trajectory; a start image and a reference image where the model takes them."""

    SIZE = "base_resolution"
    STRENGTH = True
    VIDEO_LENGTH: ClassVar[dict] = {"default": 81, "min": 1, "max": 161, "step": 4}
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {
        "validation_video": ("video", "video"),
        "control_video": ("control_video", "video"),
        "start_image": ("image", "image"),
        "ref_image": ("ref_image", "image"),
        "camera_conditions": ("camera", "camera"),
        "mask_video": ("mask", "mask"),  # ours: with validation_video, the library's inpaint mode
    }
    CATEGORY = f"{CATEGORY}/Wan2.1-Fun"


class WanT2VSampler(FunSampler):
    """Wan2.1 text to video."""

    CATEGORY = f"{CATEGORY}/Wan2.1"


class WanI2VSampler(FunSampler):
    """Wan2.1 image to video from a start image."""

    SIZE = "base_resolution"
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {"start_img": ("image", "image")}
    CATEGORY = f"{CATEGORY}/Wan2.1"


class Wan2_2T2VSampler(WanT2VSampler):
    """Wan2.2 text to video; boundary: where a two-expert model (A14B) hands over to its low-noise expert."""

    BOUNDARY = 0.875
    CATEGORY = f"{CATEGORY}/Wan2.2"


class Wan2_2I2VSampler(WanI2VSampler):
    """Wan2.2 image to video from a start image (boundary as in Wan2_2T2VSampler)."""

    BOUNDARY = 0.900
    CATEGORY = f"{CATEGORY}/Wan2.2"


class Wan2_2FunT2VSampler(WanFunT2VSampler):
    """Wan2.2-Fun text to video (boundary as in Wan2_2T2VSampler)."""

    BOUNDARY = 0.875
    CATEGORY = f"{CATEGORY}/Wan2.2-Fun"


class Wan2_2FunInpaintSampler(WanFunInpaintSampler):
    """Wan2.2-Fun image to video: a start image, optionally an end image (boundary as in Wan2_2T2VSampler)."""

    BOUNDARY = 0.900
    CATEGORY = f"{CATEGORY}/Wan2.2-Fun"


class Wan2_2FunV2VSampler(WanFunV2VSampler):
    """Wan2.2-Fun video to video, control or camera, as WanFunV2VSampler, plus an end image (boundary as in
    Wan2_2T2VSampler)."""

    BOUNDARY = 0.900
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {
        "validation_video": ("video", "video"),
        "control_video": ("control_video", "video"),
        "start_image": ("image", "image"),
        "end_image": ("end_image", "image"),
        "ref_image": ("ref_image", "image"),
        "camera_conditions": ("camera", "camera"),
        "mask_video": ("mask", "mask"),  # ours, as in WanFunV2VSampler
    }
    CATEGORY = f"{CATEGORY}/Wan2.2-Fun"


class CogVideoXFunT2VSampler(FunSampler):
    """CogVideoX-Fun text to video."""

    FAMILY = "cogvideox"
    MODELS = "cogvideoxfun_model"
    VIDEO_LENGTH: ClassVar[dict] = {"default": 49, "min": 5, "max": 85, "step": 4}
    DEFAULT_SIZE = (576, 1008)
    DEFAULT_SCHEDULER = "DDIM"
    SHIFT = False
    TEACACHE = False
    CATEGORY = f"{CATEGORY}/CogVideoX-Fun"


class CogVideoXFunInpaintSampler(CogVideoXFunT2VSampler):
    """CogVideoX-Fun image to video: a start image and optionally an end image."""

    SIZE = "base_resolution"
    DEFAULT_BASE_RESOLUTION = 768
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = WanFunInpaintSampler.MEDIA


class CogVideoXFunV2VSampler(CogVideoXFunInpaintSampler):
    """CogVideoX-Fun video to video (validation video; with mask_video, inpaint) or control video."""

    STRENGTH = True
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {
        "validation_video": ("video", "video"),
        "control_video": ("control_video", "video"),
        "mask_video": ("mask", "mask"),
    }


# ------------------------------------------------------------------------------------------
# Camera, preprocessors, toy-world media
# ------------------------------------------------------------------------------------------


class CameraBasicFromChaoJie:
    """A preset camera motion (pan, zoom, roll) over video_length frames, speed times as far."""

    RETURN_TYPES = (CAMERA_POSE,)
    FUNCTION = "run"
    CATEGORY = f"{CATEGORY}/Camera"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "camera_pose": (list(camera.CAMERA_PRESETS), {"default": "Static"}),
                "speed": ("FLOAT", {"default": 1.0}),
                "video_length": ("INT", {"default": 16}),
            }
        }

    def run(self, camera_pose: str, speed: float, video_length: int) -> tuple:
        return (camera.preset_motion(camera_pose, speed, video_length),)


class CameraCombineFromChaoJie:
    """Up to four preset motions done at once."""

    RETURN_TYPES = (CAMERA_POSE,)
    FUNCTION = "run"
    CATEGORY = f"{CATEGORY}/Camera"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        preset = (list(camera.CAMERA_PRESETS), {"default": "Static"})
        poses = {f"camera_pose{i}": preset for i in range(1, 5)}
        return {"required": {**poses, "speed": ("FLOAT", {"default": 1.0}), "video_length": ("INT", {"default": 16})}}

    def run(self, camera_pose1: str, camera_pose2: str, camera_pose3: str, camera_pose4: str, speed: float,
            video_length: int) -> tuple:  # fmt: skip
        names = (camera_pose1, camera_pose2, camera_pose3, camera_pose4)
        return (camera.combine_motions([camera.preset_motion(n, speed, video_length) for n in names]),)


class CameraJoinFromChaoJie:
    """One motion after another."""

    RETURN_TYPES = (CAMERA_POSE,)
    FUNCTION = "run"
    CATEGORY = f"{CATEGORY}/Camera"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"camera_pose1": (CAMERA_POSE,), "camera_pose2": (CAMERA_POSE,)}}

    def run(self, camera_pose1: torch.Tensor, camera_pose2: torch.Tensor) -> tuple:
        return (camera.join_motions(camera_pose1, camera_pose2),)


class CameraTrajectoryFromChaoJie:
    """A motion with intrinsics as the trajectory string WanFunV2VSampler's camera_conditions reads."""

    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("camera_trajectory", "video_length")
    FUNCTION = "run"
    CATEGORY = f"{CATEGORY}/Camera"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        fine = {"min": 0, "max": 1, "step": 0.000000001}
        return {
            "required": {
                "camera_pose": (CAMERA_POSE,),
                "fx": ("FLOAT", {"default": 0.474812461, **fine}),
                "fy": ("FLOAT", {"default": 0.844111024, **fine}),
                "cx": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}),
                "cy": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}),
            }
        }

    def run(self, camera_pose: torch.Tensor, fx: float, fy: float, cx: float, cy: float) -> tuple:
        return (camera.motion_to_trajectory(camera_pose, fx, fy, cx, cy), len(camera_pose))


class ImageToCanny:
    """Canny edges of the first image of a batch (white edges on black), for control models."""

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Preprocessors"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "input_image": ("IMAGE",),
                "low_threshold": ("INT", {"default": 100, "min": 0, "max": 255, "step": 1}),
                "high_threshold": ("INT", {"default": 200, "min": 0, "max": 255, "step": 1}),
            }
        }

    def process(self, input_image: torch.Tensor, low_threshold: int, high_threshold: int) -> tuple:
        return (canny(input_image[:1], low_threshold, high_threshold),)


class VideoToCanny:
    """Canny edges of every frame of a video (its first video_length frames), for control models."""

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Preprocessors"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "input_video": ("IMAGE",),
                "low_threshold": ("INT", {"default": 100, "min": 0, "max": 255, "step": 1}),
                "high_threshold": ("INT", {"default": 200, "min": 0, "max": 255, "step": 1}),
                "video_length": ("INT", {"default": 81, "min": 1, "max": 81, "step": 4}),
            }
        }

    def process(self, input_video: torch.Tensor, low_threshold: int, high_threshold: int, video_length: int) -> tuple:
        return (canny(input_video[:video_length], low_threshold, high_threshold),)


def canny(images: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Canny edge maps of an IMAGE batch (the toy world's edge maker, so control videos match training)."""
    from videox_fun.toyworld.render import canny_control

    edges = canny_control(media.image_to_frames(images).numpy(), (low, high))
    return media.frames_to_image(torch.from_numpy(edges))


class FunToyWorldClip:
    """A clip of the toy world the packaged tiny models were trained on, from its caption: the frames, their
    Canny control video, a generate mask and the first frame (so the example workflows need no input files)."""

    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("video", "control_video", "mask", "first_frame")
    FUNCTION = "render"
    CATEGORY = f"{CATEGORY}/Toy world"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from videox_fun.toyworld.render import INPAINT_MASKS

        return {
            "required": {
                "caption": ("STRING", {"default": "a red square moving right"}),
                "width": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16}),
                "height": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16}),
                "video_length": ("INT", {"default": 17, "min": 1, "max": 161}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "mask": (list(INPAINT_MASKS), {"default": "box"}),
            }
        }

    def render(self, caption: str, width: int, height: int, video_length: int, seed: int, mask: str) -> tuple:
        from videox_fun.toyworld.render import render_clip

        clip = render_clip(caption, (height, width), video_length, seed=seed)
        frames = media.frames_to_image(torch.from_numpy(clip.frames))
        control = media.frames_to_image(torch.from_numpy(clip.control))
        return frames, control, media.frames_to_mask(torch.from_numpy(clip.masks[mask])), frames[:1]


NODE_CLASS_MAPPINGS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        FunTextBox,
        FunRiflex,
        FunCompile,
        FunAttention,
        FunStepCache,
        LoadWanFunModel,
        LoadWanFunLora,
        WanFunT2VSampler,
        WanFunInpaintSampler,
        WanFunV2VSampler,
        LoadWanModel,
        LoadWanLora,
        WanT2VSampler,
        WanI2VSampler,
        LoadWan2_2Model,
        LoadWan2_2Lora,
        Wan2_2T2VSampler,
        Wan2_2I2VSampler,
        LoadWan2_2FunModel,
        LoadWan2_2FunLora,
        Wan2_2FunT2VSampler,
        Wan2_2FunInpaintSampler,
        Wan2_2FunV2VSampler,
        LoadWanTransformerModel,
        LoadWanVAEModel,
        LoadWanTextEncoderModel,
        LoadWanClipEncoderModel,
        CombineWanPipeline,
        LoadCogVideoXFunModel,
        LoadCogVideoXFunLora,
        CogVideoXFunT2VSampler,
        CogVideoXFunInpaintSampler,
        CogVideoXFunV2VSampler,
        CameraBasicFromChaoJie,
        CameraTrajectoryFromChaoJie,
        CameraJoinFromChaoJie,
        CameraCombineFromChaoJie,
        ImageToCanny,
        VideoToCanny,
        FunToyWorldClip,
        *IMAGE_NODES,
    )
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "FunStepCache": "Fun Step Cache (TeaCache / first-block)",
    "LoadWanFunModel": "Load Wan-Fun Model",
    "LoadWanFunLora": "Load Wan-Fun Lora",
    "WanFunT2VSampler": "Wan-Fun Sampler for Text to Video",
    "WanFunInpaintSampler": "Wan-Fun Sampler for Image to Video",
    "WanFunV2VSampler": "Wan-Fun Sampler for Video to Video",
    "LoadWanModel": "Load Wan Model",
    "LoadWanLora": "Load Wan Lora",
    "WanT2VSampler": "Wan Sampler for Text to Video",
    "WanI2VSampler": "Wan Sampler for Image to Video",
    "LoadWan2_2Model": "Load Wan2.2 Model",
    "LoadWan2_2Lora": "Load Wan2.2 Lora",
    "Wan2_2T2VSampler": "Wan2.2 Sampler for Text to Video",
    "Wan2_2I2VSampler": "Wan2.2 Sampler for Image to Video",
    "LoadWan2_2FunModel": "Load Wan2.2 Fun Model",
    "LoadWan2_2FunLora": "Load Wan2.2 Fun Lora",
    "Wan2_2FunT2VSampler": "Wan2.2 Fun Sampler for Text to Video",
    "Wan2_2FunInpaintSampler": "Wan2.2 Fun Sampler for Image to Video",
    "Wan2_2FunV2VSampler": "Wan2.2 Fun Sampler for Video to Video",
    "LoadWanTransformerModel": "Load Wan Transformer Model",
    "LoadWanVAEModel": "Load Wan VAE Model",
    "LoadWanTextEncoderModel": "Load Wan TextEncoder Model",
    "LoadWanClipEncoderModel": "Load Wan ClipEncoder Model",
    "CombineWanPipeline": "Combine Wan Pipeline",
    "LoadCogVideoXFunModel": "Load CogVideoX-Fun Model",
    "LoadCogVideoXFunLora": "Load CogVideoX-Fun Lora",
    "CogVideoXFunT2VSampler": "CogVideoX-Fun Sampler for Text to Video",
    "CogVideoXFunInpaintSampler": "CogVideoX-Fun Sampler for Image to Video",
    "CogVideoXFunV2VSampler": "CogVideoX-Fun Sampler for Video to Video",
    "FunToyWorldClip": "Fun Toy-World Clip (test media)",
    **IMAGE_DISPLAY_NAMES,
}
