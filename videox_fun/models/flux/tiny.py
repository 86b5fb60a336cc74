"""Tiny FLUX.1 folders: the real architecture at toy sizes, in the diffusers layout of a release.

``transformer/``, ``vae/``, ``text_encoder/`` + ``tokenizer/`` (CLIP), ``text_encoder_2/`` + ``tokenizer_2/``
(T5), ``scheduler/`` and ``model_index.json``, with seeded random weights: tests load them exactly as a
downloaded model, and diffusers' ``FluxPipeline`` loads the same components for parity checks.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase, T5EncoderModel

from ...config import GenerationDefaults, write_folder_config
from ...io.files import reset_tree_modes
from ..cogvideox.text_encoder import tiny_t5_config
from ..wan.text_encoder import build_word_tokenizer
from ..wan.tiny import TOY_VOCABULARY
from .text_encoder import CLIP_TEXT_LEN, tiny_clip_config
from .transformer import TRANSFORMER_CLASS_NAME, FluxTransformer
from .vae import FluxVAE, tiny_vae_config

TINY_TEXT_DIM = 32
VARIANTS = ("dev", "schnell")

# The released scheduler/scheduler_config.json of each variant (model-facts: not verified against the files;
# the values are diffusers' FLUX defaults: dynamic shifting for dev, a static shift of 1 for schnell).
_SCHEDULER_COMMON: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
}
SCHEDULER_CONFIGS: dict[str, dict[str, Any]] = {
    "FLUX.1-dev": {**_SCHEDULER_COMMON, "shift": 3.0, "use_dynamic_shifting": True},
    "FLUX.1-schnell": {**_SCHEDULER_COMMON, "shift": 1.0, "use_dynamic_shifting": False},
}
# Sizes the tiny random folders run at in seconds on a CPU (when built as a named built-in model).
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 1, "fps": 1, "sampler": "Flow", "shift": 0.0}


def tiny_transformer_config(variant: str = "dev", text_dim: int = TINY_TEXT_DIM) -> dict[str, Any]:
    """A FLUX.1 transformer of 2 double + 2 single blocks, 2 heads of 16 (rotary split 4 / 6 / 6)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny FLUX.1 variant {variant!r}; choose one of {VARIANTS}")
    return {
        "_class_name": TRANSFORMER_CLASS_NAME,
        "patch_size": 1,
        "in_channels": 64,
        "out_channels": None,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": text_dim,
        "pooled_projection_dim": text_dim,
        "guidance_embeds": variant == "dev",
        "axes_dims_rope": [4, 6, 6],
    }


def build_clip_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerBase:
    """A CLIP BPE tokenizer (the release's kind: lower-cased, ``</w>`` word ends, start / end tokens, 77 long)
    whose merges make each of ``words`` one token; other text falls back to letters."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: dict[str, None] = {}
    for char in sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:  # left to right: "r e" -> "re", "re d</w>" -> "red</w>"
            merges.setdefault(f"{merged} {piece}")
            merged += piece
            vocab.setdefault(merged, len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "model_max_length": CLIP_TEXT_LEN}  # fmt: skip
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(specials))
        return CLIPTokenizer.from_pretrained(folder)


def build_tiny_flux_folder(folder: str | Path, variant: str = "dev", seed: int = 0, note: str | None = None) -> Path:
    """Write a complete tiny FLUX.1 folder of ``variant`` (dev / schnell) with weights seeded by ``seed``.

    With a ``note`` (a built-in model's), the folder also gets a ``videox_fun.yaml`` with tiny generation
    defaults (64x64, the variant's steps and guidance) and that note, shown when it loads.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_transformer_config(variant)
    FluxTransformer.from_model_config(config).save_as_released(folder / "transformer")
    FluxVAE.from_config(tiny_vae_config()).model.save_pretrained(str(folder / "vae"))
    clip_tokenizer = build_clip_tokenizer([word.lower() for word in TOY_VOCABULARY])
    CLIPTextModel(tiny_clip_config(len(clip_tokenizer), TINY_TEXT_DIM)).save_pretrained(str(folder / "text_encoder"))
    clip_tokenizer.save_pretrained(str(folder / "tokenizer"))
    t5_tokenizer = build_word_tokenizer(TOY_VOCABULARY)
    T5EncoderModel(tiny_t5_config(len(t5_tokenizer), TINY_TEXT_DIM)).save_pretrained(str(folder / "text_encoder_2"))
    t5_tokenizer.save_pretrained(str(folder / "tokenizer_2"))
    write_scheduler_and_index(folder, "FLUX.1-dev" if config["guidance_embeds"] else "FLUX.1-schnell")
    if note is not None:
        steps, guidance = (4, 3.5) if variant == "dev" else (4, 0.0)
        defaults = GenerationDefaults(**TINY_DEFAULTS, steps=steps, guidance_scale=guidance)
        write_folder_config(folder, "Flux", defaults, note)
    return reset_tree_modes(folder)


def write_scheduler_and_index(folder: Path, variant_name: str) -> None:
    """``scheduler/scheduler_config.json`` of the variant and a ``model_index.json`` naming ``FluxPipeline``."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIGS[variant_name], indent=2))
    index = {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", TRANSFORMER_CLASS_NAME],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
