"""The CogVideoX text encoder: transformers' ``T5EncoderModel`` (T5 v1.1 XXL) and a T5 tokenizer.

Prompts become (B, 226, 4096) embeddings exactly as diffusers' CogVideoX pipelines make them:
padded to 226 tokens, truncated, ``</s>`` appended, and encoded WITHOUT an attention mask (the
padding tokens are encoded too; the transformer was trained on those embeddings).

Tokenizer folders: a ``tokenizer.json`` (a fast tokenizer) loads as it is; the released
``tokenizer/`` folder (``spiece.model`` + ``tokenizer_config.json``) loads through transformers'
``T5Tokenizer``, which converts the SentencePiece model and needs ``sentencepiece`` and ``protobuf``
(transformers 5 ignores ``vocab_file=``, so the folder is always passed whole).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ...config import read_json_mapping
from ..component import TokenizedTextEncoder
from ..loading import cast_floating, load_into, read_folder_state_dict

# CogVideoX conditions on 226 text tokens (transformer config ``max_text_seq_length``).
COGVIDEOX_TEXT_LEN = 226


def tiny_t5_config(vocab_size: int = 64, d_model: int = 32, num_heads: int = 2, num_layers: int = 2) -> T5Config:
    """A small T5 v1.1 encoder config (gated GELU, no tied embeddings) for tests."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def load_t5_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """A T5 tokenizer from a folder with ``tokenizer.json``, or the released layout (``spiece.model``)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if (folder / "spiece.model").is_file():
        missing = [name for name in ("sentencepiece", "google.protobuf") if not _installed(name)]
        if missing:
            raise ImportError(
                f"{folder} holds a SentencePiece tokenizer (spiece.model) and no tokenizer.json; reading it "
                f"needs {' and '.join(m.split('.')[-1] for m in missing)}: pip install sentencepiece protobuf"
            )
        from transformers import T5Tokenizer

        return T5Tokenizer.from_pretrained(str(folder))
    raise FileNotFoundError(f"no tokenizer in {folder}: expected tokenizer.json or spiece.model")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class CogVideoXTextEncoder(TokenizedTextEncoder):
    """T5 encoder + tokenizer; :meth:`encode` gives the transformer's ``encoder_hidden_states``."""

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, tokenizer_path: str | os.PathLike, dtype: torch.dtype = torch.float32
    ) -> CogVideoXTextEncoder:
        """Load a ``text_encoder/`` folder strictly (config.json + single or sharded weights) and the tokenizer."""
        folder = Path(folder)
        config = read_json_mapping(folder / "config.json", "text encoder config")
        t5_config = T5Config(**{k: v for k, v in config.items() if not k.startswith("_")})
        with torch.device("meta"):
            model = T5EncoderModel(t5_config)
        state = read_folder_state_dict(folder, prefix="model")
        # T5 checkpoints store the embedding once (shared) and tie encoder.embed_tokens to it.
        if "shared.weight" in state and "encoder.embed_tokens.weight" not in state:
            state["encoder.embed_tokens.weight"] = state["shared.weight"]
        load_into(model, cast_floating(state, dtype), str(folder))
        model.encoder.embed_tokens = model.shared  # keep the tie after assign-loading
        return cls(model.eval(), load_t5_tokenizer(tokenizer_path))

    def save_pretrained(self, folder: str | os.PathLike, tokenizer_folder: str | os.PathLike) -> None:
        """Write the transformers layout (config.json + model.safetensors) and the tokenizer."""
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(tokenizer_folder))

    @torch.no_grad()
    def encode(self, prompts: list[str], max_length: int = COGVIDEOX_TEXT_LEN, **_: Any) -> torch.Tensor:
        """Prompts -> (B, max_length, D) embeddings, as diffusers' CogVideoX pipelines make them."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids  # (B, max_length)
        return self.model(ids.to(self.device))[0]  # (B, max_length, D)
