"""The Wan text encoder: the encoder half of UMT5-XXL plus its tokenizer.

transformers' ``UMT5EncoderModel`` is the network (principle 6: we do not re-type T5). What
this module adds is what Wan needs around it:

* prompt embeddings exactly as Wan2.1 (``wan/modules/t5.py``) and diffusers' ``WanPipeline``
  make them: each prompt keeps only its true tokens (``u[:seq_len]``, end-of-sequence token
  included) and the rest of the ``text_len`` rows are zeros, not encoder outputs;
* loading the transformers layout (``config.json`` + safetensors, e.g. the ``text_encoder/``
  folder of a diffusers release) and the ORIGINAL Wan file ``models_t5_umt5-xxl-enc-bf16.pth``
  with its tokenizer folder ``google/umt5-xxl/``, through one key table used in both directions;
* a small word-level tokenizer for the packaged tiny models and offline tests.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..component import OffloadableComponent
from ..loading import (
    assert_materialised,
    cast_floating,
    drop_prefixed,
    load_into_naming_originals,
    put_unique,
    read_folder_state_dict,
    read_state_dict,
    rename_key,
    rename_rules,
)

logger = logging.getLogger(__name__)

# Wan conditions its DiT on 512 text tokens (config ``text_len``).
WAN_TEXT_LEN = 512
ORIGINAL_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
# Wan releases ship the tokenizer in this sub-folder beside the .pth file.
ORIGINAL_TOKENIZER_DIR = "google/umt5-xxl"

# The umt5-xxl encoder Wan uses (``umt5_xxl`` in wan/modules/t5.py: dim 4096, dim_ffn 10240,
# 64 heads, 24 layers, 32 buckets, vocab 256384, a relative-position table in every block).
# Read-only: make a config with :func:`umt5_xxl_config`.
UMT5_XXL_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.1,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
)


def umt5_xxl_config() -> UMT5Config:
    """A fresh ``UMT5Config`` of the umt5-xxl encoder used by every Wan2.1 / Wan2.2 release."""
    return UMT5Config(**UMT5_XXL_CONFIG)


def tiny_umt5_config(
    vocab_size: int = 64,
    d_model: int = 24,
    num_heads: int = 2,
    num_layers: int = 2,
    d_ff: int = 48,
    num_buckets: int = 32,
) -> UMT5Config:
    """A small UMT5 encoder config of the same family (gated GELU, per-block position bias) for tests."""
    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    return UMT5Config(
        **{
            **UMT5_XXL_CONFIG,
            "vocab_size": vocab_size,
            "d_model": d_model,
            "d_kv": d_model // num_heads,
            "d_ff": d_ff,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "relative_attention_num_buckets": num_buckets,
        }
    )


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words``: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then the words.

    Text is lower-cased and split on whitespace and punctuation; a punctuation mark or word that
    is not in the vocabulary becomes ``<unk>``. Like the T5 tokenizer it appends ``</s>`` to each
    text. ``save_pretrained`` writes it as ``tokenizer.json``, which :func:`load_tokenizer` reads.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {PAD_TOKEN: 0, EOS_TOKEN: 1, UNK_TOKEN: 2}
    for word in words:
        word = word.lower()
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"a vocabulary word must be non-empty and without spaces, got {word!r}")
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace() splits on spaces and cuts punctuation runs into their own tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, 1)]
    )
    tokenizer.add_special_tokens([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )
    fast.padding_side = "right"
    return fast


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a folder holding ``tokenizer.json`` (or from that file itself).

    transformers 5 ignores ``vocab_file=`` for T5 tokenizers, so only ``tokenizer.json`` is
    trusted; the umt5-xxl folder of Wan releases (``google/umt5-xxl/``) has one.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {folder}: pass tokenizer_path= a folder with tokenizer.json "
            f"(Wan releases ship one in {ORIGINAL_TOKENIZER_DIR}/ beside {ORIGINAL_T5_FILE})"
        )
    # The generic fast class reads tokenizer.json plus the special tokens of tokenizer_config.json.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {folder} has no pad token; Wan pads prompts to a fixed length")
    # Wan keeps u[:seq_len], which is only the true tokens when the padding is on the right.
    tokenizer.padding_side = "right"
    return tokenizer


_HAS_FTFY = importlib.util.find_spec("ftfy") is not None


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed, as in diffusers), HTML unescape twice, one space."""
    if _HAS_FTFY:  # optional, exactly as diffusers' WanPipeline treats it
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# Original Wan layout <-> transformers layout
# ---------------------------------------------------------------------------------------------

