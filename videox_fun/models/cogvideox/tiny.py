"""Tiny CogVideoX(-Fun) folders: the real architectures at toy sizes, in the diffusers layout of a release.

``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and ``model_index.json``,
with seeded random weights: tests load them exactly as a downloaded model, and diffusers' own
pipelines can load the same components for parity checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import AutoencoderKLCogVideoX
from transformers import T5EncoderModel

from ...config import GenerationDefaults
from ...io.files import reset_tree_modes
from ..wan.text_encoder import build_word_tokenizer
from ..wan.tiny import TOY_VOCABULARY
from .text_encoder import tiny_t5_config
from .transformer import CogVideoXTransformer
from .vae import tiny_vae_config

TINY_TEXT_DIM = 32

# The released scheduler/scheduler_config.json of CogVideoX-5b (2b has snr_shift_scale 3.0).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "CogVideoXDDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 1.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "trained_betas": None,
}

# Tiny variants: the kind of checkpoint and the released model whose structure it copies.
TINY_VARIANTS = ("t2v", "i2v", "inp", "control", "t2v-1.5", "i2v-1.5", "inp-1.5")
PIPELINE_CLASSES = {"i2v": "CogVideoXImageToVideoPipeline", "control": "CogVideoXFunControlPipeline"}


def tiny_transformer_config(variant: str = "inp", text_dim: int = TINY_TEXT_DIM) -> dict[str, Any]:
    """A 2-layer, 2-head (head dim 16) transformer config of ``variant`` (see :data:`TINY_VARIANTS`).

    Sample sizes are 32x32 pixels (4x4 latents) and 9 frames: the size the learned positional
    embeddings of the I2V variant are made for (5b-I2V only runs at its sample size).
    """
    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny CogVideoX variant {variant!r}; choose one of {TINY_VARIANTS}")
    kind, _, version = variant.partition("-")
    config: dict[str, Any] = {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": {"t2v": 16, "i2v": 32, "inp": 33, "control": 32}[kind],
        "out_channels": 16,
        "time_embed_dim": 16,
        "text_embed_dim": text_dim,
        "num_layers": 2,
        "sample_width": 4,
        "sample_height": 4,
        "sample_frames": 9,
        "max_text_seq_length": 226,
        # t2v copies CogVideoX-2b (3D sin-cos positions); the others 5b (rotary embeddings).
        "use_rotary_positional_embeddings": kind != "t2v" or version == "1.5",
        "use_learned_positional_embeddings": kind == "i2v" and version != "1.5",
    }
    if version == "1.5":
        config.update(patch_size_t=2, patch_bias=False, sample_frames=13)
        if kind == "i2v":
            config["ofs_embed_dim"] = 16
    if kind == "inp":
        config["add_noise_in_inpaint_model"] = True
    return config


# Sizes the tiny random folders run at in seconds on a CPU (when built as a named built-in model).
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "steps": 10, "sampler": "DDIM_Origin"}


def build_tiny_cogvideox_folder(
    folder: str | Path, variant: str = "inp", seed: int = 0, note: str | None = None
) -> Path:
    """Write a complete tiny CogVideoX folder of ``variant`` with weights seeded by ``seed``.

    With a ``note`` (a built-in model's), the folder also gets a ``videox_fun.yaml`` with tiny
    generation defaults (:data:`TINY_DEFAULTS`) and that note, shown when it loads.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_transformer_folder(CogVideoXTransformer.from_model_config(tiny_transformer_config(variant)), folder)
    AutoencoderKLCogVideoX(**tiny_vae_config()).save_pretrained(str(folder / "vae"))

    tokenizer = build_word_tokenizer(TOY_VOCABULARY)
    text_config = tiny_t5_config(vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM)
    T5EncoderModel(text_config).save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_scheduler_and_index(folder, variant)
    if note is not None:
        write_folder_config(folder, GenerationDefaults(**TINY_DEFAULTS), note)
    return reset_tree_modes(folder)


# -- the pieces of a folder, for folders made of trained parts (the toy world's recipe) -------------


def save_transformer_folder(transformer: CogVideoXTransformer, folder: str | Path) -> Path:
    """``folder/transformer``: config.json (with the released class name) and the weights."""
    target = Path(folder) / "transformer"
    transformer.save_pretrained(str(target))
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "CogVideoXTransformer3DModel"  # the released name (diffusers loads it too)
    config_path.write_text(json.dumps(config, indent=2))
    return reset_tree_modes(target)


def write_scheduler_and_index(folder: str | Path, variant: str = "inp", scheduler: dict | None = None) -> None:
    """``scheduler/scheduler_config.json`` (default: :data:`SCHEDULER_CONFIG`) and ``model_index.json``."""
    folder = Path(folder)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": PIPELINE_CLASSES.get(variant.partition("-")[0], "CogVideoXPipeline"),
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def write_folder_config(folder: str | Path, defaults: GenerationDefaults, note: str) -> Path:
    """The folder's ``videox_fun.yaml``: the diffusers layout, its generation ``defaults`` and a ``note``."""
    from ...config import FOLDER_CONFIG_NAME

    path = Path(folder) / FOLDER_CONFIG_NAME
    fields = {k: v for k, v in asdict(defaults).items() if v is not None}
    data = {"format": "diffusers", "pipeline": "CogVideoX", "defaults": fields, "note": note}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
