"""FLUX.1's two text encoders: CLIP ViT-L/14's pooled output (the global vector) and T5 v1.1-XXL's sequence.

The T5 half is the same encoder the CogVideoX family loads (transformers' ``T5EncoderModel``: padded to the
length, truncated, ``</s>`` appended, encoded without an attention mask, as diffusers' FLUX pipelines do), so it
is imported, not copied. The CLIP half is transformers' ``CLIPTextModel``; its ``pooler_output`` (the hidden
state at the end-of-text token) is what FLUX reads, from prompts padded to the tokenizer's 77 tokens.

Tokenizer folders: the released ``tokenizer/`` (``vocab.json`` + ``merges.txt``) and one with a
``tokenizer.json`` both load through ``CLIPTokenizer.from_pretrained`` (the folder, never ``vocab_file=``, which
transformers 5 ignores).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase

from ...config import read_json_mapping
from ..cogvideox.text_encoder import CogVideoXTextEncoder as T5TextEncoder
from ..component import TokenizedTextEncoder
from ..loading import cast_floating, load_into, read_folder_state_dict, strip_prefix

__all__ = ["ClipTextEncoder", "T5TextEncoder", "load_clip_tokenizer", "tiny_clip_config"]

# CLIP's context: 77 tokens (the released tokenizer's model_max_length and the model's positions).
CLIP_TEXT_LEN = 77


def tiny_clip_config(vocab_size: int, hidden_size: int = 32, num_layers: int = 2) -> CLIPTextConfig:
    """A small CLIP text config of the released structure (quick-GELU, 77 positions) for tests.

    ``eos_token_id`` 1 is the tiny tokenizer's ``<|endoftext|>``: the pooled output is read there.
    """
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        max_position_embeddings=CLIP_TEXT_LEN,
        projection_dim=hidden_size,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def load_clip_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The CLIP tokenizer of a folder (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``)."""
    folder = Path(folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise FileNotFoundError(f"no CLIP tokenizer in {folder}: expected vocab.json + merges.txt or tokenizer.json")
    return CLIPTokenizer.from_pretrained(str(folder))


class ClipTextEncoder(TokenizedTextEncoder):
    """CLIP text model + tokenizer; :meth:`encode` gives FLUX's ``pooled_projections`` (B, 768)."""

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, tokenizer_path: str | os.PathLike, dtype: torch.dtype = torch.float32
    ) -> ClipTextEncoder:
        """Load a ``text_encoder/`` folder strictly (config.json + weights) and its tokenizer folder."""
        folder = Path(folder)
        config = read_json_mapping(folder / "config.json", "CLIP text encoder config")
        with torch.device("meta"):
            model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
        # Released files name the keys text_model.*, as transformers 4 did; transformers 5 drops the prefix.
        state = strip_prefix(read_folder_state_dict(folder, prefix="model"), ("text_model.",))
        state.pop("embeddings.position_ids", None)  # a derived buffer some exports keep: rebuilt below
        load_into(model, cast_floating(state, dtype), str(folder))
        embeddings = getattr(model, "text_model", model).embeddings
        positions = torch.arange(embeddings.position_embedding.num_embeddings)[None]  # (1, 77)
        embeddings.register_buffer("position_ids", positions, persistent=False)
        return cls(model.eval(), load_clip_tokenizer(tokenizer_path))

    @property
    def max_length(self) -> int:
        """Tokens a prompt is padded to: the tokenizer's length (77), as diffusers' FLUX pipelines pad."""
        return min(int(self.tokenizer.model_max_length), CLIP_TEXT_LEN)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (B, D) pooled embeddings."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids  # (B, 77)
        return self.model(ids.to(self.device), output_hidden_states=False).pooler_output  # (B, D)