# (original name, transformers name); {i} is a block index. Facts from wan/modules/t5.py
# (T5Encoder / T5SelfAttention / T5FeedForward) and transformers' modeling_umt5.py. In the
# original FFN ``fc1(x) * gate(x)`` with ``gate = Sequential(Linear, GELU-tanh)``; in transformers
# ``act(wi_0(x)) * wi_1(x)``: so gate.0 is wi_0 and fc1 is wi_1.
UMT5_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    # UMT5 (unlike T5) has a relative-position table in every block (shared_pos=False in Wan).
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
)
# transformers ties the encoder's input embedding to ``shared``; its state dict lists both names.
HF_TIED_EMBEDDING = "encoder.embed_tokens.weight"


_UMT5_TO_HF = rename_rules(UMT5_KEY_PAIRS)
_UMT5_TO_ORIGINAL = rename_rules(UMT5_KEY_PAIRS, reverse=True)


def umt5_key_to_hf(key: str) -> str | None:
    """The transformers name of an original Wan T5 key (None if the key is not Wan's)."""
    return rename_key(key, _UMT5_TO_HF)


def umt5_key_to_original(key: str) -> str | None:
    """The original Wan T5 name of a transformers UMT5 encoder key (None if it has none)."""
    if key == HF_TIED_EMBEDDING:
        return "token_embedding.weight"
    return rename_key(key, _UMT5_TO_ORIGINAL)


def convert_umt5_original_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Wan T5 encoder state dict to ``UMT5EncoderModel`` names.

    Keys that are not Wan's keep their names, so the strict check that follows reports them as
    unexpected under the name the user can find in the file.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        put_unique(out, umt5_key_to_hf(key) or key, tensor, key)
    if "shared.weight" in out:
        out.setdefault(HF_TIED_EMBEDDING, out["shared.weight"])  # one tensor, two tied names
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:  # no data to compare: tied weights share one storage
        return a is b or a.untyped_storage() is b.untyped_storage()
    return a.data_ptr() == b.data_ptr() or torch.equal(a, b)


def convert_umt5_hf_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``UMT5EncoderModel`` state dict to the original Wan T5 layout (for export and tests)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == HF_TIED_EMBEDDING and "shared.weight" in state:
            if not _same_tensor(tensor, state["shared.weight"]):
                raise ValueError(f"{HF_TIED_EMBEDDING} differs from shared.weight; Wan has one token embedding")
            continue
        original = umt5_key_to_original(key)
        if original is None:
            raise ValueError(f"{key} has no equivalent in the original Wan T5 layout")
        put_unique(out, original, tensor, key)
    return out


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------


