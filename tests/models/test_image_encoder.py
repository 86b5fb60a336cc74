"""WanImageEncoder: Wan's CLIP preprocessing and penultimate-block output, conversion, strict loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.image_encoder import (
    CLIP_KEY_PAIRS,
    CLIP_MEAN,
    CLIP_STD,
    FUSED_QKV,
    ORIGINAL_CLIP_FILE,
    WanImageEncoder,
    clip_key_to_original,
    convert_clip_hf_to_original,
    convert_clip_original_to_hf,
    tiny_vision_config,
    vision_core,
    vit_h_14_config,
)

HIDDEN, LAYERS, HEADS = 24, 3, 2


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct values everywhere (norm scales and biases too), so a swapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


@pytest.fixture(scope="module")
def encoder() -> WanImageEncoder:
    enc = WanImageEncoder.from_config(tiny_vision_config(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS))
    _randomise(enc.model)
    return enc


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 60, 90, generator=gen) * 2 - 1  # (B, 3, H, W) in [-1, 1], not 224x224


def _full_original_file(encoder: WanImageEncoder, path: Path) -> None:
    """Write the original layout as Wan ships it: visual.* plus the head, the text tower and log_scale."""
    state = encoder.original_state_dict()
    state["visual.head"] = torch.randn(HIDDEN, 16)  # (dim, embed_dim) projection, unused by Wan
    state["textual.token_embedding.weight"] = torch.randn(10, 8)
    state["textual.head.0.weight"] = torch.randn(8, 8)
    state["log_scale"] = torch.tensor(4.6)
    torch.save(state, path)


# -- what Wan computes ------------------------------------------------------------------------


def test_output_shape_is_257_tokens(encoder: WanImageEncoder, images: torch.Tensor) -> None:
    context = encoder.encode(images)
    assert context.shape == (2, 257, HIDDEN) and encoder.num_tokens == 257
    assert encoder.encode(images, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_encode_is_the_penultimate_block_of_clip_vision_model(encoder: WanImageEncoder, images) -> None:
    # Wan's preprocessing written out: bicubic resize, [-1, 1] -> [0, 1], CLIP mean / std.
    x = F.interpolate(images, size=(224, 224), mode="bicubic", align_corners=False) * 0.5 + 0.5
    pixels = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    model: CLIPVisionModel = encoder.model
    out = model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == LAYERS + 1
    ours = encoder.encode(images)
    assert torch.allclose(ours, out.hidden_states[-2], atol=1e-6)
    # ... which is the output of blocks 1..L-1 after the pre-norm, without the post-norm:
    core = vision_core(model)
    h = core.pre_layrnorm(core.embeddings(pixels))
    for layer in core.encoder.layers[:-1]:
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
    assert torch.allclose(ours, h, atol=1e-6)
    assert not torch.allclose(ours, out.last_hidden_state, atol=1e-2)


def test_preprocess_at_224_is_only_the_normalisation(encoder: WanImageEncoder) -> None:
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    expected = ((images + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(encoder.preprocess(images), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(3, 32, 32), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 4, 32, 32), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.full((1, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    ],
)
def test_bad_images_are_refused(encoder: WanImageEncoder, images: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encoder.encode(images)


def _layer_norm(x: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)


def _wan_vit_reference(state: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """Wan's VisionTransformer.forward(use_31_block=True) on ORIGINAL-layout weights, independent of
    transformers: fused qkv viewed as (3, heads, head_dim), exact GELU, all blocks but the last."""
    patch = state["visual.patch_embedding.weight"]
    x = F.conv2d(pixels, patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)  # (B, P, C)
    b, _, c = x.shape
    x = torch.cat([state["visual.cls_embedding"].expand(b, -1, -1), x], dim=1) + state["visual.pos_embedding"]
    x = _layer_norm(x, state, "visual.pre_norm")
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual.transformer."))
    for i in range(blocks - 1):
        p = f"visual.transformer.{i}."
        qkv = F.linear(
            _layer_norm(x, state, p + "norm1"), state[p + "attn.to_qkv.weight"], state[p + "attn.to_qkv.bias"]
        )
        q, k, v = qkv.view(b, -1, 3, heads, c // heads).unbind(2)  # each (B, S, N, D)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(
            a.transpose(1, 2).reshape(b, -1, c), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"]
        )
        h = F.gelu(F.linear(_layer_norm(x, state, p + "norm2"), state[p + "mlp.0.weight"], state[p + "mlp.0.bias"]))
        x = x + F.linear(h, state[p + "mlp.2.weight"], state[p + "mlp.2.bias"])
    return x


def test_matches_wans_vit_math_on_original_weights(encoder: WanImageEncoder, images) -> None:
    pixels = encoder.preprocess(images)
    reference = _wan_vit_reference(encoder.original_state_dict(), pixels, HEADS)
    assert torch.allclose(encoder(pixels), reference, atol=1e-5)


# -- the original Wan layout ------------------------------------------------------------------


def test_original_key_names_are_wans(encoder: WanImageEncoder) -> None:
    # Names and shapes of wan/modules/clip.py's VisionTransformer (pre_norm: no patch bias).
    c = HIDDEN
    expected = {
        "visual.patch_embedding.weight": (c, 3, 14, 14),
        "visual.cls_embedding": (1, 1, c),
        "visual.pos_embedding": (1, 257, c),
        "visual.pre_norm.weight": (c,),
        "visual.pre_norm.bias": (c,),
        "visual.post_norm.weight": (c,),
        "visual.post_norm.bias": (c,),
    }
    for i in range(LAYERS):
        p = f"visual.transformer.{i}."
        expected |= {p + "attn.to_qkv.weight": (3 * c, c), p + "attn.to_qkv.bias": (3 * c,)}
        expected |= {p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,)}
        expected |= {p + "mlp.0.weight": (2 * c, c), p + "mlp.0.bias": (2 * c,)}
        expected |= {p + "mlp.2.weight": (c, 2 * c), p + "mlp.2.bias": (c,)}
        for norm in ("norm1", "norm2"):
            expected |= {p + f"{norm}.weight": (c,), p + f"{norm}.bias": (c,)}
    assert {k: tuple(v.shape) for k, v in encoder.original_state_dict().items()} == expected


def test_key_table_both_ways(encoder: WanImageEncoder) -> None:
    state = vision_core(encoder.model).state_dict()
    back = convert_clip_original_to_hf(convert_clip_hf_to_original(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    for original, hf in CLIP_KEY_PAIRS:
        concrete = original.replace("{i}", "5").replace("{p}", "bias")
        assert clip_key_to_original(hf.replace("{i}", "5").replace("{p}", "bias")) == concrete
    fused = FUSED_QKV.format(i=5, p="weight")
    for name in "qkv":
        assert clip_key_to_original(f"encoder.layers.5.self_attn.{name}_proj.weight") == fused
    # q, k, v are the three consecutive row blocks of to_qkv
    qkv = torch.arange(6.0).view(6, 1)
    split = convert_clip_original_to_hf({fused: qkv})
    assert [split[f"encoder.layers.5.self_attn.{n}_proj.weight"].flatten().tolist() for n in "qkv"] == [
        [0, 1],
        [2, 3],
        [4, 5],
    ]


def test_original_pth_round_trip(tmp_path: Path, encoder: WanImageEncoder, images, caplog) -> None:
    _full_original_file(encoder, tmp_path / ORIGINAL_CLIP_FILE)
    with caplog.at_level(logging.INFO, logger="videox_fun.models.wan.image_encoder"):
        loaded = WanImageEncoder.from_pretrained(tmp_path, config=encoder.model.config)
    assert "dropped 4 tensors" in caplog.text and "textual." in caplog.text
    ours, theirs = vision_core(encoder.model).state_dict(), vision_core(loaded.model).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(loaded.encode(images), encoder.encode(images))
    assert not loaded.training


def test_transformers_folder_round_trip(tmp_path: Path, encoder: WanImageEncoder, images) -> None:
    encoder.save_pretrained(tmp_path)
    loaded = WanImageEncoder.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.dtype == torch.float64
    assert torch.allclose(loaded.encode(images).float(), encoder.encode(images), atol=1e-5)


def test_legacy_prefix_and_full_clip_folder(tmp_path: Path, images) -> None:
    # A whole CLIPModel folder (vision_model.* + text_model.* + projections): the vision tower loads.
    config = CLIPConfig(
        vision_config=tiny_vision_config(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS).to_dict(),
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8,
    )
    full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    loaded = WanImageEncoder.from_pretrained(tmp_path)
    reference = WanImageEncoder(CLIPVisionModel(config.vision_config)).eval()
    vision_core(reference.model).load_state_dict(vision_core(full.vision_model).state_dict())
    assert torch.equal(loaded.encode(images), reference.encode(images))


# -- strict checks ----------------------------------------------------------------------------


def _load_broken(tmp_path: Path, encoder: WanImageEncoder, edit) -> str:
    state = encoder.original_state_dict()
    edit(state)
    torch.save(state, tmp_path / ORIGINAL_CLIP_FILE)
    with pytest.raises(CheckpointMismatchError) as info:
        WanImageEncoder.from_pretrained(tmp_path / ORIGINAL_CLIP_FILE, config=encoder.model.config)
    return str(info.value)


def test_missing_key_is_named(tmp_path: Path, encoder: WanImageEncoder) -> None:
    message = _load_broken(tmp_path, encoder, lambda s: s.pop("visual.transformer.1.mlp.2.bias"))
    assert "missing" in message and "encoder.layers.1.mlp.fc2.bias" in message
    assert "visual.transformer.1.mlp.2.bias" in message


def test_misshaped_fused_qkv_is_named(tmp_path: Path, encoder: WanImageEncoder) -> None:
    bad = torch.zeros(3 * 20, HIDDEN)  # a 20-wide attention in a 24-wide model
    message = _load_broken(tmp_path, encoder, lambda s: s.update({"visual.transformer.0.attn.to_qkv.weight": bad}))
    assert "mis-shaped" in message and "encoder.layers.0.self_attn.q_proj.weight" in message
    assert "visual.transformer.0.attn.to_qkv.weight" in message


def test_unknown_key_is_named(tmp_path: Path, encoder: WanImageEncoder) -> None:
    message = _load_broken(tmp_path, encoder, lambda s: s.update({"visual.extra_norm.weight": torch.zeros(HIDDEN)}))
    assert "unexpected" in message and "visual.extra_norm.weight" in message


# -- the released architecture ----------------------------------------------------------------


def test_vit_h_14_parameter_count() -> None:
    with torch.device("meta"):
        model = CLIPVisionModel(vit_h_14_config())
    count = sum(p.numel() for p in model.parameters())
    d, layers, tokens = 1280, 32, 257
    per_block = 4 * d * d + 4 * d + 2 * (4 * d * d) + 4 * d + d + 4 * d  # qkv+out, mlp, 2 LayerNorms
    embeddings = d * 3 * 14 * 14 + d + tokens * d  # patch conv (no bias), class token, positions
    assert count == embeddings + 2 * 2 * d + layers * per_block == 630_766_080
    # Public figure: open_clip docs/model_profile.csv, row xlm-roberta-large-ViT-H-14 (the model of
    # Wan's CLIP file), image_mparams 632.08: our tower plus the 1280 x 1024 projection Wan leaves out.
    assert round((count + d * 1024) / 1e6, 2) == 632.08
    original = convert_clip_hf_to_original(vision_core(model).state_dict())
    assert original["visual.transformer.31.attn.to_qkv.weight"].shape == (3 * d, d)
    assert len(original) == 7 + 12 * layers
