# ruff: noqa: N802, N803  (ComfyUI's INPUT_TYPES; VideoX-Fun's GPU_memory_mode widget)
"""The image families' nodes (Z-Image, FLUX.2, Qwen-Image) with VideoX-Fun's node names, sockets, widget order and
defaults (its ``comfyui/{z_image,flux2,qwenimage}/nodes.py``), thin over :mod:`videox_fun.api` as the video nodes.

A loader recognises a model folder (:func:`~.models.load_fun_models`); the chunked loaders (``Load*TransformerModel``,
``Load*VAEModel``, ``Load*TextEncoderModel``, ``LoadQwenImageProcessor``) read one component's single file from
ComfyUI's ``diffusion_models/``, ``vae/``, ``text_encoders/`` through the family's reader
(:mod:`videox_fun.models.image_single_files`) and ``Combine*Pipeline`` joins them; ``Load*ControlNetInPipeline``
names a Fun control file of ComfyUI's ``model_patches/`` for the chain (``Load*ControlNetInModel`` joins it to a
transformer file before ``Combine*Pipeline``), and a sampler turns its sockets into one
:class:`videox_fun.api.GenerationRequest` of one image (the mode its name says) and returns it as a ComfyUI IMAGE
``[1, H, W, 3]``. Where VideoX-Fun's widgets mean something the library words otherwise, the sampler says so:

* ``shift``: Z-Image's scheduler is static, so the widget is the run's flow shift; FLUX.2's and Qwen-Image's shift
  with the image size (``use_dynamic_shifting``), which ignores a static shift, so VideoX-Fun's widget changes
  nothing there and the library's resolution-dependent shift runs (``videox-fun generate`` without ``--shift``).
* ``mask_image`` is an IMAGE whose white is regenerated, as in VideoX-Fun; ``inpaint_image`` without a mask
  regenerates everything there (VideoX-Fun's all-white mask): the image is dropped with a log line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from videox_fun.api import GenerationRequest, RuntimeOptions
from videox_fun.families import get_family
from videox_fun.families.image_single_files import recognise_image_parts
from videox_fun.models.image_single_files import ComponentFile, ImageParts

from . import host, media, single_files
from .common import (
    BOOL_CHOICE,
    CATEGORY,
    FUN_MODELS,
    PROMPT,
    SEED_MAX,
    FunLora,
    ModelFileWidgets,
    family_samplers,
    memory_modes,
)
from .models import PRECISIONS, FunModels, StepCache, generate, load_fun_models, model_choices
from .single_files import PROCESSOR, TEXT_ENCODER_MODEL, TOKENIZER, TRANSFORMER_MODEL, VAE_MODEL

logger = logging.getLogger("videox_fun.comfyui")

# ComfyUI's folder of model patches, where VideoX-Fun's ControlNetIn nodes read the Fun control files.
MODEL_PATCHES = "model_patches"
SUB_TRANSFORMERS = ["transformer", "transformer_2"]  # VideoX-Fun's widget: these families have one transformer


# ------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------


class LoadZImageModel:
    """Choose a Z-Image / Z-Image-Turbo model (diffusers layout) from ``models/Fun_Models/`` or a built-in tiny one.

    The image loaders differ only in their class attributes: the family, VideoX-Fun's release names and the built-in
    tiny models' prefix.
    """

    FAMILY = "zimage"
    RELEASES: ClassVar[tuple[str, ...]] = ("Z-Image-Turbo", "Z-Image")
    TINY_PREFIXES: ClassVar[tuple[str, ...]] = ("Z-Image-",)
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Z-Image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = model_choices(cls.RELEASES, cls.TINY_PREFIXES, cls.FAMILY)
        return {
            "required": {
                "model": (names, {"default": names[0]}),
                "GPU_memory_mode": memory_modes(),
                "precision": (list(PRECISIONS), {"default": "fp16"}),
            }
        }

    def loadmodel(self, GPU_memory_mode: str, model: str, precision: str) -> tuple:
        return (load_fun_models(model, self.FAMILY, GPU_memory_mode, precision),)


class LoadFlux2Model(LoadZImageModel):
    """Choose a FLUX.2-dev model (diffusers layout) from ``models/Fun_Models/`` or a built-in tiny one."""

    FAMILY = "flux2"
    RELEASES: ClassVar[tuple[str, ...]] = ("FLUX.2-dev",)
    TINY_PREFIXES: ClassVar[tuple[str, ...]] = ("Flux2-",)
    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadQwenImageModel(LoadZImageModel):
    """Choose a Qwen-Image, Qwen-Image-Edit or Qwen-Image-Edit-2509 / 2511 (QwenImageEditPlusSampler's: several
    pictures) model (diffusers layout) from ``models/Fun_Models/`` or a built-in tiny one."""

    FAMILY = "qwenimage"
    RELEASES: ClassVar[tuple[str, ...]] = ("Qwen-Image", "Qwen-Image-2512", "Qwen-Image-Edit", "Qwen-Image-Edit-2509",
                                           "Qwen-Image-Edit-2511")  # fmt: skip
    TINY_PREFIXES: ClassVar[tuple[str, ...]] = ("Qwen-Image-",)
    CATEGORY = f"{CATEGORY}/Qwen-Image"


class LoadZImageLora(FunLora):
    """Add a LoRA to a Z-Image model from ComfyUI's ``loras/`` folder (chainable); merged for each run and taken
    out after it."""

    CATEGORY = f"{CATEGORY}/Z-Image"


class LoadFlux2Lora(FunLora):
    """Add a LoRA to a FLUX.2 model (chainable), as LoadZImageLora."""

    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadQwenImageLora(FunLora):
    """Add a LoRA to a Qwen-Image model (chainable), as LoadZImageLora."""

    CATEGORY = f"{CATEGORY}/Qwen-Image"


class LoadZImageControlNetInPipeline:
    """Give a Z-Image model a Fun control file (Z-Image-Turbo-Fun-Controlnet-Union 1.0 / 2.0 / 2.1) from ComfyUI's
    ``model_patches/`` folder, for ZImageControlSampler.

    The file's release (version, control layers, whether it reads a mask) is read from its header, and a file made
    for another base model is refused here in one line; the config widget (VideoX-Fun's YAML naming the release) is
    kept so its workflows load. The control model loads with the pipeline at the first sampler run.
    """

    FAMILY = "zimage"
    CONFIGS: ClassVar[tuple[str, ...]] = (
        "z_image/z_image_control_2.1_lite.yaml",
        "z_image/z_image_control_2.1.yaml",
        "z_image/z_image_control_2.0.yaml",
        "z_image/z_image_control_1.0.yaml",
    )
    DEFAULT_CONFIG = "z_image/z_image_control_2.1.yaml"
    SUB_TRANSFORMER = True  # VideoX-Fun's Z-Image and Qwen-Image nodes have a sub_transformer_name widget
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Z-Image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = cls.control_file_inputs()
        if cls.SUB_TRANSFORMER:
            required["sub_transformer_name"] = (SUB_TRANSFORMERS, {"default": "transformer"})
        required["funmodels"] = (FUN_MODELS,)
        return {"required": required}

    @classmethod
    def control_file_inputs(cls) -> dict[str, tuple]:
        """VideoX-Fun's config widget and the control file's, the files of ``model_patches/``."""
        files = host.model_file_names(MODEL_PATCHES)
        return {
            "config": (list(cls.CONFIGS), {"default": cls.DEFAULT_CONFIG}),
            "model_name": (files, {"default": files[0] if files else None}),
        }

    def control_file(self, model_name: str, config: str, model: str) -> Path:
        """The control file of ``model_patches/`` by its name, checked from its header to be the family's (one line
        otherwise), said in the log for ``model``."""
        path = host.model_file_path(model_name, MODEL_PATCHES)
        check_control_file(self.FAMILY, path)
        logger.info("videox_fun: %s: control file %s (its release read from the file; config %s not needed)",
                    model, path.name, config)  # fmt: skip
        return path

    def loadmodel(self, config: str, model_name: str, funmodels: FunModels,
                  sub_transformer_name: str = "transformer") -> tuple:  # fmt: skip
        check_family(type(self).__name__, self.FAMILY, funmodels)
        if sub_transformer_name != "transformer":
            raise ValueError(f"sub_transformer_name {sub_transformer_name}: {funmodels.recognised.folder.name} has "
                             "one transformer; choose transformer")  # fmt: skip
        path = self.control_file(model_name, config, funmodels.recognised.folder.name)
        return (funmodels.replace(control_path=str(path)),)


class LoadFlux2ControlNetInPipeline(LoadZImageControlNetInPipeline):
    """Give a FLUX.2 model a Fun control file (FLUX.2-dev-Fun-Controlnet-Union) from ``model_patches/``, for
    Flux2ControlSampler (checked as in LoadZImageControlNetInPipeline)."""

    FAMILY = "flux2"
    CONFIGS: ClassVar[tuple[str, ...]] = ("flux2/flux2_control.yaml",)
    DEFAULT_CONFIG = "flux2/flux2_control.yaml"
    SUB_TRANSFORMER = False
    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadQwenImageControlNetInPipeline(LoadZImageControlNetInPipeline):
    """Give a Qwen-Image model a Fun control file (Qwen-Image-2512-Fun-Controlnet-Union) from ``model_patches/``,
    for QwenImageControlSampler (checked as in LoadZImageControlNetInPipeline)."""

    FAMILY = "qwenimage"
    CONFIGS: ClassVar[tuple[str, ...]] = ("qwenimage/qwenimage_control.yaml",)
    DEFAULT_CONFIG = "qwenimage/qwenimage_control.yaml"
    CATEGORY = f"{CATEGORY}/Qwen-Image"


# ------------------------------------------------------------------------------------------
# Chunked loaders: one component per file, from ComfyUI's own model folders
# ------------------------------------------------------------------------------------------


class ControlNetInModel:
    """What VideoX-Fun's ``Load*ControlNetInModel`` nodes add to the family's ``Load*ControlNetInPipeline`` (a node
    lists it first among its bases and takes the family, widgets and file check from the other): a transformer
    socket in and out in place of the funmodels chain. VideoX-Fun builds the control transformer there; here the
    transformer file of ``Load*TransformerModel`` gets the control file (checked from its header), and
    ``Combine*Pipeline`` hands it to the control samplers as ``Load*ControlNetInPipeline`` does; the control model
    loads with the pipeline at the first sampler run."""

    RETURN_TYPES = (TRANSFORMER_MODEL,)
    RETURN_NAMES = ("transformer",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**cls.control_file_inputs(), "transformer": (TRANSFORMER_MODEL,)}}

    def loadmodel(self, config: str, model_name: str, transformer: ComponentFile) -> tuple:
        """The transformer file with the control file joined; one line naming the node when the transformer is of
        another family or the control file another base model's (or not in ``model_patches/``)."""
        with refused_by(type(self).__name__):
            family = getattr(transformer, "family", "wan")  # LoadWanTransformerModel's files share the socket type
            if family != self.FAMILY:
                label = single_files.image_reader(family).label if family in single_files.IMAGE_READERS else family
                own = single_files.image_reader(self.FAMILY).label
                raise ValueError(f"{transformer.path.name} is a {label} transformer; a {own} control file joins a "
                                 f"{own} transformer")  # fmt: skip
            path = self.control_file(model_name, config, transformer.path.name)
        return (dataclasses.replace(transformer, control=path),)


