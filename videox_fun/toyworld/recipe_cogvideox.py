"""The recipe of the packaged tiny CogVideoX-Fun InP model: the Wan recipe's stages with CogVideoX parts.

``videox-fun toyworld train-all OUT --family cogvideox`` renders the dataset (or reuses the
clips of a Wan recipe run in the same folder), trains a tiny ``AutoencoderKLCogVideoX`` with the
Wan recipe's phases (:func:`.recipe.train_toy_vae`, without the widened decoder, which CogVideoX's
config cannot express), fits its ``scaling_factor``, builds a frozen small T5 over the world's
vocabulary and trains ``CogVideoX-Fun-Tiny-InP`` through the normal trainer on a latent cache.
Every stage is skipped when its output exists, so a killed run continues where it stopped. Its
folders sit beside the Wan recipe's (``OUT/cogvideox_vae_run*``, ``OUT/cogvideox_vae``,
``OUT/CogVideoX-Fun-Tiny-InP``); the record goes to ``OUT/recipe_cogvideox.json`` and into the
model folder as ``recipe.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import FOLDER_CONFIG_NAME, GenerationDefaults
from ..io.files import atomic_dir, reset_tree_modes
from .recipe import Recipe, calibrate, data_and_vae, train_on_cache, train_toy_vae, write_data
from .world import vocabulary

if TYPE_CHECKING:
    from ..models.cogvideox.text_encoder import CogVideoXTextEncoder

FAMILY = "cogvideox"
PREFIX = "cogvideox_"
INP_MODEL = "CogVideoX-Fun-Tiny-InP"
MODELS = {INP_MODEL: ("inpaint", 33)}

# 4 levels (8x spatial), 4x temporal (17 frames -> 5 latent frames), 16 latent channels as the
# releases. Widths measured on 2 CPU cores, batch 4 x 17 frames, one train step: (16, 32, 32, 64)
# 0.48 s on 32x32 crops / 1.8 s on 64x64 frames; (32, 32, 64, 64) 0.94 s / 3.4 s; (16, 16, 32, 32)
# 0.46 s / 1.5 s. The full-resolution width 16 is that of the Wan recipe's widened decoder.
VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "block_out_channels": [16, 32, 32, 64],
    "latent_channels": 16,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "temporal_compression_ratio": 4,
    "scaling_factor": 1.0,  # replaced by the fitted one (1 / std of the training latents)
    "sample_height": 64,
    "sample_width": 64,
}


TEXT_DIM = 64
# The world's captions are 6 words; 226 tokens (the releases') would make the text 3/4 of the
# joint attention's sequence (80 video tokens at 64x64x17).
TEXT_LEN = 32
# VideoX-Fun's DDIM sampler and the releases' v-prediction schedule (scheduler/ of CogVideoX-5b).
DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=17, fps=8, steps=20, guidance_scale=1.5, shift=0.0, sampler="DDIM_Origin"
)
# The CogVideoX-Fun-5b-InP structure (rotary positions, 2x2 patches) at the Wan toy model's size:
# 128 wide (4 heads of 32), 4 layers. Without add_noise_in_inpaint_model: the latent cache holds
# the masked videos' latents without noise, so the pipeline must not noise the known pixels either.
TRANSFORMER = {
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 33,
    "out_channels": 16,
    "time_embed_dim": 128,
    "text_embed_dim": TEXT_DIM,
    "num_layers": 4,
    "sample_width": 8,
    "sample_height": 8,
    "sample_frames": 17,
    "patch_size": 2,
    "max_text_seq_length": TEXT_LEN,
    "use_rotary_positional_embeddings": True,
    "use_learned_positional_embeddings": False,
    "add_noise_in_inpaint_model": False,
}


@dataclass
class CogVideoXRecipe(Recipe):
    """Every number of the CogVideoX recipe; written to recipe.json. The VAE phases are the Wan
    recipe's first two (32x32 crops, then full frames): after them this VAE already reconstructs
    fresh clips at 34.0 dB (24 clips; seen 33.8, held-out 35.0; target 32), so the decoder-only
    phases the Wan VAE needed are skipped (0 steps ends the chain)."""

    vae_config: dict = field(default_factory=lambda: dict(VAE_CONFIG))
    vae_wide_factor: int = 1
    vae_decoder_steps: int = 0
    # The Wan InP recipe's size and rate (dim 128, 4 layers, batch 16, lr 1e-3) with more steps: a
    # trainer step measured 0.26 s here (2 CPU cores, 1 thread, beside a VAE run), so 20,000 steps
    # take ~1.5 h, up to ~3 h when the cores are shared.
    model_steps: dict[str, int] = field(default_factory=lambda: {INP_MODEL: 20000})
    model_learning_rates: dict[str, float] = field(default_factory=lambda: {INP_MODEL: 1e-3})
    model_clips: dict[str, int] = field(default_factory=lambda: {INP_MODEL: 1200})
    models: list[str] = field(default_factory=lambda: list(MODELS))

    @classmethod
    def smoke(cls, seed: int = 0, models: list[str] | None = None) -> CogVideoXRecipe:
        """Every stage on 8 clips for one or two steps each."""
        wan = Recipe.smoke(seed)
        fields = {name: getattr(wan, name) for name in Recipe.__dataclass_fields__ if name != "models"}
        return replace(cls(), **{**fields, "vae_wide_factor": 1, "models": models or list(MODELS)})


def train_cogvideox_vae(out: Path, data: Path, recipe: CogVideoXRecipe) -> Path:
    """The tiny CogVideoX VAE through the Wan recipe's phases; returns the last checkpoint."""
    return train_toy_vae(out, data, recipe, vae_class=FAMILY, vae_config=recipe.vae_config, prefix=PREFIX)


