"""Key and config conversion between the original Wan layout and the diffusers layout.

One table of (original, diffusers) name templates serves both directions, so loading a
diffusers folder and writing one for diffusers use the same facts. ``{i}`` is a block index,
``{p}`` weight or bias, ``{tail}`` any rest of a name. Keys that match no template fail loudly
instead of passing through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..loading import CheckpointMismatchError, put_unique, rename_key, rename_rules

CLIP_DIM = 1280  # width of the ViT-H/14 image tokens Wan2.1 i2v models attend to
CLIP_TOKENS = 257  # tokens per image: a class token + 16 x 16 patches of 224 / 14


def blank_clip_tokens(
    batch: int, image_dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The (B, 257, image_dim) zeros a CLIP model attends to without an image, as the Fun releases train."""
    return torch.zeros(batch, CLIP_TOKENS, image_dim, device=device, dtype=dtype)


def _attention_pairs(stack: str = "blocks") -> list[tuple[str, str]]:
    pairs = []
    projections = [
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("o", "to_out.0"),
        ("norm_q", "norm_q"),
        ("norm_k", "norm_k"),
    ]
    for original, diffusers in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        for ours, theirs in projections:
            pairs.append((f"{stack}.{{i}}.{original}.{ours}.{{p}}", f"{stack}.{{i}}.{diffusers}.{theirs}.{{p}}"))
    for ours, theirs in (("k_img", "add_k_proj"), ("v_img", "add_v_proj"), ("norm_k_img", "norm_added_k")):
        pairs.append((f"{stack}.{{i}}.cross_attn.{ours}.{{p}}", f"{stack}.{{i}}.attn2.{theirs}.{{p}}"))
    return pairs


def _block_pairs(stack: str) -> list[tuple[str, str]]:
    """The pairs of one block of ``stack`` (``blocks``, or VACE's ``vace_blocks``: the same block, same names)."""
    return [
        (f"{stack}.{{i}}.modulation", f"{stack}.{{i}}.scale_shift_table"),
        # diffusers names the (affine) cross-attention norm norm2; the original calls it norm3.
        (f"{stack}.{{i}}.norm3.{{p}}", f"{stack}.{{i}}.norm2.{{p}}"),
        (f"{stack}.{{i}}.ffn.0.{{p}}", f"{stack}.{{i}}.ffn.net.0.proj.{{p}}"),
        (f"{stack}.{{i}}.ffn.2.{{p}}", f"{stack}.{{i}}.ffn.net.2.{{p}}"),
        *_attention_pairs(stack),
    ]


