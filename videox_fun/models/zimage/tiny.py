"""Tiny Z-Image folders: the real architecture at toy sizes, in the diffusers layout of a release.

``transformer/``, ``vae/`` (FLUX.1's tiny VAE), ``text_encoder/`` (a 2-layer ``Qwen3Model``) + ``tokenizer/`` (a
byte-level BPE ``Qwen2Tokenizer`` built in code, with a Qwen3-shaped chat template), ``scheduler/`` and
``model_index.json``, with seeded random weights: tests load them exactly as a downloaded model, and diffusers'
``ZImagePipeline`` loads the same components for parity checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer, Qwen3Config, Qwen3Model

from ...config import GenerationDefaults, write_folder_config
from ...io.files import reset_tree_modes, save_safetensors
from ..fun_control import with_random_projections
from ..wan.tiny import TOY_VOCABULARY
from .control import LATENT_CHANNELS, ControlRelease, ZImageControl, control_config
from .transformer import TRANSFORMER_CLASS_NAME, ZImageTransformer
from .vae import VAE_CLASS_NAME, ZImageVAE, tiny_vae_config
from .variants import SCHEDULER_CONFIG, TURBO, VARIANTS, ZImageVariant

TINY_TEXT_DIM = 32
# Sizes the tiny random folders run at in seconds on a CPU (when built as a named built-in model).
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 1, "fps": 1, "sampler": "Flow", "shift": 0.0}
# A built-in variant with a Fun control file beside the transformer: "<variant>-control" (2.1's layout).
CONTROL_SUFFIX = "-control"
TINY_CONTROL_FILE = "Z-Image-Turbo-Fun-Controlnet-Union-Tiny.safetensors"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The part of Qwen3's chat template a prompt goes through: user turns, then the assistant's generation prompt
# (an empty think block only when thinking is disabled; Z-Image enables it).
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def tiny_transformer_config(text_dim: int = TINY_TEXT_DIM) -> dict[str, Any]:
    """A Z-Image transformer of 2 layers and 2 refiner layers, 2 heads of 32 (rotary split 8 / 12 / 12)."""
    return {
        "_class_name": TRANSFORMER_CLASS_NAME,
        "all_patch_size": [2],
        "all_f_patch_size": [1],
        "in_channels": 16,
        "dim": 64,
        "n_layers": 2,
        "n_refiner_layers": 2,
        "n_heads": 2,
        "n_kv_heads": 2,
        "cap_feat_dim": text_dim,
        "axes_dims": [8, 12, 12],
        "axes_lens": [1536, 512, 512],
    }


def tiny_qwen3_config(vocab_size: int, hidden_size: int = TINY_TEXT_DIM, num_layers: int = 2) -> Qwen3Config:
    """A small Qwen3 config of the released structure (GQA, q/k norms, 512+ positions) for tests."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )


@cache
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each of the 256 bytes (space is ``Ġ``), which byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return tuple(chr(b) if b in printable else chr(next(extra)) for b in range(256))


def build_qwen_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerBase:
    """A byte-level BPE ``Qwen2Tokenizer`` (the release's kind) whose merges make each of ``words``, with and
    without a leading space, one token; Qwen's chat special tokens and the tiny chat template."""
    vocab: dict[str, int] = {char: i for i, char in enumerate(byte_alphabet())}
    merges: dict[tuple[str, str], None] = {}
    space = byte_alphabet()[ord(" ")]
    for word in sorted({w.lower() for w in words}):
        merged = word[0]
        for char in word[1:]:  # left to right: "r e" -> "re", "re d" -> "red"
            merges.setdefault((merged, char))
            merged += char
            vocab.setdefault(merged, len(vocab))
        merges.setdefault((space, word))  # then "Ġ red" -> "Ġred": a word after a space is one token too
        vocab.setdefault(space + word, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges))
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL_TOKENS]})
    tokenizer.pad_token = tokenizer.eos_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 131072
    return tokenizer


def build_tiny_zimage_folder(
    folder: str | Path, variant: str = "turbo", seed: int = 0, note: str | None = None
) -> Path:
    """Write a complete tiny Z-Image folder of ``variant`` (base / turbo, or ``turbo-control``: with a tiny 2.1
    Fun control file named by the folder config) with weights seeded by ``seed``.

    With a ``note`` (a built-in model's), the folder also gets a ``videox_fun.yaml`` naming the variant, with tiny
    generation defaults (64x64, 4 steps; guidance 4 for base, 0 for Turbo) and that note, shown when it loads.
    """
    base = variant.removesuffix(CONTROL_SUFFIX)
    if base not in VARIANTS:
        raise ValueError(f"unknown tiny Z-Image variant {variant!r}; choose one of {VARIANTS} (+ {CONTROL_SUFFIX!r})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ZImageTransformer.from_model_config(tiny_transformer_config()).save_as_released(folder / "transformer")
    ZImageVAE.from_config(tiny_vae_config()).model.save_pretrained(str(folder / "vae"))
    tokenizer = build_qwen_tokenizer(TOY_VOCABULARY)
    Qwen3Model(tiny_qwen3_config(len(tokenizer))).save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_scheduler_and_index(folder)
    control = {}
    if variant != base:
        build_tiny_control_file(folder / TINY_CONTROL_FILE, "2.1", seed=seed + 1)
        control = {"control_path": TINY_CONTROL_FILE}
    if note is not None or control:  # a control file is named by the folder config
        chosen: ZImageVariant = TURBO if base == "turbo" else ZImageVariant("Z-Image", 4, 4.0)
        defaults = GenerationDefaults(**TINY_DEFAULTS, steps=4, guidance_scale=chosen.guidance_scale)
        write_folder_config(folder, "ZImage", defaults, note or "", variant=base, **control)
    return reset_tree_modes(folder)


def tiny_control_release(version: str = "2.1", blocks: int = 2) -> ControlRelease:
    """A control release at the tiny transformer's width: ``blocks`` copies (of its 2 main blocks)."""
    channels = LATENT_CHANNELS if version == "1.0" else 2 * LATENT_CHANNELS + 1
    return ControlRelease(version, channels, blocks, tiny_transformer_config()["dim"])


def tiny_control_state(version: str = "2.1", seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny control model's tensors in the released keys, every projection random (released ones are trained;
    zero ones would steer nothing). 2.0 carries the unused refiner with ``before_proj`` zero, as its file does."""
    torch.manual_seed(seed)
    config = control_config(tiny_control_release("2.1" if version == "2.0" else version), tiny_transformer_config(),
                            "tiny")  # fmt: skip
    state = with_random_projections(ZImageControl.from_model_config(config)).state_dict()
    if version == "2.0":
        state["control_noise_refiner.0.before_proj.weight"].zero_()
        state["control_noise_refiner.0.before_proj.bias"].zero_()
    return state


def build_tiny_control_file(path: str | Path, version: str = "2.1", seed: int = 0) -> Path:
    """A tiny Fun control file (``1.0``, ``2.0`` or ``2.1``) for the tiny transformer, as the releases ship one."""
    return save_safetensors(tiny_control_state(version, seed), path)


def write_scheduler_and_index(folder: Path) -> None:
    """``scheduler/scheduler_config.json`` (shift 3, static) and a ``model_index.json`` naming ``ZImagePipeline``."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "ZImagePipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", TRANSFORMER_CLASS_NAME],
        "vae": ["diffusers", VAE_CLASS_NAME],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