class LoadZImageControlNetInModel(ControlNetInModel, LoadZImageControlNetInPipeline):
    """Join a Fun control file (Z-Image-Turbo-Fun-Controlnet-Union 1.0 / 2.0 / 2.1) of ComfyUI's ``model_patches/``
    to a Z-Image transformer file (LoadZImageTransformerModel), for CombineZImagePipeline and ZImageControlSampler;
    the file of another base model is refused in one line."""


class LoadFlux2ControlNetInModel(ControlNetInModel, LoadFlux2ControlNetInPipeline):
    """Join a Fun control file (FLUX.2-dev-Fun-Controlnet-Union) of ``model_patches/`` to a FLUX.2 transformer file,
    for CombineFlux2Pipeline and Flux2ControlSampler (as LoadZImageControlNetInModel)."""


class LoadQwenImageControlNetInModel(ControlNetInModel, LoadQwenImageControlNetInPipeline):
    """Join a Fun control file (Qwen-Image-2512-Fun-Controlnet-Union) of ``model_patches/`` to a Qwen-Image
    transformer file, for CombineQwenImagePipeline and QwenImageControlSampler (as LoadZImageControlNetInModel)."""


@contextmanager
def refused_by(node: str) -> Iterator[None]:
    """The library's one-line refusal (a file of another family or kind, a missing tokenizer...) with the node's
    name in front, of the same kind (FileNotFoundError or ValueError)."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{node}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{node}: {err}") from None


class LoadZImageTransformerModel(ModelFileWidgets):
    """Read a Z-Image transformer single file from ComfyUI's ``diffusion_models/`` (ComfyUI's
    ``z_image_turbo_bf16.safetensors``: the original names; diffusers' too). It is told from its tensor names (a
    file of another family, or a VAE, is refused in one line) and its config read off its shapes; model_name says
    what was found; the weights load when a sampler first needs them (float8 files widened to the precision).

    The image families' chunked loaders differ in their class attributes: the family, the ComfyUI folders they list,
    the widgets they add before precision, the reader method and outputs.
    """

    FAMILY = "zimage"
    KIND = "transformer"
    RETURN_TYPES: tuple[str, ...] = (TRANSFORMER_MODEL, "STRING")
    RETURN_NAMES: tuple[str, ...] = ("transformer", "model_name")
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Z-Image"

    def loadmodel(self, model_name: str, precision: str, **options: Any) -> tuple:
        with refused_by(type(self).__name__):
            path = host.model_file_path(model_name, *self.FOLDERS)
            return self.read(single_files.image_reader(self.FAMILY), path, PRECISIONS[precision], **options)

    def read(self, reader: Any, path: Path, dtype: str, **options: Any) -> tuple:
        """The node's outputs for a file (read from its header)."""
        found = reader.read_transformer(path, dtype, **options)
        return found, found.label