KEY_PAIRS: list[tuple[str, str]] = [
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("img_emb.proj.0.{p}", "condition_embedder.image_embedder.norm1.{p}"),
    ("img_emb.proj.1.{p}", "condition_embedder.image_embedder.ff.net.0.proj.{p}"),
    ("img_emb.proj.3.{p}", "condition_embedder.image_embedder.ff.net.2.{p}"),
    ("img_emb.proj.4.{p}", "condition_embedder.image_embedder.norm2.{p}"),
    *_block_pairs("blocks"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
    # VACE (diffusers' WanVACETransformer3DModel): the context's patch embedding, and its blocks, whose
    # before_proj (first block) and after_proj are proj_in and proj_out there.
    ("vace_patch_embedding.{p}", "vace_patch_embedding.{p}"),
    ("vace_blocks.{i}.before_proj.{p}", "vace_blocks.{i}.proj_in.{p}"),
    ("vace_blocks.{i}.after_proj.{p}", "vace_blocks.{i}.proj_out.{p}"),
    *_block_pairs("vace_blocks"),
    # Fun extras have no diffusers counterpart; they keep their names in either layout.
    ("ref_conv.{p}", "ref_conv.{p}"),
    ("control_adapter.{tail}", "control_adapter.{tail}"),
]


_TO_DIFFUSERS = rename_rules(KEY_PAIRS)
_TO_ORIGINAL = rename_rules(KEY_PAIRS, reverse=True)


def _convert(
    state: Mapping[str, torch.Tensor], rules: list[tuple[re.Pattern[str], str]], direction: str
) -> dict[str, torch.Tensor]:
    """Rename every key by ``rules``; a key no rule covers fails, naming it."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        renamed = rename_key(key, rules)
        if renamed is None:
            unknown.append(key)
        else:
            put_unique(converted, renamed, tensor, key)
    if unknown:
        raise CheckpointMismatchError(
            f"keys with no {direction} Wan equivalent: {unknown[:12]} ({len(unknown)} in all)"
        )
    return converted


def original_to_diffusers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout Wan state dict to diffusers' names."""
    return _convert(state, _TO_DIFFUSERS, "diffusers")


def diffusers_to_original_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout Wan state dict to the original names."""
    return _convert(state, _TO_ORIGINAL, "original")


def diffusers_module_to_original(name: str) -> str | None:
    """The original name of a diffusers transformer module (``blocks.0.attn1.to_q`` -> ``blocks.0.self_attn.q``)."""
    renamed = rename_key(f"{name}.weight", _TO_ORIGINAL)
    return renamed.removesuffix(".weight") if renamed is not None else None


def is_diffusers_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses diffusers' names (``condition_embedder.*``, ``blocks.N.attn1.*``)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in state)


# Fields only the original layout's config.json has, and fields only diffusers' has. The class name
# decides nothing: VideoX-Fun's own transformer class is also called ``WanTransformer3DModel`` and
# its ``save_pretrained`` writes the original field names under it.
ORIGINAL_CONFIG_FIELDS = frozenset({"dim", "num_heads", "in_dim", "out_dim"})
DIFFUSERS_CONFIG_FIELDS = frozenset({"num_attention_heads", "attention_head_dim", "in_channels", "out_channels"})


def is_diffusers_config(config: Mapping) -> bool:
    """Whether a config.json uses diffusers' ``WanTransformer3DModel`` fields (``num_attention_heads``...),
    read off the fields present; a config with the original fields (``dim``, ``num_heads``) is not,
    whatever its ``_class_name``."""
    if "num_attention_heads" in config:
        return True
    return not (config.keys() & ORIGINAL_CONFIG_FIELDS) and bool(config.keys() & DIFFUSERS_CONFIG_FIELDS)


def diffusers_config_to_original(config: Mapping) -> dict:
    """Map diffusers' constructor fields to the released config.json fields."""
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    unsupported = [k for k in ("pos_embed_seq_len",) if config.get(k)]
    if unsupported:
        raise ValueError(f"diffusers Wan config fields not supported yet: {unsupported}")
    return {
        "model_type": "i2v" if config.get("image_dim") else "t2v",
        **_vace_fields_to_original(config),
        "patch_size": list(config.get("patch_size", (1, 2, 2))),
        "in_dim": config["in_channels"],
        "out_dim": config["out_channels"],
        "dim": heads * head_dim,
        "ffn_dim": config["ffn_dim"],
        "freq_dim": config.get("freq_dim", 256),
        "text_dim": config.get("text_dim", 4096),
        "num_heads": heads,
        "num_layers": config["num_layers"],
        "qk_norm": bool(config.get("qk_norm", "rms_norm_across_heads")),
        "cross_attn_norm": bool(config.get("cross_attn_norm", True)),
        "eps": config.get("eps", 1e-6),
    }


def _vace_fields_to_original(config: Mapping) -> dict:
    """The VACE fields of a diffusers ``WanVACETransformer3DModel`` config in the release's names ({} for another)."""
    if not config.get("vace_layers"):
        return {}
    # Wan2.1-VACE's config.json says model_type vace; diffusers' class has the one (text-to-video) base.
    return {"model_type": "vace", "vace_layers": list(config["vace_layers"]), "vace_in_dim": config["vace_in_channels"]}


def original_config_to_diffusers(config: Mapping) -> dict:
    """Map released config.json fields to diffusers' ``WanTransformer3DModel`` constructor."""
    clip = has_clip_branch(config.get("model_type", "t2v"), config.get("image_dim", CLIP_DIM))
    return {
        "patch_size": tuple(config.get("patch_size", (1, 2, 2))),
        "num_attention_heads": config["num_heads"],
        "attention_head_dim": config["dim"] // config["num_heads"],
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": config.get("text_dim", 4096),
        "freq_dim": config.get("freq_dim", 256),
        "ffn_dim": config["ffn_dim"],
        "num_layers": config["num_layers"],
        "cross_attn_norm": config.get("cross_attn_norm", True),
        "qk_norm": "rms_norm_across_heads" if config.get("qk_norm", True) else None,
        "eps": config.get("eps", 1e-6),
        "image_dim": config.get("image_dim", CLIP_DIM) if clip else None,
        "added_kv_proj_dim": config["dim"] if clip else None,
        # VACE: diffusers' WanVACETransformer3DModel's fields (its class takes them; WanTransformer3DModel does not).
        **(
            {
                "vace_layers": list(config["vace_layers"]),
                "vace_in_channels": config.get("vace_in_dim") or config["in_dim"],
            }
            if config.get("vace_layers")
            else {}
        ),
    }


def animate_config_to_diffusers(config: Mapping) -> dict:
    """diffusers' ``WanAnimateTransformer3DModel`` fields for a Wan2.2-Animate config: the main stack's as an I2V
    model's (CLIP branch included), the motion and face widths, the face-block interval."""
    channels = config.get("motion_encoder_channels")
    return {
        **original_config_to_diffusers({**config, "model_type": "i2v"}),
        "latent_channels": config["out_dim"],
        "motion_encoder_size": config["motion_encoder_size"],
        "motion_style_dim": config["motion_style_dim"],
        "motion_dim": config["motion_dim"],
        "motion_encoder_dim": config["motion_encoder_dim"],
        "motion_encoder_channel_sizes": None if channels is None else {str(k): v for k, v in channels.items()},
        "face_encoder_hidden_dim": config["face_encoder_hidden_dim"],
        "face_encoder_num_heads": config["face_encoder_num_heads"],
        "inject_face_latents_blocks": config["face_adapter_interval"],
    }


def has_clip_branch(model_type: str, image_dim: int | None = CLIP_DIM) -> bool:
    """Whether a config has the CLIP image branch: Wan2.1 i2v / flf2v, not Wan2.2's (``image_dim`` None)."""
    return model_type in ("i2v", "flf2v") and image_dim is not None
