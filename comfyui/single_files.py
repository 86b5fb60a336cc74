"""Wan models from single files in ComfyUI's own model folders: what the chunked loader nodes add to the library.

ComfyUI keeps each component of a model as one file in a folder of its kind: the transformer in
``diffusion_models/``, the VAE in ``vae/``, umT5 in ``text_encoders/``, the CLIP vision tower in
``clip_vision/``. Reading such files (the Wan variant from the transformer's shapes, fp8_scaled files, the
``config`` metadata), checking that they fit and loading them is the library's
(:mod:`videox_fun.models.wan.single_files`, :func:`videox_fun.families.wan.recognise_single_files`); this module
adds what is ComfyUI's: where the tokenizer is looked for among its model folders, the log line that names the
node a missing vision tower needs, and :func:`export_single_files`, which writes a model folder or name as
single files in ComfyUI's ``models/`` layout (``python -m comfyui.write_single_files``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from videox_fun.families import Recognised
from videox_fun.families.wan import recognise_single_files
from videox_fun.models.wan.single_files import Exported, WanParts, write_single_files
from videox_fun.models.wan.single_files import find_tokenizer as find_tokenizer_in

from . import host

logger = logging.getLogger("videox_fun.comfyui")


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


def export_single_files(model: str | Path, models_dir: Path, name: str, fp8: bool = False) -> Exported:
    """Write a model folder (or a model by name) as single files in a ComfyUI ``models/`` tree (see
    :func:`videox_fun.models.wan.single_files.write_single_files`)."""
    from videox_fun.pipelines.wan import WanPipeline

    return write_single_files(WanPipeline.from_pretrained(model), models_dir, name, fp8)