class LoadZImageVAEModel(LoadZImageTransformerModel):
    """Read a Z-Image VAE single file from ComfyUI's ``vae/`` (``ae.safetensors``: FLUX.1's autoencoder in its
    original names; diffusers' too)."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("vae",)
    RETURN_TYPES: tuple[str, ...] = (VAE_MODEL,)
    RETURN_NAMES: tuple[str, ...] = ("vae",)

    def read(self, reader: Any, path: Path, dtype: str, **options: Any) -> tuple:
        return (reader.read_vae(path, dtype),)


class LoadZImageTextEncoderModel(LoadZImageTransformerModel):
    """Read a Z-Image text encoder single file from ComfyUI's ``text_encoders/`` (``qwen_3_4b.safetensors``); the
    tokenizer is the Qwen3 one beside the file, else ``qwen3_tokenizer/`` (or ``Z-Image-Turbo/tokenizer``,
    ``Qwen3-4B/``) in ``models/Fun_Models/``, as VideoX-Fun keeps it."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("text_encoders",)
    RETURN_TYPES: tuple[str, ...] = (TEXT_ENCODER_MODEL, TOKENIZER)
    RETURN_NAMES: tuple[str, ...] = ("text_encoder", "tokenizer")

    def read(self, reader: Any, path: Path, dtype: str, **options: Any) -> tuple:
        return reader.read_text_encoder(path, dtype), single_files.find_image_tokenizer(reader, path)


