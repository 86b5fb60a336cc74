"""Models from single files in ComfyUI's own model folders: what the chunked loader nodes add to the library.

ComfyUI keeps each component of a model as one file in a folder of its kind: the transformer in
``diffusion_models/``, the VAE in ``vae/``, umT5 in ``text_encoders/``, the CLIP vision tower in
``clip_vision/``. Reading such files (the Wan variant from the transformer's shapes, fp8_scaled files, the
``config`` metadata), checking that they fit and loading them is the library's
(:mod:`videox_fun.models.wan.single_files`, :func:`videox_fun.families.wan.recognise_single_files`); this module
adds what is ComfyUI's: where the tokenizer is looked for among its model folders, the log line that names the
node a missing vision tower needs, and :func:`export_single_files`, which writes a model folder or name as
single files in ComfyUI's ``models/`` layout (``python -m comfyui.write_single_files``).

The image families (Z-Image, FLUX.2, Qwen-Image) read their files through their readers
(:mod:`videox_fun.models.image_single_files`; :func:`image_reader` finds a family's); what is ComfyUI's here is
where their tokenizer and image processor folders are looked for (:func:`find_image_tokenizer`,
:func:`find_image_processor`: the model folders, ``models/Fun_Models/`` first).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from videox_fun.families import Recognised, recognise
from videox_fun.families.wan import recognise_single_files
from videox_fun.models.image_single_files import Exported as ImageExported
from videox_fun.models.image_single_files import ImageSingleFiles
from videox_fun.models.wan.single_files import Exported, WanParts, write_single_files
from videox_fun.models.wan.single_files import find_tokenizer as find_tokenizer_in

from . import host

logger = logging.getLogger("videox_fun.comfyui")

# The chunked loaders' socket types (VideoX-Fun's names), for the Wan loaders (nodes.py) and the image ones.
TRANSFORMER_MODEL, VAE_MODEL, TEXT_ENCODER_MODEL = "TransformerModel", "VAEModel", "TextEncoderModel"
TOKENIZER, PROCESSOR, CLIP_ENCODER_MODEL = "Tokenizer", "Processor", "ClipEncoderModel"
# Each image family's reader of single files, by family name (imported together: a refusal says what a file of
# another family holds, from every reader's markers).
IMAGE_READERS = {
    "zimage": "videox_fun.models.zimage.single_files:ZIMAGE_FILES",
    "flux2": "videox_fun.models.flux2.single_files:FLUX2_FILES",
    "qwenimage": "videox_fun.models.qwenimage.single_files:QWENIMAGE_FILES",
}


def find_tokenizer(text_encoder: Path) -> Path:
    """The folder with the umT5 ``tokenizer.json`` for a text encoder file: beside it (or in ``google/umt5-xxl/``
    there), else where VideoX-Fun's chunked loader reads it, ``google/umt5-xxl/`` in the model folders
    (``models/Fun_Models/``...) or in a release folder there."""
    return find_tokenizer_in(text_encoder, host.model_search_folders())


def recognise_parts(parts: WanParts) -> Recognised:
    """The library's recognition of a model joined from single files, saying in the log which node an i2v
    transformer without a vision tower needs."""
    if parts.lacks_image_encoder:
        logger.warning(
            "videox_fun: %s attends to CLIP image tokens and no clip_encoder is connected: text to video runs, an "
            "input image needs LoadWanClipEncoderModel",
            parts.transformer.path.name,
        )
    return recognise_single_files(parts)


def image_reader(family: str) -> ImageSingleFiles:
    """The reader of single files of an image family (every family's imported)."""
    readers = {name: getattr(importlib.import_module(path.split(":")[0]), path.split(":")[1])
               for name, path in IMAGE_READERS.items()}  # fmt: skip
    if family not in readers:
        raise ValueError(f"the {family} family has no single-file loaders (these do: {', '.join(readers)})")
    return readers[family]


def find_image_tokenizer(reader: ImageSingleFiles, text_encoder: Path) -> Path:
    """An image family's tokenizer folder for a text encoder file: beside it, else VideoX-Fun's folders
    (``qwen3_tokenizer``, ``flux2_tokenizer``, ``qwen2_tokenizer``, a release's ``tokenizer/``...) in the model
    folders (``models/Fun_Models/``...)."""
    return reader.find_tokenizer(text_encoder, host.model_search_folders())


def find_image_processor(reader: ImageSingleFiles) -> Path:
    """An image family's image processor folder (Qwen-Image-Edit's ``qwen2_processor``...) in the model folders."""
    return reader.find_processor(host.model_search_folders())


def export_single_files(model: str | Path, models_dir: Path, name: str, fp8: bool = False) -> Exported | ImageExported:
    """Write a model folder (or a model by name) as single files in a ComfyUI ``models/`` tree: a Wan model as
    :func:`videox_fun.models.wan.single_files.write_single_files` writes it, an image model as its family's reader
    does (:meth:`videox_fun.models.image_single_files.ImageSingleFiles.write`: ComfyUI's layouts, the tokenizer in
    ``Fun_Models/``)."""
    from videox_fun.registry import resolve_model

    found = recognise(resolve_model(model))
    if found.family.name == "wan":
        from videox_fun.pipelines.wan import WanPipeline

        return write_single_files(WanPipeline.from_pretrained(found.folder), models_dir, name, fp8)
    reader = image_reader(found.family.name)
    if fp8:
        raise ValueError(f"--fp8 writes Wan's fp8_scaled transformer; {found.folder.name} is a {reader.label} model")
    import torch

    pipe = found.family.load(found, device=torch.device("cpu"), dtype=torch.float32)
    return reader.write(pipe, models_dir, name)
