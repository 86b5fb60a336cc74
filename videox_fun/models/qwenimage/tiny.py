"""Tiny Qwen-Image folders: the real architecture at toy sizes, in the diffusers layout of a release.

``transformer/``, ``vae/``, ``text_encoder/`` (a 2-layer Qwen2.5-VL with a 2-layer vision tower) + ``tokenizer/``,
for Edit and Edit-2509 ``processor/`` (the tokenizer and a ``Qwen2VLImageProcessor``), ``scheduler/`` and
``model_index.json``, with seeded random weights: tests load them exactly as a downloaded model, and diffusers'
``QwenImagePipeline`` / ``QwenImageEditPipeline`` / ``QwenImageEditPlusPipeline`` load the same components for
parity checks.

The tokenizer is a byte-level BPE of Qwen2's pre-tokenizer trained in code on the release's two templates and the
toy vocabulary, so every template word is one token as in the released vocabulary: the dropped template prefixes
are 34 (T2I) and 64 (Edit, Edit-2509) tokens long, as the release's. The ``t2i-control`` variant adds a tiny Fun
control file (2 copies of the 2 blocks, the release's 132-channel context) named by the folder config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
)

from ...config import FOLDER_CONFIG_NAME, GenerationDefaults, write_folder_config
from ...io.files import reset_tree_modes, save_safetensors
from ..wan.tiny import TOY_VOCABULARY
from .control import QwenImageControl
from .text_encoder import EDIT_TEMPLATE, T2I_TEMPLATE
from .transformer import TRANSFORMER_CLASS_NAME, QwenImageTransformer
from .vae import VAE_CLASS_NAME, QwenImageVAE, tiny_vae_config
from .variants import EDIT, EDIT_PLUS, SCHEDULER_CONFIG, T2I

TINY_TEXT_DIM = 32
# t2i-control: T2I with a Fun control file; edit-plus: Qwen-Image-Edit-2509 (several pictures).
VARIANTS = {"t2i": T2I, "edit": EDIT, "t2i-control": T2I, "edit-plus": EDIT_PLUS}
TINY_CONTROL_FILE = "Qwen-Image-2512-Fun-Controlnet-Union-Tiny.safetensors"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")  # fmt: skip
# The edit image as the tiny VL model and VAE read it (the release: 1024 x 1024 pixels' area), and the vision
# tower's pixel budget (56 x 56: 4 x 4 patches of 14, merged 2 x 2 into 4 image tokens).
TINY_EDIT_AREA = 64 * 64
TINY_VISION_PIXELS = 56 * 56
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 1, "fps": 1, "sampler": "Flow", "shift": 0.0,
                 "steps": 4, "guidance_scale": 4.0, "negative_prompt": " "}  # fmt: skip


def tiny_transformer_config(text_dim: int = TINY_TEXT_DIM) -> dict[str, Any]:
    """A Qwen-Image transformer of 2 blocks, 2 heads of 16 (rotary split 4 / 6 / 6), packed 2x2 latents."""
    return {"_class_name": TRANSFORMER_CLASS_NAME, "patch_size": 2, "in_channels": 64, "out_channels": 16,
            "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": text_dim,
            "guidance_embeds": False, "axes_dims_rope": [4, 6, 6]}  # fmt: skip


def build_qwen_tokenizer(words: list[str]) -> Qwen2Tokenizer:
    """A Qwen2 byte-level BPE tokenizer (Qwen2's pre-tokenizer and special tokens) whose merges make every word of
    the two templates and of ``words`` one token; other text falls back to bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)  # fmt: skip
    corpus = [T2I_TEMPLATE.text, EDIT_TEMPLATE.text, " ".join(words), " ".join(words).capitalize()]
    tokenizer.train_from_iterator(corpus, trainer)  # merges until every word of the corpus is one token
    return Qwen2Tokenizer(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_text_encoder_config(tokenizer: Qwen2Tokenizer, hidden_size: int = TINY_TEXT_DIM) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL of 2 text layers (2 heads of 16, one KV head, mRoPE split 2 / 3 / 3) and a 2-block vision tower
    of the released patching (14 px patches, 2 frames, 2x2 merge), the image token ids the tokenizer's."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}  # fmt: skip
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>")}  # fmt: skip
    vision = {"depth": 2, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_heads": 2,
              "out_hidden_size": hidden_size, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "window_size": 112, "fullatt_block_indexes": [1]}  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def tiny_image_processor() -> Qwen2VLImageProcessor:
    """Qwen2-VL's image processor with the released patching and image statistics and a tiny pixel budget."""
    return Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=TINY_VISION_PIXELS, patch_size=14, merge_size=2,
                                 temporal_patch_size=2)  # fmt: skip


def build_tiny_qwenimage_folder(
    folder: str | Path, variant: str = "t2i", seed: int = 0, note: str | None = None
) -> Path:
    """Write a complete tiny Qwen-Image folder of ``variant`` (t2i / edit / edit-plus, or t2i-control: T2I with a tiny
    Fun control file named by the folder config) with weights seeded by ``seed``.

    With a ``note`` (a built-in model's), the folder also gets a ``videox_fun.yaml`` with tiny generation defaults
    (64x64, 4 steps, true CFG 4), the tiny edit-image area and that note, shown when it loads.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny Qwen-Image variant {variant!r}; choose one of {tuple(VARIANTS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    QwenImageTransformer.from_model_config(tiny_transformer_config()).save_as_released(folder / "transformer")
    QwenImageVAE.from_config(tiny_vae_config()).model.save_pretrained(str(folder / "vae"))
    tokenizer = build_qwen_tokenizer([word.lower() for word in TOY_VOCABULARY])
    Qwen2_5_VLForConditionalGeneration(tiny_text_encoder_config(tokenizer)).save_pretrained(
        str(folder / "text_encoder")
    )
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    if VARIANTS[variant].edit:
        # A release's processor/ folder: the image processor's preprocessor_config.json and the tokenizer again.
        tiny_image_processor().save_pretrained(str(folder / "processor"))
        tokenizer.save_pretrained(str(folder / "processor"))
    write_scheduler_and_index(folder, VARIANTS[variant].pipeline_class, VARIANTS[variant].edit)
    control = {}
    if variant == "t2i-control":
        build_tiny_control_file(folder / TINY_CONTROL_FILE, seed=seed + 1)
        control = {"control_path": TINY_CONTROL_FILE}
    if note is not None or control:  # a control file is named by the folder config
        write_folder_config(folder, "QwenImage", GenerationDefaults(**TINY_DEFAULTS), note or "", **control)
        path = folder / FOLDER_CONFIG_NAME
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "edit_area": TINY_EDIT_AREA}))
    return reset_tree_modes(folder)


def build_tiny_control_file(path: str | Path, inpaint: bool = True, seed: int = 0) -> Path:
    """A tiny Qwen-Image Fun control file for the tiny transformer (2 copies; 132 context channels, 64 without
    ``inpaint``), every projection random, as the release ships one."""
    state = QwenImageControl.random_state(tiny_transformer_config(), blocks=2, inpaint=inpaint, seed=seed)
    return save_safetensors(state, path)


def write_scheduler_and_index(folder: Path, pipeline_class: str, edit: bool) -> None:
    """``scheduler/scheduler_config.json`` (the release's) and a ``model_index.json`` naming ``pipeline_class``."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": pipeline_class,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", TRANSFORMER_CLASS_NAME],
        "vae": ["diffusers", VAE_CLASS_NAME],
    }
    if edit:
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
