"""Z-Image's text encoder: Qwen3-4B (transformers' ``Qwen3Model``) reading the prompt in its chat template.

As diffusers' ``ZImagePipeline``: the prompt becomes one user turn with the generation prompt and thinking
enabled (``apply_chat_template(..., enable_thinking=True)``), is padded to 512 tokens, and the features are the
second-to-last hidden states (``hidden_states[-2]``) of the real (unpadded) tokens: one (L, 2560) tensor a prompt.

Released ``text_encoder/`` folders hold ``model*.safetensors`` (sharded, with an index), keys with or without the
causal LM's ``model.`` prefix; the tokenizer folder (``Qwen2Tokenizer``: ``tokenizer.json`` or ``vocab.json`` +
``merges.txt``, and the chat template) loads through ``from_pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from ...config import read_json_mapping
from ..component import TokenizedTextEncoder
from ..loading import cast_floating, load_into, read_folder_state_dict, strip_prefix

TEXT_LEN = 512  # the tokens a prompt is padded / truncated to (diffusers' max_sequence_length)
# The causal-LM head a Qwen3ForCausalLM export may carry: Z-Image reads hidden states and never runs it.
LM_HEAD = "lm_head.weight"


def load_qwen_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The Qwen2 tokenizer of a folder; it must carry the chat template the prompt is written in."""
    folder = Path(folder)
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise FileNotFoundError(f"no Qwen tokenizer in {folder}: expected tokenizer.json or vocab.json + merges.txt")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not tokenizer.chat_template:
        raise ValueError(f"{folder}: the tokenizer has no chat template (Z-Image encodes prompts in Qwen3's)")
    return tokenizer


class ZImageTextEncoder(TokenizedTextEncoder):
    """Qwen3 + its tokenizer; :meth:`encode` gives each prompt's caption features (L, D)."""

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, tokenizer_path: str | os.PathLike, dtype: torch.dtype = torch.float32
    ) -> ZImageTextEncoder:
        """Load a ``text_encoder/`` folder strictly (config.json + weights) and its tokenizer folder."""
        folder = Path(folder)
        config = Qwen3Config(**{k: v for k, v in read_json_mapping(folder / "config.json", "Qwen3 config").items()
                                if not k.startswith("_")})  # fmt: skip
        with torch.device("meta"):  # no wasted random init: load_into assigns the checkpoint tensors
            model = Qwen3Model(config)
        state = read_folder_state_dict(folder, prefix="model")
        state.pop(LM_HEAD, None)
        load_into(model, cast_floating(strip_prefix(state, ("model.",)), dtype), str(folder))
        model.rotary_emb = Qwen3RotaryEmbedding(config)  # its frequency buffers are derived, not stored
        return cls(model.eval(), load_qwen_tokenizer(tokenizer_path))

    def chat_prompts(self, prompts: list[str]) -> list[str]:
        """Each prompt as one user turn of the chat template, generation prompt added, thinking enabled."""
        return [
            self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=True)
            for prompt in prompts
        ]  # fmt: skip

    @torch.no_grad()
    def encode(self, prompts: list[str], max_length: int = TEXT_LEN) -> list[torch.Tensor]:
        """Prompts -> one (L_i, D) tensor each: the second-to-last hidden states of its real tokens."""
        tokens = self.tokenizer(self.chat_prompts(prompts), padding="max_length", max_length=max_length,
                                truncation=True, return_tensors="pt")  # fmt: skip
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device).bool()  # (B, 512)
        hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return [hidden[i][mask[i]] for i in range(len(prompts))]  # (L_i, D) each