class CombineZImagePipeline:
    """Join the single-file components into a model for the Z-Image samplers (the parts checked to be Z-Image's and
    to fit; Turbo when the model name or the transformer file's says so). The pipeline loads at the first sampler
    run, in the transformer's precision. processor is VideoX-Fun's optional socket, unused by Z-Image."""

    FAMILY = "zimage"
    PROCESSOR = True  # VideoX-Fun's node has the optional processor socket
    LOADERS: ClassVar[dict[str, str]] = {"transformer": "LoadZImageTransformerModel", "vae": "LoadZImageVAEModel",
                                         "text_encoder": "LoadZImageTextEncoderModel",
                                         "tokenizer": "LoadZImageTextEncoderModel"}  # fmt: skip
    RETURN_TYPES = (FUN_MODELS,)
    RETURN_NAMES = ("funmodels",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Z-Image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        spec: dict[str, Any] = {
            "required": {
                "transformer": (TRANSFORMER_MODEL,),
                "vae": (VAE_MODEL,),
                "text_encoder": (TEXT_ENCODER_MODEL,),
                "tokenizer": (TOKENIZER,),
                "model_name": ("STRING", {"default": ""}),  # VideoX-Fun's; linked from the transformer loader
                "GPU_memory_mode": memory_modes(),
            }
        }
        if cls.PROCESSOR:
            spec["optional"] = {"processor": (PROCESSOR,)}
        return spec

    def loadmodel(self, model_name: str, GPU_memory_mode: str, transformer: ComponentFile | None = None,
                  vae: ComponentFile | None = None, text_encoder: ComponentFile | None = None,
                  tokenizer: Path | None = None, processor: Path | None = None) -> tuple:  # fmt: skip
        node = type(self).__name__
        given = {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
        missing = [name for name, value in given.items() if value is None]
        if missing:
            loaders = ", ".join(dict.fromkeys(self.LOADERS[name] for name in missing))
            raise ValueError(f"{node}: no {', '.join(missing)} connected (from {loaders})")
        reader = single_files.image_reader(self.FAMILY)
        if processor is not None and not reader.processor_folders:
            logger.info("videox_fun: %s: %s models read no image processor; processor unused", node, reader.label)
            processor = None
        with refused_by(node):
            parts = ImageParts(reader, transformer, vae, text_encoder, Path(tokenizer),
                               Path(processor) if processor is not None else None,
                               model_name or transformer.path.stem)  # fmt: skip
            return (image_single_file_models(parts, GPU_memory_mode),)


def image_single_file_models(parts: ImageParts, memory_mode: str) -> FunModels:
    """An image model joined from single files: recognised from the files' headers (the parts checked to fit),
    loaded by the first sampler that needs it, in the transformer's precision; the control file joined to the
    transformer (Load*ControlNetInModel) is the control samplers' ``control_path``."""
    recognised = recognise_image_parts(parts)
    options = RuntimeOptions(device=host.torch_device(), dtype=parts.transformer.precision, gpu_memory_mode=memory_mode)
    options.check()
    control = parts.transformer.control
    return FunModels(recognised, options, control_path=str(control) if control is not None else None)


class LoadFlux2TransformerModel(LoadZImageTransformerModel):
    """Read a FLUX.2 transformer single file from ``diffusion_models/`` (BFL's ``flux2-dev.safetensors`` names, as
    ComfyUI's files; diffusers' too), as LoadZImageTransformerModel (a FLUX.1 file is refused in one line)."""

    FAMILY = "flux2"
    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadFlux2VAEModel(LoadZImageVAEModel):
    """Read a FLUX.2 VAE single file from ``vae/`` (``flux2-vae.safetensors``: diffusers' or the original names)."""

    FAMILY = "flux2"
    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadFlux2TextEncoderModel(LoadZImageTextEncoderModel):
    """Read a FLUX.2 text encoder single file from ``text_encoders/`` (ComfyUI's ``mistral_3_small_flux2_*``, or a
    transformers Mistral3 export: its language model is what FLUX.2 reads); the tokenizer beside it, else
    ``flux2_tokenizer/`` (or ``FLUX.2-dev/tokenizer``) in ``models/Fun_Models/``."""

    FAMILY = "flux2"
    CATEGORY = f"{CATEGORY}/FLUX.2"


class CombineFlux2Pipeline(CombineZImagePipeline):
    """Join the single-file components into a model for the FLUX.2 samplers, as CombineZImagePipeline (no processor
    socket, as in VideoX-Fun)."""

    FAMILY = "flux2"
    PROCESSOR = False
    LOADERS: ClassVar[dict[str, str]] = {name: loader.replace("ZImage", "Flux2")
                                         for name, loader in CombineZImagePipeline.LOADERS.items()}  # fmt: skip
    CATEGORY = f"{CATEGORY}/FLUX.2"


class LoadQwenImageTransformerModel(LoadZImageTransformerModel):
    """Read a Qwen-Image (or Qwen-Image-Edit) transformer single file from ``diffusion_models/`` (ComfyUI's
    ``qwen_image_*.safetensors``), as LoadZImageTransformerModel; zero_cond_t (VideoX-Fun's widget: Edit-2511's
    pictures modulated at timestep 0) is not in the weights, so the widget says it."""

    FAMILY = "qwenimage"
    OPTIONS: ClassVar[dict[str, tuple]] = {"zero_cond_t": (BOOL_CHOICE, {"default": False})}
    CATEGORY = f"{CATEGORY}/Qwen-Image"


class LoadQwenImageVAEModel(LoadZImageVAEModel):
    """Read a Qwen-Image VAE single file from ``vae/`` (``qwen_image_vae.safetensors``: the Wan2.1 VAE's original
    names; diffusers' too)."""

    FAMILY = "qwenimage"
    CATEGORY = f"{CATEGORY}/Qwen-Image"


class LoadQwenImageTextEncoderModel(LoadZImageTextEncoderModel):
    """Read a Qwen2.5-VL text encoder single file from ``text_encoders/`` (ComfyUI's ``qwen_2.5_vl_7b*``,
    ``fp8_scaled`` widened); the tokenizer beside it, else ``qwen2_tokenizer/`` (or ``Qwen-Image/tokenizer``) in
    ``models/Fun_Models/``."""

    FAMILY = "qwenimage"
    CATEGORY = f"{CATEGORY}/Qwen-Image"


class LoadQwenImageProcessor:
    """Find Qwen-Image-Edit's image processor (``qwen2_processor/``, or ``Qwen-Image-Edit/processor``, in
    ``models/Fun_Models/``) for CombineQwenImagePipeline: with it the files make an edit model."""

    FAMILY = "qwenimage"
    RETURN_TYPES = (PROCESSOR,)
    RETURN_NAMES = ("processor",)
    FUNCTION = "loadmodel"
    CATEGORY = f"{CATEGORY}/Qwen-Image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def loadmodel(self) -> tuple:
        with refused_by(type(self).__name__):
            return (single_files.find_image_processor(single_files.image_reader(self.FAMILY)),)


class CombineQwenImagePipeline(CombineZImagePipeline):
    """Join the single-file components into a model for the Qwen-Image samplers, as CombineZImagePipeline: with a
    processor (LoadQwenImageProcessor) an edit model, Edit-2509 when model_name (or the transformer's file name) says
    2509 or 2511, as in VideoX-Fun; without one Qwen-Image (text to image, control)."""

    FAMILY = "qwenimage"
    LOADERS: ClassVar[dict[str, str]] = {name: loader.replace("ZImage", "QwenImage")
                                         for name, loader in CombineZImagePipeline.LOADERS.items()}  # fmt: skip
    CATEGORY = f"{CATEGORY}/Qwen-Image"


def check_family(node: str, family: str, models: FunModels) -> None:
    """Fail when a node of ``family`` gets another family's model."""
    if models.family != family:
        raise ValueError(f"{node} runs {family} models; this one is {models.family}")


def check_control_file(family: str, path: Path) -> None:
    """The family's one-line check of a control file (missing, or made for another base model), from its header."""
    setting = next(s for s in get_family(family).settings if s.name == "control_path")
    assert setting.check is not None
    setting.check(path, "control")


# ------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------


class ZImageT2ISampler:
    """Z-Image text to image (one image); Turbo runs without guidance (cfg 0), as VideoX-Fun's default.

    The image samplers share this class and differ in their class attributes: the family, VideoX-Fun's widget
    defaults, which widgets they have, the mode and the optional IMAGE sockets.
    """

    FAMILY = "zimage"
    MODE = "t2i"  # the control samplers choose control / control_inpaint from the sockets given
    NEGATIVE_PROMPT = True
    DEFAULT_SIZE = (1184, 1568)  # (height, width)
    MAX_SIDE = 20480
    DEFAULT_STEPS = 8
    CFG: ClassVar[dict] = {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.01}
    SHIFT: ClassVar[tuple] = ("INT", {"default": 3, "min": 1, "max": 100, "step": 1})
    STATIC_SHIFT = True  # the shift widget is the run's (False: VideoX-Fun's dynamic-shift scheduler ignores it)
    TEACACHE_THRESHOLD: ClassVar[float | None] = None  # the Qwen-Image samplers' TeaCache widgets' default
    CONTROL_CONTEXT_SCALE: ClassVar[float | None] = None  # the control samplers' widget default
    # Optional IMAGE sockets -> the library's input name (None: a socket the library does not serve, refused).
    MEDIA: ClassVar[dict[str, str | None]] = {}
    UNSERVED: ClassVar[dict[str, str]] = {}  # why each refused socket is not served, for its message
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "process"
    CATEGORY = f"{CATEGORY}/Z-Image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required: dict[str, Any] = {"funmodels": (FUN_MODELS,), "prompt": (PROMPT,)}
        if cls.NEGATIVE_PROMPT:
            required["negative_prompt"] = (PROMPT,)
        height, width = cls.DEFAULT_SIZE
        required["width"] = ("INT", {"default": width, "min": 64, "max": cls.MAX_SIDE, "step": 16})
        required["height"] = ("INT", {"default": height, "min": 64, "max": cls.MAX_SIDE, "step": 16})
        required["seed"] = ("INT", {"default": 43, "min": 0, "max": SEED_MAX})
        required["steps"] = ("INT", {"default": cls.DEFAULT_STEPS, "min": 1, "max": 200, "step": 1})
        required["cfg"] = ("FLOAT", dict(cls.CFG))
        required["scheduler"] = (family_samplers(cls.FAMILY), {"default": "Flow"})
        required["shift"] = cls.SHIFT
        if cls.TEACACHE_THRESHOLD is not None:
            threshold = {"default": cls.TEACACHE_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.005}
            required |= {
                "teacache_threshold": ("FLOAT", threshold),
                "enable_teacache": (BOOL_CHOICE, {"default": True}),
                "num_skip_start_steps": ("INT", {"default": 5, "min": 0, "max": 50, "step": 1}),
                "teacache_offload": (BOOL_CHOICE, {"default": True}),
                "cfg_skip_ratio": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        if cls.CONTROL_CONTEXT_SCALE is not None:
            scale = {"default": cls.CONTROL_CONTEXT_SCALE, "min": 0.0, "max": 2.0, "step": 0.01}
            required["control_context_scale"] = ("FLOAT", scale)
        spec: dict[str, Any] = {"required": required}
        if cls.MEDIA:
            spec["optional"] = {socket: ("IMAGE",) for socket in cls.MEDIA}
        return spec

    def process(self, **kwargs: Any) -> tuple:
        """Generate one image through the library: the sockets as one request; the image out as IMAGE [1, H, W, 3]."""
        models: FunModels = kwargs["funmodels"]
        check_family(type(self).__name__, self.FAMILY, models)
        inputs = self.media_inputs(kwargs)
        request = GenerationRequest(
            prompt=kwargs["prompt"],
            negative_prompt=kwargs.get("negative_prompt"),
            mode=self.mode(inputs),
            height=kwargs["height"],
            width=kwargs["width"],
            num_frames=1,
            steps=kwargs["steps"],
            guidance_scale=kwargs["cfg"],
            shift=kwargs["shift"] if self.STATIC_SHIFT else None,
            sampler=kwargs["scheduler"],
            seed=kwargs["seed"],
            extra=self.settings(models, kwargs),
            **inputs,
        )
        cache = None
        if kwargs.get("enable_teacache"):
            cache = StepCache("teacache", kwargs["teacache_threshold"], kwargs["num_skip_start_steps"],
                              bool(kwargs["teacache_offload"]))  # fmt: skip
        result = generate(models, request, cache, cfg_skip_ratio=kwargs.get("cfg_skip_ratio", 0.0))
        return (media.frames_to_image(result.frames),)

    def media_inputs(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The connected IMAGE sockets as the library's inputs: the first image of each batch, uint8 (H, W, 3)."""
        inputs = {}
        for socket, name in self.MEDIA.items():
            value = kwargs.get(socket)
            if value is None:
                continue
            if name is None:
                why = self.UNSERVED.get(socket, "")
                raise ValueError(f"{type(self).__name__}: {socket} is not served by this version{why}; unconnect it")
            inputs[name] = media.image_to_frames(value, socket)[0]
        return inputs

    def mode(self, inputs: dict[str, torch.Tensor]) -> str:
        """The library's mode of this run."""
        return self.MODE

    def settings(self, models: FunModels, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The family settings of this run (``GenerationRequest.extra``): none outside the control samplers."""
        return {}


class ZImageControlSampler(ZImageT2ISampler):
    """Z-Image with a Fun control file (the folder config's, or LoadZImageControlNetInPipeline's): follow
    control_image; with inpaint_image and mask_image (white = regenerate), inpaint following control_image when
    given (a 2.x file, which reads a mask)."""

    CONTROL_CONTEXT_SCALE = 0.80
    MEDIA: ClassVar[dict[str, str | None]] = {"control_image": "control_video", "inpaint_image": "image",
                                               "mask_image": "mask"}  # fmt: skip

    def mode(self, inputs: dict[str, torch.Tensor]) -> str:
        """control, or control_inpaint with a mask; an inpaint image without one regenerates everywhere (VideoX-Fun
        fills a missing mask white), which is control."""
        name = type(self).__name__
        if "mask" in inputs and "image" not in inputs:
            raise ValueError(f"{name}: mask_image needs inpaint_image (the image whose white-masked part is redone)")
        if "image" in inputs and "mask" not in inputs:
            logger.warning("videox_fun: %s: inpaint_image without mask_image regenerates every pixel; ignored", name)
            del inputs["image"]
        if "mask" in inputs:
            return "control_inpaint"
        if "control_video" not in inputs:
            raise ValueError(f"{name}: connect control_image (or inpaint_image and mask_image)")
        return "control"

    def settings(self, models: FunModels, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The control file of the chain (else the folder config's) and the widget's control_context_scale."""
        chosen = {"control_path": models.control_path} if models.control_path else {}
        return {**chosen, "control_context_scale": kwargs["control_context_scale"]}


class Flux2T2ISampler(ZImageT2ISampler):
    """FLUX.2 text to image (one image); cfg is the embedded guidance (no negative prompt, as in VideoX-Fun)."""

    FAMILY = "flux2"
    NEGATIVE_PROMPT = False
    DEFAULT_SIZE = (992, 1728)
    MAX_SIDE = 2048
    DEFAULT_STEPS = 25
    CFG: ClassVar[dict] = {"default": 4.0, "min": 1.0, "max": 20.0, "step": 0.01}
    SHIFT: ClassVar[tuple] = ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1})
    STATIC_SHIFT = False
    CATEGORY = f"{CATEGORY}/FLUX.2"


class Flux2ControlSampler(ZImageControlSampler):
    """FLUX.2 with a Fun control file, as ZImageControlSampler; ``image`` (VideoX-Fun's reference pictures beside the
    control) is refused when connected: the library's FLUX.2 reference editing (mode ``edit``) takes no control."""

    FAMILY = "flux2"
    NEGATIVE_PROMPT = False
    DEFAULT_SIZE = (1728, 992)
    MAX_SIDE = 20480
    DEFAULT_STEPS = 50
    CFG: ClassVar[dict] = {"default": 4.0, "min": 0.0, "max": 20.0, "step": 0.01}
    SHIFT: ClassVar[tuple] = ("INT", {"default": 1, "min": 1, "max": 100, "step": 1})
    STATIC_SHIFT = False
    CONTROL_CONTEXT_SCALE = 0.75
    MEDIA: ClassVar[dict[str, str | None]] = {**ZImageControlSampler.MEDIA, "image": None}
    UNSERVED: ClassVar[dict[str, str]] = {
        "image": " (reference pictures beside a control file: the library's FLUX.2 reference editing, mode edit, "
        "runs without one)"
    }
    CATEGORY = f"{CATEGORY}/FLUX.2"


class QwenImageT2VSampler(ZImageT2ISampler):
    """Qwen-Image text to image (VideoX-Fun's name; one image); cfg is the true CFG scale with the negative prompt,
    TeaCache where the model has coefficients."""

    FAMILY = "qwenimage"
    DEFAULT_SIZE = (768, 1344)
    MAX_SIDE = 2048
    DEFAULT_STEPS = 50
    CFG: ClassVar[dict] = {"default": 4.0, "min": 1.0, "max": 20.0, "step": 0.01}
    SHIFT: ClassVar[tuple] = ("INT", {"default": 1, "min": 1, "max": 100, "step": 1})
    STATIC_SHIFT = False
    TEACACHE_THRESHOLD = 0.25
    CATEGORY = f"{CATEGORY}/Qwen-Image"


class QwenImageEditSampler(QwenImageT2VSampler):
    """Qwen-Image-Edit: change ``image`` (the first of the batch) as the prompt says, at width x height."""

    MODE = "edit"
    MEDIA: ClassVar[dict[str, str | None]] = {"image": "image"}

    def mode(self, inputs: dict[str, torch.Tensor]) -> str:
        """edit, which needs the image."""
        if "image" not in inputs:
            raise ValueError(f"{type(self).__name__}: connect image (the image to edit)")
        return self.MODE


class QwenImageEditPlusSampler(QwenImageEditSampler):
    """Qwen-Image-Edit-2509: change the pictures of ``image`` as the prompt says, at width x height. Each image of
    the batch is a picture (up to 3: the first is the library's ``image``, the rest its ``ref_image``), where
    VideoX-Fun's node reads the first alone; one image runs as there."""

    def media_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The batch's first image as ``image``, the others as ``ref_image`` (uint8 (H, W, 3) each)."""
        images = kwargs.get("image")
        if images is None:
            return {}
        frames = media.image_to_frames(images, "image")  # (B, H, W, 3)
        return {"image": frames[0], **({"ref_image": list(frames[1:])} if len(frames) > 1 else {})}


class QwenImageControlSampler(ZImageControlSampler):
    """Qwen-Image with a Fun control file, as ZImageControlSampler (TeaCache widgets as QwenImageT2VSampler)."""

    FAMILY = "qwenimage"
    DEFAULT_SIZE = (1184, 1568)
    DEFAULT_STEPS = 40
    CFG: ClassVar[dict] = {"default": 4.0, "min": 0.0, "max": 20.0, "step": 0.01}
    STATIC_SHIFT = False
    TEACACHE_THRESHOLD = 0.25
    CATEGORY = f"{CATEGORY}/Qwen-Image"


IMAGE_NODES: tuple[type, ...] = (
    LoadZImageModel,
    LoadZImageTransformerModel,
    LoadZImageVAEModel,
    LoadZImageTextEncoderModel,
    CombineZImagePipeline,
    LoadZImageLora,
    LoadZImageControlNetInPipeline,
    LoadZImageControlNetInModel,
    ZImageT2ISampler,
    ZImageControlSampler,
    LoadFlux2Model,
    LoadFlux2TransformerModel,
    LoadFlux2VAEModel,
    LoadFlux2TextEncoderModel,
    CombineFlux2Pipeline,
    LoadFlux2Lora,
    LoadFlux2ControlNetInPipeline,
    LoadFlux2ControlNetInModel,
    Flux2T2ISampler,
    Flux2ControlSampler,
    LoadQwenImageModel,
    LoadQwenImageTransformerModel,
    LoadQwenImageVAEModel,
    LoadQwenImageTextEncoderModel,
    LoadQwenImageProcessor,
    CombineQwenImagePipeline,
    LoadQwenImageLora,
    LoadQwenImageControlNetInPipeline,
    LoadQwenImageControlNetInModel,
    QwenImageT2VSampler,
    QwenImageEditSampler,
    QwenImageEditPlusSampler,
    QwenImageControlSampler,
)
# VideoX-Fun's display names (comfyui/comfyui_nodes.py).
IMAGE_DISPLAY_NAMES = {
    "LoadZImageModel": "Load ZImage Model",
    "LoadZImageTransformerModel": "Load ZImage Transformer Model",
    "LoadZImageVAEModel": "Load ZImage VAE Model",
    "LoadZImageTextEncoderModel": "Load ZImage TextEncoder Model",
    "CombineZImagePipeline": "Combine ZImage Pipeline",
    "LoadZImageLora": "Load ZImage Lora",
    "LoadZImageControlNetInPipeline": "LoadZImageControlNetInPipeline",
    "LoadZImageControlNetInModel": "LoadZImageControlNetInModel",
    "ZImageT2ISampler": "ZImage T2I Sampler",
    "ZImageControlSampler": "ZImage Control Sampler",
    "LoadFlux2Model": "Load FLUX2 Model",
    "LoadFlux2TransformerModel": "Load FLUX2 Transformer Model",
    "LoadFlux2VAEModel": "Load FLUX2 VAE Model",
    "LoadFlux2TextEncoderModel": "Load FLUX2 Text Encoder Model",
    "CombineFlux2Pipeline": "Combine FLUX2 Pipeline",
    "LoadFlux2Lora": "Load FLUX2 Lora",
    "LoadFlux2ControlNetInPipeline": "Load Flux2 ControlNet In Pipeline",
    "LoadFlux2ControlNetInModel": "Load Flux2 ControlNet In Model",
    "Flux2T2ISampler": "FLUX2 Text to Image Sampler",
    "Flux2ControlSampler": "FLUX2 Control Sampler",
    "LoadQwenImageModel": "Load QwenImage Model",
    "LoadQwenImageTransformerModel": "Load QwenImage Transformer Model",
    "LoadQwenImageVAEModel": "Load QwenImage VAE Model",
    "LoadQwenImageTextEncoderModel": "Load QwenImage TextEncoder Model",
    "LoadQwenImageProcessor": "Load QwenImage Processor",
    "CombineQwenImagePipeline": "Combine QwenImage Pipeline",
    "LoadQwenImageLora": "Load QwenImage Lora",
    "LoadQwenImageControlNetInPipeline": "Load QwenImage ControlNet In Pipeline",
    "LoadQwenImageControlNetInModel": "Load QwenImage ControlNet In Model",
    "QwenImageT2VSampler": "QwenImage T2V Sampler",
    "QwenImageEditSampler": "QwenImage Edit Sampler",
    "QwenImageEditPlusSampler": "QwenImage Edit Plus Sampler",
    "QwenImageControlSampler": "QwenImage Control Sampler",
}
