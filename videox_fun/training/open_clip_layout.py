"""open_clip CLIP checkpoints (HPS v2.0 / v2.1's ``HPS_v2*_compressed.pt``) as transformers' ``CLIPModel``.

HPS is an open_clip ViT-H-14 fine-tune, saved as ``{"state_dict": open_clip CLIP state}``. The math of
open_clip's ``CLIP`` (``model.py`` / ``transformer.py``, the version hpsv2 bundles) is transformers'
``CLIPModel``'s: pre-norm blocks with exact GELU (ViT-H-14 has no ``quick_gelu``), a causal text tower
pooled at the end-of-text token, the vision tower pooled at the class token after ``ln_post``, and
bias-free projections. Only the names and two layouts differ:

- ``nn.MultiheadAttention``'s fused ``in_proj_weight`` / ``in_proj_bias`` rows are [q; k; v];
- the projections are matrices applied as ``x @ proj`` ((width, embed_dim)), where transformers' are
  ``nn.Linear`` weights ((embed_dim, width)): they are transposed.

The mapping rules are those of transformers' ``convert_clip_original_pytorch_to_hf.py`` (OpenAI CLIP,
whose names open_clip keeps). Nothing here imports open_clip.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel

from ..models.loading import (
    CheckpointMismatchError,
    assert_materialised,
    load_into,
    put_unique,
    rename_key,
    rename_rules,
    strip_prefix,
    template_regex,
)

# open_clip's ``model_configs/ViT-H-14.json``: the architecture of HPS v2.0 and v2.1.
VIT_H_14: Mapping[str, Any] = MappingProxyType(
    {
        "embed_dim": 1024,
        "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
    }
)
# open_clip's defaults for what a model config leaves out (``CLIPVisionCfg`` / ``CLIPTextCfg``).
DEFAULT_HEAD_WIDTH, DEFAULT_TEXT_HEADS, DEFAULT_MLP_RATIO = 64, 8, 4.0

# (open_clip name, transformers CLIPModel name); {i} a block, {p} weight or bias.
BLOCK_PAIRS: tuple[tuple[str, str], ...] = (
    ("resblocks.{i}.ln_1.{p}", "layers.{i}.layer_norm1.{p}"),
    ("resblocks.{i}.attn.out_proj.{p}", "layers.{i}.self_attn.out_proj.{p}"),
    ("resblocks.{i}.ln_2.{p}", "layers.{i}.layer_norm2.{p}"),
    ("resblocks.{i}.mlp.c_fc.{p}", "layers.{i}.mlp.fc1.{p}"),
    ("resblocks.{i}.mlp.c_proj.{p}", "layers.{i}.mlp.fc2.{p}"),
)
KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),  # (W,)
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),  # (grid^2 + 1, W)
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),  # (W, 3, P, P), no bias
    ("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),  # sic: transformers' spelling
    ("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
    *((f"visual.transformer.{a}", f"vision_model.encoder.{b}") for a, b in BLOCK_PAIRS),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),  # (vocab, W)
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),  # (context, W)
    ("ln_final.{p}", "text_model.final_layer_norm.{p}"),
    *((f"transformer.{a}", f"text_model.encoder.{b}") for a, b in BLOCK_PAIRS),
    ("logit_scale", "logit_scale"),  # () ; unused by HPS's score, kept so the model is whole
)
# Applied as ``x @ proj``: (width, embed_dim) -> nn.Linear weight (embed_dim, width).
TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
FUSED_QKV = ("visual.transformer.resblocks.{i}.attn.in_proj_{p}", "transformer.resblocks.{i}.attn.in_proj_{p}")
SPLIT_TARGET = (
    "vision_model.encoder.layers.{i}.self_attn.{n}_proj.{p}",
    "text_model.encoder.layers.{i}.self_attn.{n}_proj.{p}",
)
# The text tower's causal mask: a buffer some open_clip versions saved, rebuilt by transformers.
DROPPED = ("attn_mask",)
WRAPPERS = ("module.", "_orig_mod.")  # DDP / torch.compile prefixes

_RULES = rename_rules(KEY_PAIRS)
_FUSED = tuple(template_regex(t) for t in FUSED_QKV)


def clip_config(open_clip_config: Mapping[str, Any], eos_token_id: int) -> CLIPConfig:
    """transformers' ``CLIPConfig`` of an open_clip model config (``ViT-H-14.json``'s layout).

    eos_token_id: the tokenizer's end-of-text id, where the text tower is pooled (open_clip pools at the
    token ids' argmax, which is the end-of-text token of CLIP's BPE vocabulary: the same position).
    """
    vision, text = open_clip_config["vision_cfg"], open_clip_config["text_cfg"]
    act = "quick_gelu" if open_clip_config.get("quick_gelu") else "gelu"
    v_width, t_width = vision["width"], text["width"]
    return CLIPConfig(
        vision_config=dict(
            hidden_size=v_width,
            intermediate_size=int(v_width * vision.get("mlp_ratio", DEFAULT_MLP_RATIO)),
            num_hidden_layers=vision["layers"],
            num_attention_heads=v_width // vision.get("head_width", DEFAULT_HEAD_WIDTH),
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            hidden_act=act,
            layer_norm_eps=1e-5,  # open_clip's LayerNorm default
        ),
        text_config=dict(
            hidden_size=t_width,
            intermediate_size=int(t_width * text.get("mlp_ratio", DEFAULT_MLP_RATIO)),
            num_hidden_layers=text["layers"],
            num_attention_heads=text.get("heads", DEFAULT_TEXT_HEADS),
            vocab_size=text["vocab_size"],
            max_position_embeddings=text["context_length"],
            hidden_act=act,
            layer_norm_eps=1e-5,
            eos_token_id=eos_token_id,
        ),
        projection_dim=open_clip_config["embed_dim"],
    )


def convert_open_clip_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict under transformers ``CLIPModel`` names and layouts.

    Keys open_clip's CLIP does not have keep their names, so the strict load names them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in strip_prefix(state, WRAPPERS).items():
        if key in DROPPED:
            continue
        if key in TRANSPOSED:
            put_unique(out, TRANSPOSED[key], tensor.t().contiguous(), key)
            continue
        fused = next(((n, m) for n, pattern in enumerate(_FUSED) if (m := pattern.match(key))), None)
        if fused is not None:  # rows [q; k; v], as nn.MultiheadAttention's in_proj splits them
            tower, match = fused
            for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                put_unique(out, SPLIT_TARGET[tower].format(n=name, **match.groupdict()), part.contiguous(), key)
            continue
        put_unique(out, rename_key(key, _RULES) or key, tensor, key)
    return out


def open_clip_to_transformers(
    state: Mapping[str, torch.Tensor], open_clip_config: Mapping[str, Any], eos_token_id: int, source: str
) -> CLIPModel:
    """transformers' ``CLIPModel`` holding an open_clip CLIP state dict, strictly (a mismatch names its keys)."""
    return build_clip(clip_config(open_clip_config, eos_token_id), convert_open_clip_state(state), source)


def build_clip(config: CLIPConfig, state: Mapping[str, torch.Tensor], source: str) -> CLIPModel:
    """A ``CLIPModel`` of ``config`` holding ``state`` (transformers names), strictly, in eval mode.

    Built on the meta device: CLIP-H's billion parameters are never randomly initialised. A mismatch is
    one line (:class:`CheckpointMismatchError`) naming the first keys of each kind.
    """
    with torch.device("meta"):
        model = CLIPModel(config)
    try:
        load_into(model, state, source)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(" ".join(str(err).split())[:400]) from None
    # The position ids are non-persistent buffers: in no checkpoint, still on meta.
    for embeddings in (model.vision_model.embeddings, model.text_model.embeddings):
        embeddings.position_ids = torch.arange(embeddings.position_embedding.num_embeddings).expand((1, -1))
    assert_materialised(model, source)
    return model.eval()
