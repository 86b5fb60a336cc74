"""Qwen-Image test helpers, importable as ``qwenimage_helpers`` (``tests/conftest.py`` puts this folder on
``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file
from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


def sharpen_vae_posterior(folder: Path) -> None:
    """Make the VAE's posterior deterministic: log-variance channels of ``quant_conv`` = -30 (diffusers clamps
    there, std 3e-7), so diffusers' posterior samples equal our posterior modes."""
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    half = state["quant_conv.bias"].shape[0] // 2
    state["quant_conv.weight"][half:] = 0.0
    state["quant_conv.bias"][half:] = -30.0
    save_file(state, str(path))


def transformers_processor(folder: Path, monkeypatch) -> Qwen2VLProcessor:
    """transformers' own ``Qwen2VLProcessor`` of a folder's ``processor/`` (image processor + tokenizer), for
    diffusers' edit pipeline. Its constructor insists on a video processor, which needs torchvision (not installed
    here): the class check is lifted for this construction only; images never reach the video processor."""
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    images = Qwen2VLImageProcessor.from_pretrained(str(folder / "processor"))
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder / "processor"))
    return Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=None)


def random_image(size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) noise."""
    height, width = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
