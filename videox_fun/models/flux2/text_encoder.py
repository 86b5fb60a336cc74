"""FLUX.2's text encoder: Mistral-Small-3.2-24B (transformers' ``Mistral3ForConditionalGeneration``) reading the
prompt behind BFL's system message; the hidden states of layers 10, 20 and 30 stacked along the channels.

As diffusers' ``Flux2Pipeline``: the prompt becomes a system turn (BFL's ``SYSTEM_MESSAGE``) and a user turn,
rendered by the tokenizer's chat template without a generation prompt, padded / truncated to 512 tokens; the
model runs with the attention mask, and ``hidden_states[10, 20, 30]`` (B, 512, 5120) each become (B, 512, 15360),
channel blocks in layer order. Padding tokens stay in the sequence (the transformer reads all 512).

Released ``text_encoder/`` folders hold the whole vision-language model (Pixtral tower, projector, language model,
LM head); transformers' loader reads them under every version's key names, and a missing, unexpected or
mis-shaped key is an error. The ``tokenizer/`` folder is a Pixtral processor's: its tokenizer (``tokenizer.json``)
and chat template are what a text prompt needs. transformers' ``PixtralProcessor`` needs torchvision, so the
tokenizer is used directly (for text, the processor only delegates to it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import AutoTokenizer, Mistral3ForConditionalGeneration, PreTrainedTokenizerBase

from ..component import TokenizedTextEncoder, load_transformers_strict
from .variants import TEXT_LAYERS, TEXT_LEN

TEXT_ENCODER_CLASS_NAME = "Mistral3ForConditionalGeneration"
# Where a processor folder may keep the chat template when the tokenizer's config does not.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def load_mistral_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a ``tokenizer/`` (processor) folder, with the chat template prompts are written in."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no Mistral tokenizer in {folder}: expected tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for name in TEMPLATE_FILES if not tokenizer.chat_template else ():
        path = folder / name
        if path.is_file():
            text = path.read_text()
            tokenizer.chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
            break
    if not tokenizer.chat_template:
        raise ValueError(f"{folder}: the tokenizer has no chat template (FLUX.2 encodes prompts in Mistral's)")
    return tokenizer


class Flux2TextEncoder(TokenizedTextEncoder):
    """Mistral3 (``model``) + its tokenizer; :meth:`encode` gives the transformer's ``encoder_hidden_states``
    (B, L, 3 D)."""

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, tokenizer_path: str | os.PathLike, dtype: torch.dtype = torch.float32
    ) -> Flux2TextEncoder:
        """Load a ``text_encoder/`` folder strictly and its tokenizer folder."""
        model = load_transformers_strict(Mistral3ForConditionalGeneration, folder, dtype, "Mistral3 text encoder")
        return cls(model, load_mistral_tokenizer(tokenizer_path))

    def tokens(self, prompts: list[str], max_length: int = TEXT_LEN) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (B, max_length) of the prompts behind BFL's system message."""
        return self.tokenizer.apply_chat_template(
            format_input(prompts, SYSTEM_MESSAGE), add_generation_prompt=False, tokenize=True, return_dict=True,
            return_tensors="pt", padding="max_length", truncation=True, max_length=max_length,
        )  # fmt: skip

    @torch.no_grad()
    def encode(
        self, prompts: list[str], max_length: int = TEXT_LEN, layers: Sequence[int] = TEXT_LAYERS
    ) -> torch.Tensor:
        """Prompts -> (B, max_length, len(layers) * D): the chosen hidden states side by side, per token."""
        inputs = {key: value.to(self.device) for key, value in self.tokens(prompts, max_length).items()}
        hidden = self.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states
        return torch.cat([hidden[layer] for layer in layers], dim=-1)  # (B, L, 3 D)
