"""WanTextEncoder: Wan's zero-padded prompt context, the original-layout converter, strict loading."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import UMT5EncoderModel

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.text_encoder import (
    HF_TIED_EMBEDDING,
    ORIGINAL_T5_FILE,
    ORIGINAL_TOKENIZER_DIR,
    UMT5_KEY_PAIRS,
    WanTextEncoder,
    build_word_tokenizer,
    convert_umt5_hf_to_original,
    convert_umt5_original_to_hf,
    load_tokenizer,
    tiny_umt5_config,
    umt5_key_to_hf,
    umt5_key_to_original,
    umt5_xxl_config,
)

WORDS = ["a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "moving", "left", "right", "up", "down"]
PROMPTS = ["a red circle moving right", "a blue   square"]
MAX_LEN = 16


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct values everywhere (norm scales too), so a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.3
            p.copy_(noise + 1.0 if "layer_norm" in name else noise)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> WanTextEncoder:
    enc = WanTextEncoder.from_config(tiny_umt5_config(vocab_size=len(tokenizer)), tokenizer)
    _randomise(enc.model)
    return enc


@pytest.fixture(scope="module")
def encoder64(encoder: WanTextEncoder) -> WanTextEncoder:
    """The same weights in float64: equalities that hold up to float32 summation order become tight."""
    return WanTextEncoder(copy.deepcopy(encoder.model).double(), encoder.tokenizer)


@pytest.fixture
def release(tmp_path: Path, encoder: WanTextEncoder, tokenizer) -> Path:
    """A folder laid out like a Wan release: the original .pth and google/umt5-xxl/ beside it."""
    torch.save(encoder.original_state_dict(), tmp_path / ORIGINAL_T5_FILE)
    tokenizer.save_pretrained(tmp_path / ORIGINAL_TOKENIZER_DIR)
    return tmp_path


# -- tokenizer --------------------------------------------------------------------------------


def test_word_tokenizer_ids_and_reload(tokenizer, tmp_path: Path) -> None:
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    vocab = tokenizer.get_vocab()
    ids = tokenizer("A Red, circle")["input_ids"]
    # lower-cased, "," split off and unknown, </s> appended
    assert ids == [vocab["a"], vocab["red"], 2, vocab["circle"], 1]
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    reloaded = load_tokenizer(tmp_path)
    batch = reloaded(["a red circle", "up"], padding="max_length", max_length=6)
    assert batch["input_ids"] == [[vocab["a"], vocab["red"], vocab["circle"], 1, 0, 0], [vocab["up"], 1, 0, 0, 0, 0]]
    assert batch["attention_mask"] == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


def test_load_tokenizer_without_tokenizer_json_fails(tmp_path: Path) -> None:
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


# -- the context Wan expects ------------------------------------------------------------------


def test_padding_rows_are_zero_and_true_rows_match_the_encoder(encoder64: WanTextEncoder) -> None:
    context = encoder64.encode(PROMPTS, max_length=MAX_LEN)
    assert context.shape == (2, MAX_LEN, 24)
    ids, mask = encoder64.tokenize(PROMPTS, MAX_LEN)
    # The diffusers / Wan computation: the encoder over all max_length positions, then u[:seq_len].
    full = encoder64.model(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, n in enumerate(mask.sum(1).tolist()):
        assert torch.allclose(context[i, :n], full[i, :n], rtol=0, atol=1e-12)
        assert context[i, :n].abs().sum(-1).min() > 0
        assert torch.equal(context[i, n:], torch.zeros_like(context[i, n:]))  # exactly zero


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_gives_the_same_embeddings_as_one_prompt_alone(encoder, encoder64, dtype: torch.dtype) -> None:
    enc = encoder if dtype == torch.float32 else encoder64
    together = enc.encode(PROMPTS, max_length=MAX_LEN)
    for i, prompt in enumerate(PROMPTS):
        alone = enc.encode([prompt], max_length=MAX_LEN)
        # float32 differs only by summation order (the batch is encoded over a wider window).
        assert torch.allclose(together[i], alone[0], rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-12)


def test_prompt_cleaning_and_dtype(encoder: WanTextEncoder) -> None:
    # Wan collapses white space and unescapes HTML before tokenising.
    a = encoder.encode(["a  red\n circle &amp;"], max_length=MAX_LEN)
    b = encoder.encode(["a red circle &"], max_length=MAX_LEN, dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16
    assert torch.allclose(a.to(torch.bfloat16).float(), b.float())


def test_long_prompt_is_truncated_with_a_warning(encoder: WanTextEncoder, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        context = encoder.encode([" ".join(["red"] * 40)], max_length=MAX_LEN)
    assert "truncated" in caplog.text
    assert context.shape == (1, MAX_LEN, 24)
    assert context[0].abs().sum(-1).min() > 0  # all 16 rows are tokens: 15 words + </s>


# -- the original Wan layout ------------------------------------------------------------------


def test_original_key_names_are_wans(encoder: WanTextEncoder) -> None:
    # Names and shapes of wan/modules/t5.py's T5Encoder (shared_pos=False: a table per block).
    expected = {"token_embedding.weight": (len(encoder.tokenizer), 24), "norm.weight": (24,)}
    for i in range(2):
        for name in ("attn.q", "attn.k", "attn.v", "attn.o"):
            expected[f"blocks.{i}.{name}.weight"] = (24, 24)
        expected[f"blocks.{i}.norm1.weight"] = (24,)
        expected[f"blocks.{i}.norm2.weight"] = (24,)
        expected[f"blocks.{i}.pos_embedding.embedding.weight"] = (32, 2)  # (buckets, heads)
        expected[f"blocks.{i}.ffn.gate.0.weight"] = (48, 24)
        expected[f"blocks.{i}.ffn.fc1.weight"] = (48, 24)
        expected[f"blocks.{i}.ffn.fc2.weight"] = (24, 48)
    assert {k: tuple(v.shape) for k, v in encoder.original_state_dict().items()} == expected


def test_key_table_both_ways(encoder: WanTextEncoder) -> None:
    hf_keys = set(encoder.model.state_dict())
    for key in hf_keys:
        original = umt5_key_to_original(key)
        assert original is not None
        assert key == HF_TIED_EMBEDDING or umt5_key_to_hf(original) == key
    for original, hf in UMT5_KEY_PAIRS:
        concrete = original.replace("{i}", "7")
        assert umt5_key_to_hf(concrete) == hf.replace("{i}", "7")
        assert umt5_key_to_original(hf.replace("{i}", "7")) == concrete
    assert umt5_key_to_hf("blocks.0.unknown.weight") is None
    state = encoder.model.state_dict()
    back = convert_umt5_original_to_hf(convert_umt5_hf_to_original(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def _bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional relative-position bucket, written out from its definition."""
    half = num_buckets // 2
    base = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    scaled = torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + scaled.long()).clamp(max=half - 1)
    return base + torch.where(dist < exact, dist, far)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _wan_t5_reference(
    state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, heads: int
) -> torch.Tensor:
    """Wan's T5Encoder.forward on ORIGINAL-layout weights (pre-norm blocks, unscaled attention,
    per-block relative bias, ``fc1(x) * gelu_tanh(gate(x))``), independent of transformers."""
    x = state["token_embedding.weight"][ids]  # (B, L, C)
    b, length, c = x.shape
    pos = torch.arange(length)
    bucket = _bucket(pos[None, :] - pos[:, None], 32, 128)  # (Lq, Lk): key - query
    blocked = (mask == 0)[:, None, None, :]  # (B, 1, 1, Lk)
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(blocks):
        w = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        bias = w["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # (1, N, Lq, Lk)
        h = _rms(x, w["norm1.weight"])
        q, k, v = (F.linear(h, w[f"attn.{n}.weight"]).view(b, length, heads, -1) for n in "qkv")
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias
        attn = logits.masked_fill(blocked, torch.finfo(x.dtype).min).softmax(-1)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, length, c), w["attn.o.weight"])
        h = _rms(x, w["norm2.weight"])
        gate = F.gelu(F.linear(h, w["ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, w["ffn.fc1.weight"]) * gate, w["ffn.fc2.weight"])
    return _rms(x, state["norm.weight"])


def test_matches_wans_t5_math_on_original_weights(encoder: WanTextEncoder) -> None:
    ids, mask = encoder.tokenize(PROMPTS, MAX_LEN)
    ours = encoder(ids, mask)
    reference = _wan_t5_reference(encoder.original_state_dict(), ids, mask, heads=2)
    for i, n in enumerate(mask.sum(1).tolist()):
        assert torch.allclose(ours[i, :n], reference[i, :n], atol=1e-5)


def test_original_pth_round_trip(release: Path, encoder: WanTextEncoder) -> None:
    loaded = WanTextEncoder.from_pretrained(release / ORIGINAL_T5_FILE, config=encoder.model.config)
    ours, theirs = encoder.model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight  # still tied
    assert torch.equal(loaded.encode(PROMPTS, MAX_LEN), encoder.encode(PROMPTS, MAX_LEN))
    assert not loaded.training


def test_release_folder_bf16_file(tmp_path: Path, encoder: WanTextEncoder, tokenizer) -> None:
    # Wan ships the encoder in bf16; the folder is enough, the tokenizer is found in google/umt5-xxl.
    torch.save({k: v.to(torch.bfloat16) for k, v in encoder.original_state_dict().items()}, tmp_path / ORIGINAL_T5_FILE)
    tokenizer.save_pretrained(tmp_path / ORIGINAL_TOKENIZER_DIR)
    loaded = WanTextEncoder.from_pretrained(tmp_path, config=encoder.model.config, dtype=torch.float32)
    assert loaded.dtype == torch.float32
    expected = encoder.model.state_dict()
    assert all(torch.equal(v, expected[k].to(torch.bfloat16).float()) for k, v in loaded.model.state_dict().items())


def test_transformers_folder_round_trip(tmp_path: Path, encoder: WanTextEncoder) -> None:
    encoder.save_pretrained(tmp_path)
    loaded = WanTextEncoder.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(PROMPTS, MAX_LEN), encoder.encode(PROMPTS, MAX_LEN))


def test_diffusers_layout_with_sibling_tokenizer(tmp_path: Path, encoder: WanTextEncoder, tokenizer) -> None:
    # diffusers: text_encoder/ holds only shared.weight of the tied pair, tokenizer/ sits beside it.
    from safetensors.torch import save_file

    encoder.model.config.save_pretrained(tmp_path / "text_encoder")
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items() if k != HF_TIED_EMBEDDING}
    save_file(state, str(tmp_path / "text_encoder" / "model.safetensors"))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = WanTextEncoder.from_pretrained(tmp_path / "text_encoder")
    assert torch.equal(loaded.encode(PROMPTS, MAX_LEN), encoder.encode(PROMPTS, MAX_LEN))


# -- strict checks ----------------------------------------------------------------------------


def _load_broken(release: Path, encoder: WanTextEncoder, edit) -> str:
    state = encoder.original_state_dict()
    edit(state)
    torch.save(state, release / ORIGINAL_T5_FILE)
    with pytest.raises(CheckpointMismatchError) as info:
        WanTextEncoder.from_pretrained(release, config=encoder.model.config)
    return str(info.value)


def test_missing_key_is_named(release: Path, encoder: WanTextEncoder) -> None:
    message = _load_broken(release, encoder, lambda s: s.pop("blocks.1.attn.q.weight"))
    assert "missing" in message
    assert "encoder.block.1.layer.0.SelfAttention.q.weight" in message  # transformers' name
    assert "blocks.1.attn.q.weight" in message  # and the name in the user's file


def test_misshaped_key_is_named(release: Path, encoder: WanTextEncoder) -> None:
    message = _load_broken(release, encoder, lambda s: s.update({"blocks.0.ffn.fc1.weight": torch.zeros(40, 24)}))
    assert "mis-shaped" in message
    assert "blocks.0.ffn.fc1.weight" in message and "(40, 24)" in message


def test_unknown_key_is_named(release: Path, encoder: WanTextEncoder) -> None:
    message = _load_broken(release, encoder, lambda s: s.update({"blocks.0.attn.extra.weight": torch.zeros(1)}))
    assert "unexpected" in message and "blocks.0.attn.extra.weight" in message


def test_wrong_variant_fails(release: Path, encoder: WanTextEncoder) -> None:
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\."):
        WanTextEncoder.from_pretrained(
            release, config=tiny_umt5_config(vocab_size=len(encoder.tokenizer), num_layers=1)
        )


def test_transformers_folder_with_missing_key(tmp_path: Path, encoder: WanTextEncoder) -> None:
    from safetensors.torch import load_file, save_file

    encoder.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("encoder.final_layer_norm.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"encoder\.final_layer_norm\.weight"):
        WanTextEncoder.from_pretrained(tmp_path)


# -- the released architecture ----------------------------------------------------------------


def test_umt5_xxl_encoder_parameter_count() -> None:
    config = umt5_xxl_config()
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    count = sum(p.numel() for p in model.parameters())  # the tied embedding counts once
    d, f, v, layers = 4096, 10240, 256384, 24
    per_block = 4 * d * d + 3 * d * f + 2 * d + 32 * 64  # q k v o, gate fc1 fc2, 2 norms, bias table
    assert count == v * d + layers * per_block + d == 5_680_910_336
    # Public figure: the text_encoder of Wan-AI/Wan2.2-T2V-A14B-Diffusers has an index total_size of
    # 11,361,820,672 bytes over 242 tensors in bf16 (2 bytes / parameter).
    assert 2 * count == 11_361_820_672
    original = convert_umt5_hf_to_original(model.state_dict())
    assert len(original) == 242
    assert original["blocks.0.ffn.gate.0.weight"].shape == (f, d)
