"""The recipe of the packaged tiny image model: a Z-Image trained on the toy world's first frames.

``videox-fun toyworld train-image OUT`` renders still images (the first frame of a clip: one shape
at a random place on black, captioned "a red circle" or "a red circle on a black background";
seen colour x shape pairs only), trains a tiny FLUX.1 ``AutoencoderKL`` (Z-Image's VAE class) with
the video recipe's VAE phases (:func:`.recipe.train_toy_vae`), fits its ``shift_factor`` /
``scaling_factor``, builds a frozen small Qwen3 over the world's vocabulary and trains the
``Z-Image-Toy-Tiny`` transformer from random weights through the normal trainer (a full fine-tune of
the image spec, from the images: the image families offer no latent cache). Every stage is skipped
when its output exists and the trainer resumes from its latest checkpoint, so a killed run
continues where it stopped. Folders: ``OUT/image_data``, ``OUT/image_vae_run*``, ``OUT/image_vae``,
``OUT/runs/Z-Image-Toy-Tiny`` (checkpoints), ``OUT/Z-Image-Toy-Tiny`` (the model folder); the record
goes to ``OUT/recipe_image.json`` and into the model folder as ``recipe.json``.

Why Z-Image: of the image families (FLUX.1, Z-Image, Qwen-Image) it is the smallest to make tiny and
the cheapest to train on a CPU: one text encoder (Qwen3, which builds from a word-level BPE
tokenizer in code) where FLUX.1 needs CLIP and T5, one stream of image + caption tokens without
FLUX.1's dual-stream blocks or Qwen-Image's Qwen2.5-VL, and FLUX.1's plain 2D ``AutoencoderKL``,
which trains on images (no toy VAE of another family matches its class).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import FOLDER_CONFIG_NAME, GenerationDefaults, write_folder_config
from ..io.files import atomic_dir, reset_tree_modes
from ..models.zimage.tiny import tiny_transformer_config
from ..models.zimage.vae import tiny_vae_config
from .recipe import Recipe, data_and_vae, train_on_cache, train_toy_vae
from .world import vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen3Model

FAMILY = "zimage"
PREFIX = "image_"
MODEL = "Z-Image-Toy-Tiny"
# The words of Qwen3's chat template the prompt is wrapped in: one token each instead of one per letter.
TEMPLATE_WORDS = ("user", "assistant")
TEXT_DIM = 64
# A caption in its chat template is 8-15 tokens ("a red circle on a black background": 15).
TEXT_LEN = 32
# Z-Image's guidance g runs classifier-free guidance at scale g + 1 (diffusers' cond + g (cond - uncond)).
# 0.25, chosen on tuning seeds (810000 + i, every pair x 16): shape 96.3 / 97.9 % seen / held-out, against
# 94.6 / 75.0 % at 0 (held-out pairs drift to seen shapes), 93.8 / 93.8 % at 0.5 and 90.8 / 91.7 % at 1
# (stronger guidance rounds the squares' corners: their median fill 0.913 at 1, 0.940 at 0.25).
DEFAULTS = GenerationDefaults(
    height=64, width=64, num_frames=1, fps=1, steps=20, guidance_scale=0.25, shift=0.0, sampler="Flow"
)
# FLUX.1's VAE structure (16 latent channels, no quant convs, attention in the mid block) at toy widths,
# with 3 levels (4x spatial) instead of the release's 4 (8x): a 64x64 image is 16x16 latents, 8x8 tokens of
# 8x8 pixels, so a 13-19 px shape spans several tokens. With 8x (4x4 tokens of 16 px, a shape inside one or
# two) the transformer drew circles as squares: shape 68.3 / 16.7 % seen / held-out after 6,000 steps.
VAE_CONFIG: dict = {
    **{k: v for k, v in tiny_vae_config().items() if k not in ("_class_name", "down_block_types", "up_block_types")},
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "norm_num_groups": 8,
    "scaling_factor": 1.0,  # both replaced by the fitted ones (finished_vae)
    "shift_factor": 0.0,
    "sample_size": 64,
}
# Z-Image's structure (2x2 patches, caption and image refiners, one stream of both) at the video toy
# models' size: 128 wide (4 heads of 32, rotary split 8 / 12 / 12), 4 layers, 1 refiner layer each.
# A train step at batch 32 measured 0.8 s here (1 thread). Position tables: caption tokens + 1 on
# the first axis, 32 patches (512 px) on the others.
TRANSFORMER: dict = {
    **tiny_transformer_config(TEXT_DIM),
    **{"dim": 128, "n_layers": 4, "n_refiner_layers": 1, "n_heads": 4, "n_kv_heads": 4, "axes_lens": [128, 32, 32]},
}


@dataclass
class ImageRecipe(Recipe):
    """Every number of the image recipe; written to recipe.json. The VAE fields are the video recipe's
    (:class:`.recipe.Recipe`) with image-sized values: 32x32 foreground crops, then full 64x64 images,
    then the decoder alone; a phase of 0 steps ends the chain (the refine / MSE phases are left out).
    The clip and frame fields of the video recipe are unused here."""

    train_images: int = 4000
    vae_config: dict = field(default_factory=lambda: dict(VAE_CONFIG))
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_full_steps: int = 300
    vae_decoder_steps: int = 300
    vae_refine_steps: int = 0
    vae_wide_factor: int = 1
    vae_mse_steps: int = 0
    text_layers: int = 2
    transformer: dict = field(default_factory=lambda: dict(TRANSFORMER))
    transformer_batch: int = 32
    # About 0.45 s a step at batch 32 with the VAE encode on one free thread; 6000 steps took 1.8 h beside a test suite.
    model_steps: dict[str, int] = field(default_factory=lambda: {MODEL: 6000})
    model_learning_rates: dict[str, float] = field(default_factory=lambda: {MODEL: 1e-3})
    warmup_steps: int = 100
    # Captions dropped to "" this often: the unconditional branch of classifier-free guidance.
    text_drop_ratio: float = 0.1
    checkpointing_steps: int = 250
    checkpoints_kept: int = 6
    # Images the VAE encodes at once inside a trainer step (the whole batch: no gain from splitting on a CPU).
    vae_mini_batch: int = 32
    models: list[str] = field(default_factory=lambda: [MODEL])

    @classmethod
    def smoke(cls, seed: int = 0, models: list[str] | None = None) -> ImageRecipe:
        """Every stage on 8 images for one or two steps each: checks the chain in a minute."""
        return replace(
            cls(seed=seed),
            train_images=8,
            vae_steps=2,
            vae_batch=2,
            vae_full_steps=1,
            vae_decoder_steps=1,
            transformer_batch=2,
            model_steps={MODEL: 2},
            warmup_steps=0,
            checkpointing_steps=1,
            vae_mini_batch=2,
        )


def write_image_data(out: Path, recipe: ImageRecipe) -> Path:
    """``OUT/image_data``: ``recipe.train_images`` stills of the seen combinations (``"type": "image"``)."""
    from .dataset import write_dataset

    data = out / f"{PREFIX}data"
    if not (data / "metadata_train.json").is_file():
        write_dataset(data, n=0, images=recipe.train_images, seed=recipe.seed, split="train")
    return data


def build_tokenizer() -> PreTrainedTokenizerBase:
    """The byte-level BPE Qwen tokenizer whose merges make each word of the captions and the chat template one token."""
    from ..models.zimage.tiny import build_qwen_tokenizer

    return build_qwen_tokenizer([*vocabulary(), *TEMPLATE_WORDS])


def text_encoder(recipe: ImageRecipe, vocab_size: int) -> Qwen3Model:
    """A frozen small Qwen3 (seeded random weights: it only has to tell the words apart)."""
    from transformers import Qwen3Model

    from ..models.zimage.tiny import tiny_qwen3_config

    torch.manual_seed(recipe.seed)
    return Qwen3Model(tiny_qwen3_config(vocab_size, hidden_size=TEXT_DIM, num_layers=recipe.text_layers)).eval()


def model_folder(out: Path, vae_dir: Path, recipe: ImageRecipe) -> Path:
    """A diffusers-layout Z-Image folder with an untrained transformer, the trained VAE and the text encoder."""
    from ..models.zimage.tiny import write_scheduler_and_index
    from ..models.zimage.transformer import ZImageTransformer

    folder = out / MODEL
    if (folder / FOLDER_CONFIG_NAME).is_file():
        return folder
    with atomic_dir(folder) as staging:  # complete or absent: the folder config marks a finished folder
        torch.manual_seed(recipe.seed)
        ZImageTransformer.from_model_config(recipe.transformer).save_as_released(staging / "transformer")
        shutil.copytree(vae_dir, staging / "vae", dirs_exist_ok=True)
        tokenizer = build_tokenizer()
        text_encoder(recipe, len(tokenizer)).save_pretrained(str(staging / "text_encoder"))
        tokenizer.save_pretrained(str(staging / "tokenizer"))
        write_scheduler_and_index(staging)
        note = "trained on the toy world's first frames (videox-fun toyworld train-image); see recipe.json"
        write_folder_config(staging, "ZImage", DEFAULTS, note, variant="base", text_len=TEXT_LEN)
        reset_tree_modes(staging)  # transformers' safetensors would be 0600
    return folder


def train_transformer(out: Path, folder: Path, data: Path, recipe: ImageRecipe) -> Path:
    """The normal trainer on the images (the folder's family picks the Z-Image spec); the trained weights
    replace ``folder/transformer``."""
    result = train_on_cache(
        out,
        folder,
        data,
        recipe,
        "normal",
        train_data_meta=str(data / "metadata_train.json"),
        use_cached_latents=False,
        lr_warmup_steps=recipe.warmup_steps,
        text_drop_ratio=recipe.text_drop_ratio,
        checkpointing_steps=recipe.checkpointing_steps,
        checkpoints_total_limit=recipe.checkpoints_kept,
        vae_mini_batch=recipe.vae_mini_batch,
    )
    with atomic_dir(folder / "transformer") as staging:
        shutil.copytree(result.transformer_dir, staging, dirs_exist_ok=True)
    return folder


def train_image(
    out: str | Path, recipe: ImageRecipe | None = None, vae: str | Path | None = None, until: str = "all"
) -> dict:
    """Every stage (or those up to ``until``: "data", "vae"); returns (and writes) the recipe record."""
    recipe = recipe or ImageRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"family": FAMILY, "recipe": asdict(recipe), "timings_s": {}}
    started = time.perf_counter()
    data, vae_dir = data_and_vae(out, record, lambda folder: write_image_data(folder, recipe),
                                 lambda data: train_toy_vae(out, data, recipe, "flux", recipe.vae_config, PREFIX),
                                 f"{PREFIX}vae", vae, until)  # fmt: skip
    if vae_dir is None or until == "vae":
        return record
    folder = model_folder(out, vae_dir, recipe)
    if not (folder / "recipe.json").is_file():  # written last: the model is finished
        train_transformer(out, folder, data, recipe)
        record["timings_s"][MODEL] = time.perf_counter() - started
        (folder / "recipe.json").write_text(json.dumps(record, indent=2))
    (out / "recipe_image.json").write_text(json.dumps(record, indent=2))
    return record