def train_all(
    out: str | Path, recipe: CogVideoXRecipe | None = None, vae: str | Path | None = None, until: str = "all"
) -> dict:
    """Every stage (or those up to ``until``: "data", "vae"); returns (and writes) the recipe record."""
    recipe = recipe or CogVideoXRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"family": FAMILY, "recipe": asdict(recipe), "timings_s": {}}
    started = time.perf_counter()
    data, vae_dir = data_and_vae(
        out, record, lambda folder: write_data(folder, recipe), lambda data: train_cogvideox_vae(out, data, recipe),
        f"{PREFIX}vae", vae, until,
    )  # fmt: skip
    if vae_dir is None or until == "vae":
        return record
    record["transformer"] = TRANSFORMER
    for name in recipe.models:
        folder = model_folder(out, name, vae_dir, recipe)
        if (folder / "recipe.json").is_file():  # written last: this model is finished
            continue
        train_transformer(out, folder, data, recipe)
        calibrate(folder)
        record["timings_s"][name] = time.perf_counter() - started
        (folder / "recipe.json").write_text(json.dumps(record, indent=2))
    (out / "recipe_cogvideox.json").write_text(json.dumps(record, indent=2))
    return record


def text_encoder(seed: int) -> CogVideoXTextEncoder:
    """A frozen small T5 (2 layers, 64 wide) over the world's vocabulary, seeded random weights (it
    only has to tell the words apart), with the Wan recipe's word tokenizer."""
    from transformers import T5EncoderModel

    from ..models.cogvideox.text_encoder import CogVideoXTextEncoder, tiny_t5_config
    from ..models.wan.text_encoder import build_word_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(vocabulary())
    model = T5EncoderModel(tiny_t5_config(len(tokenizer), d_model=TEXT_DIM, num_heads=4, num_layers=2))
    return CogVideoXTextEncoder(model.eval(), tokenizer)


def model_folder(out: Path, name: str, vae_dir: Path, recipe: CogVideoXRecipe) -> Path:
    """A diffusers-layout folder with an untrained transformer, the trained VAE and the text encoder."""
    from ..models.cogvideox.tiny import save_transformer_folder, write_folder_config, write_scheduler_and_index
    from ..models.cogvideox.transformer import CogVideoXTransformer

    folder = out / name
    if (folder / FOLDER_CONFIG_NAME).is_file():
        return folder
    _, in_channels = MODELS[name]
    with atomic_dir(folder) as staging:  # complete or absent: the config is the marker of a finished folder
        torch.manual_seed(recipe.seed)
        save_transformer_folder(
            CogVideoXTransformer.from_model_config({**TRANSFORMER, "in_channels": in_channels}), staging
        )
        shutil.copytree(vae_dir, staging / "vae", dirs_exist_ok=True)
        text_encoder(recipe.seed).save_pretrained(staging / "text_encoder", staging / "tokenizer")
        write_scheduler_and_index(staging, "inp")
        write_folder_config(
            staging,
            DEFAULTS,
            "trained on the toy world (videox-fun toyworld train-all --family cogvideox); see recipe.json",
        )
        reset_tree_modes(staging)  # transformers' safetensors would be 0600
    return folder


def train_transformer(out: Path, folder: Path, data: Path, recipe: CogVideoXRecipe) -> Path:
    """The latent cache, then the normal trainer (the folder's family picks the CogVideoX spec:
    v-prediction); the trained weights replace ``folder/transformer``."""
    mode, _ = MODELS[folder.name]
    result = train_on_cache(out, folder, data, recipe, mode)
    with atomic_dir(folder / "transformer") as staging:
        shutil.copytree(result.transformer_dir, staging, dirs_exist_ok=True)
    return folder
