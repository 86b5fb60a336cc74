"""Tiny FLUX.2 folders: the real architecture at toy sizes, in the diffusers layout of the release.

``transformer/``, ``vae/`` (with random BatchNorm statistics, so the normalisation is exercised), ``text_encoder/``
(a ``Mistral3ForConditionalGeneration``: a 32-layer, 16-wide Mistral, so layers 10, 20 and 30 are read as in the
release, and a 1-block Pixtral tower) + ``tokenizer/`` (a byte-level BPE trained in code on BFL's system message and
the toy vocabulary, Mistral's special tokens in their ids, a Mistral-Small-shaped chat template), ``scheduler/`` and
``model_index.json``, with seeded random weights: tests load them exactly as a downloaded model, and diffusers'
``Flux2Pipeline`` loads the same components for parity checks. The ``dev-control`` variant adds a tiny Fun control
file (2 copies of the 2 double blocks, the release's 260-channel context) named by the folder config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
)

from ...config import GenerationDefaults, write_folder_config
from ...io.files import reset_tree_modes, save_safetensors
from ..wan.tiny import TOY_VOCABULARY
from .control import Flux2Control
from .text_encoder import TEXT_ENCODER_CLASS_NAME
from .transformer import TRANSFORMER_CLASS_NAME, Flux2Transformer
from .vae import VAE_CLASS_NAME, Flux2VAE, tiny_vae_config
from .variants import SCHEDULER_CONFIG, TEXT_LAYERS

TINY_TEXT_DIM = 16
TINY_TEXT_LAYERS = 32  # more than the last layer read (30), as the release's 40: layer 30 comes before the final norm
# Mistral's (Tekken's) first special tokens, in their ids: [IMG] is 10 (Mistral3Config.image_token_index), <pad> 11.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                  "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")  # fmt: skip
# The part of Mistral-Small-3.1's chat template that FLUX.2's messages go through: BOS, the system turn, user turns of
# text (and image) blocks, assistant turns.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set blocks = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}{%- set blocks = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}"
    "{%- for block in blocks %}{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}{%- endfor %}"
    "{%- if message['role'] == 'system' %}{{- '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[/INST]' }}{%- else %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
)
TINY_CONTROL_FILE = "FLUX.2-dev-Fun-Controlnet-Union-Tiny.safetensors"
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 1, "fps": 1, "sampler": "Flow", "shift": 0.0, "steps": 4,
                 "guidance_scale": 4.0}  # fmt: skip


def tiny_transformer_config(text_dim: int = TINY_TEXT_DIM) -> dict[str, Any]:
    """A FLUX.2 transformer of 2 double + 2 single blocks, 2 heads of 16 (rotary split 4 / 4 / 4 / 4), reading the
    three stacked text layers (3 x ``text_dim``) and 128-channel latent tokens."""
    return {"_class_name": TRANSFORMER_CLASS_NAME, "patch_size": 1, "in_channels": 128, "out_channels": None,
            "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": len(TEXT_LAYERS) * text_dim, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
            "axes_dims_rope": [4, 4, 4, 4], "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True}  # fmt: skip


def build_mistral_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Mistral's special tokens and chat template whose merges make every word of
    BFL's system message and of ``words`` one token; other text falls back to bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's word split, then bytes
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator([SYSTEM_MESSAGE, " ".join(words), " ".join(words).capitalize()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE, model_max_length=131072)  # fmt: skip


def tiny_text_encoder_config(vocab_size: int, hidden_size: int = TINY_TEXT_DIM) -> Mistral3Config:
    """A Mistral3 of :data:`TINY_TEXT_LAYERS` text layers (2 heads of 8, one KV head) and a 1-block Pixtral tower
    (14 px patches, 2x2 merge), ``[IMG]`` at Mistral's id 10."""
    text = MistralConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=TINY_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, tie_word_embeddings=False)  # fmt: skip
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, image_size=56, patch_size=14)  # fmt: skip
    return Mistral3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=10,
                          spatial_merge_size=2, tie_word_embeddings=False)  # fmt: skip


def build_tiny_flux2_folder(folder: str | Path, variant: str = "dev", seed: int = 0, note: str | None = None) -> Path:
    """Write a complete tiny FLUX.2-dev folder with weights seeded by ``seed`` (``variant``: dev, or dev-control
    with a tiny Fun control file named by the folder config).

    With a ``note`` (a built-in model's), the folder also gets a ``videox_fun.yaml`` with tiny generation defaults
    (64x64, 4 steps, guidance 4) and that note, shown when it loads.
    """
    if variant not in ("dev", "dev-control"):
        raise ValueError(f"unknown tiny FLUX.2 variant {variant!r}; choose dev or dev-control")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    Flux2Transformer.from_model_config(tiny_transformer_config()).save_as_released(folder / "transformer")
    vae = Flux2VAE.from_config(tiny_vae_config()).model
    vae.bn.running_mean.normal_(0.0, 0.5)  # released statistics are far from (0, 1): make them matter here too
    vae.bn.running_var.uniform_(0.5, 2.0)
    vae.save_pretrained(str(folder / "vae"))
    tokenizer = build_mistral_tokenizer(TOY_VOCABULARY)
    encoder = Mistral3ForConditionalGeneration(tiny_text_encoder_config(len(tokenizer)))
    encoder.save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_scheduler_and_index(folder)
    control = {}
    if variant == "dev-control":
        build_tiny_control_file(folder / TINY_CONTROL_FILE, seed=seed + 1)
        control = {"control_path": TINY_CONTROL_FILE}
    if note is not None or control:  # a control file is named by the folder config
        write_folder_config(folder, "Flux2", GenerationDefaults(**TINY_DEFAULTS), note or "", **control)
    return reset_tree_modes(folder)


def build_tiny_control_file(path: str | Path, inpaint: bool = True, seed: int = 0) -> Path:
    """A tiny FLUX.2 Fun control file for the tiny transformer (2 copies; 260 context channels, 128 without
    ``inpaint``), every projection random, as the release ships one."""
    state = Flux2Control.random_state(tiny_transformer_config(), blocks=2, inpaint=inpaint, seed=seed)
    return save_safetensors(state, path)


def write_scheduler_and_index(folder: Path) -> None:
    """``scheduler/scheduler_config.json`` (the release's, dynamic shifting) and a ``model_index.json`` naming
    ``Flux2Pipeline``."""
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "Flux2Pipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", TEXT_ENCODER_CLASS_NAME],
        "tokenizer": ["transformers", "PixtralProcessor"],
        "transformer": ["diffusers", TRANSFORMER_CLASS_NAME],
        "vae": ["diffusers", VAE_CLASS_NAME],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