class WanTextEncoder(OffloadableComponent, nn.Module):
    """UMT5 encoder + tokenizer that turns prompts into Wan's zero-padded text context.

    ``encode(prompts)`` gives ``(B, max_length, d_model)``: row ``j < seq_len`` of a prompt is the
    encoder output of its token ``j`` (end-of-sequence token included), every later row is zero.
    """

    def __init__(self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: UMT5Config,
        tokenizer: PreTrainedTokenizerBase,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> WanTextEncoder:
        """A randomly initialised encoder of ``config`` (tests, training from scratch), in eval mode."""
        model = UMT5EncoderModel(config).to(device=device, dtype=dtype).eval()
        return cls(model, tokenizer).eval()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        tokenizer_path: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        config: UMT5Config | None = None,
    ) -> WanTextEncoder:
        """Load a transformers folder or an original Wan ``.pth`` file, strictly.

        ``path`` is (a) a folder with ``config.json`` and safetensors (``text_encoder/`` of a
        diffusers release, or our own ``save_pretrained``); (b) the original
        ``models_t5_umt5-xxl-enc-bf16.pth`` (or the release folder holding it), whose architecture
        is ``config`` (default: umt5-xxl). The tokenizer comes from ``tokenizer_path``, else from
        the folder itself, a sibling ``tokenizer/`` (diffusers layout) or ``google/umt5-xxl/``
        beside the .pth (Wan layout). Any missing, unexpected or mis-shaped key raises
        :class:`CheckpointMismatchError` naming it.
        """
        path = Path(path)
        if path.is_dir() and (path / "config.json").is_file():
            config = config or UMT5Config.from_pretrained(str(path))
            state = _read_hf_folder(path)
            to_original = None
            tokenizer_candidates = [path, path.parent / "tokenizer"]
        else:
            file = path / ORIGINAL_T5_FILE if path.is_dir() else path
            config = config or umt5_xxl_config()
            state = convert_umt5_original_to_hf(read_state_dict(file))
            to_original = umt5_key_to_original
            tokenizer_candidates = [file.parent / ORIGINAL_TOKENIZER_DIR, file.parent]
            path = file
        tokenizer = load_tokenizer(tokenizer_path or _first_with_tokenizer(tokenizer_candidates))
        model = build_and_load(config, cast_floating(state, dtype), str(path), to_original)
        return cls(model.to(device), tokenizer).eval()

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the transformers layout (config.json, model.safetensors) and tokenizer.json."""
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the original Wan T5 names (what ``models_t5_umt5-xxl-enc-bf16.pth`` holds)."""
        return convert_umt5_hf_to_original(self.model.state_dict())

    # -- properties -----------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width of the text context (4096 for umt5-xxl)."""
        return self.model.config.d_model

    def weights_device(self) -> torch.device:
        """Device of the encoder weights."""
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the encoder weights."""
        return self.model.shared.weight.dtype

    # -- computation ----------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str], max_length: int = WAN_TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenise ``prompts`` to ``(ids, mask)``, each ``(B, max_length)``, padded on the right.

        Prompts longer than ``max_length`` tokens are cut (keeping the end-of-sequence token), as in
        Wan; that is logged as a warning, since the tail of the prompt then has no effect.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        texts = [clean_prompt(p) for p in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        cut = [i for i, n in enumerate(lengths) if n > max_length]
        if cut:
            logger.warning("prompts %s are longer than %d tokens and were truncated", cut, max_length)
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode right-padded token ids; rows where ``attention_mask`` is 0 come out as zeros.

        input_ids, attention_mask: (B, L). Returns (B, L, d_model).
        """
        lengths = attention_mask.sum(dim=1)  # (B,)
        # Padding keys are masked out of every attention, and T5's position bias is relative, so
        # the true tokens' outputs do not depend on how much padding follows them: encode only up to
        # the longest prompt (512 -> a few dozen tokens for typical prompts) and add the zero rows.
        # Result: Wan's u[:seq_len] + zero padding, up to float summation order.
        width = max(int(lengths.max()), 1)
        hidden = self.model(input_ids=input_ids[:, :width], attention_mask=attention_mask[:, :width])
        hidden = hidden.last_hidden_state  # (B, width, C)
        keep = attention_mask[:, :width].bool().unsqueeze(-1)  # (B, width, 1)
        hidden = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        out = hidden.new_zeros(input_ids.shape[0], input_ids.shape[1], hidden.shape[-1])  # (B, L, C)
        out[:, :width] = hidden
        return out

    @torch.no_grad()
    def encode(
        self,
        prompts: Sequence[str],
        max_length: int = WAN_TEXT_LEN,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Prompts -> Wan text context ``(B, max_length, d_model)``, zeros after each prompt's tokens.

        Runs on the encoder's device; the result is returned on ``device`` (default: the encoder's)
        in ``dtype`` (default: the encoder's).
        """
        ids, mask = self.tokenize(prompts, max_length)  # (B, L), (B, L)
        context = self(ids.to(self.device), mask.to(self.device))  # (B, L, C)
        return context.to(device=device or self.device, dtype=dtype or self.dtype)


def _first_with_tokenizer(candidates: Sequence[Path]) -> Path:
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            return folder
    raise FileNotFoundError(
        "no tokenizer.json found in " + ", ".join(str(c) for c in candidates) + "; pass tokenizer_path="
    )


def _read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a transformers UMT5 folder, under ``UMT5EncoderModel`` names."""
    state = read_folder_state_dict(folder, prefix="model")
    # A full encoder-decoder umt5 checkpoint also works: its decoder is not part of the encoder.
    drop_prefixed(state, ("decoder.", "lm_head."), "decoder of an encoder-decoder checkpoint", str(folder))
    # Saved files keep one of the two tied names of the token embedding (diffusers: shared.weight).
    if "shared.weight" in state:
        state.setdefault(HF_TIED_EMBEDDING, state["shared.weight"])
    elif HF_TIED_EMBEDDING in state:
        state["shared.weight"] = state[HF_TIED_EMBEDDING]
    return state


def build_and_load(
    config: UMT5Config,
    state: Mapping[str, torch.Tensor],
    source: str,
    to_original: Callable[[str], str | None] | None,
) -> UMT5EncoderModel:
    """Build the encoder without allocating it (meta device) and take ``state``'s tensors (``UMT5EncoderModel``
    names) strictly: a missing, unexpected or mis-shaped key fails, named in the original layout too when
    ``to_original`` maps it. The one strict build of the encoder, for folders and single files alike."""
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    load_into_naming_originals(model, state, source, to_original)
    # assign=True gave each tied name its own Parameter: tie them back so they stay one tensor.
    model.encoder.set_input_embeddings(model.shared)
    assert_materialised(model, source)
    return model
