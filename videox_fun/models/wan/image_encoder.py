"""The Wan image encoder: the ViT-H/14 vision tower of open-clip xlm-roberta-large.

Wan2.1 i2v / flf2v and the Wan2.1 Fun releases condition the DiT on 257 image tokens: the output
of the first 31 of the 32 transformer blocks (``use_31_block=True`` in Wan's ``clip.py``, no
post-norm, no projection) for a 224x224 crop. The network is transformers' ``CLIPVisionModel``
(same math: pre-norm, exact GELU, 1/sqrt(head_dim) attention); this module adds Wan's
preprocessing, the penultimate-layer choice and the loading of the ORIGINAL file
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` besides the transformers layout
(``image_encoder/`` of a diffusers release).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

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
    strip_prefix,
    template_regex,
)

logger = logging.getLogger(__name__)

ORIGINAL_CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


def missing_image_encoder_error() -> ValueError:
    """The error for an input image given to a CLIP-conditioned model loaded without its encoder."""
    return ValueError(
        f"this model attends to CLIP image tokens but no image encoder was loaded: put {ORIGINAL_CLIP_FILE} "
        "(or an image_encoder/ folder) in the model folder, or set image_encoder_subpath in the config"
    )


# OpenAI CLIP normalisation, used by Wan's clip.py for this (non-SigLIP) model.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ``clip_xlm_roberta_vit_h_14`` in wan/modules/clip.py: vision_dim 1280, mlp_ratio 4, 16 heads,
# 32 layers, patch 14, image 224, activation 'gelu' (exact), LayerNorm eps 1e-5, embed_dim 1024
# (the projection, unused by Wan). Read-only: make a config with :func:`vit_h_14_config`.
VIT_H_14_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "num_channels": 3,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 1024,
    }
)


def vit_h_14_config() -> CLIPVisionConfig:
    """A fresh ``CLIPVisionConfig`` of Wan's ViT-H/14 vision tower (257 tokens of width 1280)."""
    return CLIPVisionConfig(**VIT_H_14_CONFIG)


def tiny_vision_config(
    hidden_size: int = 24,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 48,
    image_size: int = 224,
    patch_size: int = 14,
) -> CLIPVisionConfig:
    """A small vision tower of the same family; at the default 224 / 14 it still gives 257 tokens."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    return CLIPVisionConfig(
        **{
            **VIT_H_14_CONFIG,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": hidden_size,
        }
    )


# ---------------------------------------------------------------------------------------------
# Original Wan layout <-> transformers layout
# ---------------------------------------------------------------------------------------------

# (original name, transformers CLIPVisionModel name); {i} a block, {p} weight or bias. Facts from
# wan/modules/clip.py (VisionTransformer, AttentionBlock, SelfAttention) and transformers'
# modeling_clip.py. Names are relative to the vision core (``CLIPVisionTransformer``).
CLIP_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    # pre_norm=True in Wan, so the patch embedding has no bias (as in transformers).
    ("visual.patch_embedding.weight", "embeddings.patch_embedding.weight"),
    ("visual.cls_embedding", "embeddings.class_embedding"),  # (1, 1, C) <-> (C,)
    ("visual.pos_embedding", "embeddings.position_embedding.weight"),  # (1, 257, C) <-> (257, C)
    ("visual.pre_norm.{p}", "pre_layrnorm.{p}"),  # sic: transformers' spelling
    ("visual.transformer.{i}.norm1.{p}", "encoder.layers.{i}.layer_norm1.{p}"),
    ("visual.transformer.{i}.attn.proj.{p}", "encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("visual.transformer.{i}.norm2.{p}", "encoder.layers.{i}.layer_norm2.{p}"),
    # mlp = Sequential(Linear, GELU, Linear, Dropout)
    ("visual.transformer.{i}.mlp.0.{p}", "encoder.layers.{i}.mlp.fc1.{p}"),
    ("visual.transformer.{i}.mlp.2.{p}", "encoder.layers.{i}.mlp.fc2.{p}"),
    ("visual.post_norm.{p}", "post_layernorm.{p}"),
)
# One fused Linear(C, 3C) in the original; its output is viewed as (..., 3, heads, head_dim), so the
# rows are [q; k; v] in that order.
FUSED_QKV = "visual.transformer.{i}.attn.to_qkv.{p}"
SPLIT_QKV = tuple(f"encoder.layers.{{i}}.self_attn.{name}_proj.{{p}}" for name in ("q", "k", "v"))
# Parts of the original CLIP file that Wan never runs: the text tower, the logit scale and the
# image projection. They are dropped by name (and logged); anything else unknown fails.
ORIGINAL_UNUSED = ("textual.", "log_scale", "visual.head")
# The vision tower's names in a transformers CLIP file (ComfyUI's clip_vision_h.safetensors is one).
HF_VISION_PREFIX = "vision_model."
# The same parts in a transformers CLIPModel / CLIPVisionModelWithProjection folder.
HF_UNUSED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")

_CLIP_TO_HF = rename_rules(CLIP_KEY_PAIRS)
_CLIP_TO_ORIGINAL = rename_rules(CLIP_KEY_PAIRS, reverse=True)
_FUSED_QKV = template_regex(FUSED_QKV)
_SPLIT_QKV = tuple(template_regex(t) for t in SPLIT_QKV)


def _split_qkv_index(key: str) -> tuple[int, dict[str, str]] | None:
    """(0 for q, 1 for k, 2 for v; template fields) of a transformers projection key, else None."""
    for n, pattern in enumerate(_SPLIT_QKV):
        match = pattern.match(key)
        if match:
            return n, match.groupdict()
    return None


def clip_key_to_original(key: str) -> str | None:
    """The original Wan name of a transformers vision-tower key (a q/k/v projection -> ``to_qkv``)."""
    split = _split_qkv_index(key)
    if split is not None:
        return FUSED_QKV.format(**split[1])
    return rename_key(key, _CLIP_TO_ORIGINAL)


def _squeeze_leading(tensor: torch.Tensor, ndim: int) -> torch.Tensor:
    # (1, 1, C) -> (C,), (1, N, C) -> (N, C); any other shape is kept so the check reports it.
    while tensor.dim() > ndim and tensor.shape[0] == 1:
        tensor = tensor[0]
    return tensor


def convert_clip_original_to_hf(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Convert an original Wan CLIP state dict to ``CLIPVisionModel`` names and shapes.

    The fused ``to_qkv`` is split into q / k / v; the text tower, ``log_scale`` and ``visual.head``
    are dropped and logged; keys that are not Wan's keep their names so the strict check names them.
    """
    state = dict(state)
    drop_prefixed(state, ORIGINAL_UNUSED, "text tower / logit scale / projection, unused by Wan", source, logger)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        fused = _FUSED_QKV.match(key)
        if fused:
            # (3C, ...) -> 3 x (C, ...); a wrong size gives wrong q/k/v shapes, which the check names.
            for template, part in zip(SPLIT_QKV, tensor.chunk(3, dim=0), strict=False):
                put_unique(out, template.format(**fused.groupdict()), part, key)
            continue
        hf = rename_key(key, _CLIP_TO_HF)
        if hf == "embeddings.class_embedding":
            tensor = _squeeze_leading(tensor, 1)
        elif hf == "embeddings.position_embedding.weight":
            tensor = _squeeze_leading(tensor, 2)
        put_unique(out, hf or key, tensor, key)
    return out


def convert_clip_hf_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a ``CLIPVisionModel`` state dict to the original Wan ``visual.*`` layout (export, tests).

    Only the vision tower without ``visual.head`` comes out: that is all Wan uses.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key == "embeddings.position_ids":  # a buffer some transformers versions save
            continue
        split = _split_qkv_index(key)
        if split is not None:
            qkv.setdefault(FUSED_QKV.format(**split[1]), {})[split[0]] = tensor
            continue
        original = rename_key(key, _CLIP_TO_ORIGINAL)
        if original is None:
            raise ValueError(f"{key} has no equivalent in the original Wan CLIP layout")
        if original == "visual.cls_embedding":
            tensor = tensor.reshape(1, 1, -1)  # (C,) -> (1, 1, C)
        elif original == "visual.pos_embedding":
            tensor = tensor.unsqueeze(0)  # (N, C) -> (1, N, C)
        put_unique(out, original, tensor, key)
    for original, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"{original}: q, k and v projections are not all present")
        out[original] = torch.cat([parts[0], parts[1], parts[2]], dim=0)  # (3C, ...)
    return out


def vision_core(model: CLIPVisionModel) -> nn.Module:
    """The module whose state-dict names are ``embeddings.*, encoder.layers.*, ...``.

    transformers 4 wraps it as ``model.vision_model``; transformers 5 is that module itself.
    """
    return getattr(model, "vision_model", model)


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------


class WanImageEncoder(OffloadableComponent, nn.Module):
    """CLIP ViT-H/14 vision tower giving Wan's image context: ``(B, 257, 1280)`` per image.

    ``encode(images)`` takes ``(B, 3, H, W)`` in [-1, 1], resizes to 224x224 (bicubic), applies the
    CLIP normalisation and returns the hidden state after block 31 of 32 (no post-norm).
    """

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: CLIPVisionConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> WanImageEncoder:
        """A randomly initialised vision tower of ``config`` (tests), in eval mode."""
        model = CLIPVisionModel(config).to(device=device, dtype=dtype).eval()
        return cls(model).to(device).eval()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        config: CLIPVisionConfig | None = None,
    ) -> WanImageEncoder:
        """Load a transformers CLIP vision folder or the original Wan CLIP ``.pth``, strictly.

        ``path`` is (a) a folder with ``config.json`` and safetensors (``image_encoder/`` of a
        diffusers release; a full CLIP folder also works, its text tower is dropped and logged);
        (b) ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (or the release folder holding
        it), whose architecture is ``config`` (default: ViT-H/14). Any missing, unexpected or
        mis-shaped key raises :class:`CheckpointMismatchError` naming it.
        """
        path = Path(path)
        if path.is_dir() and (path / "config.json").is_file():
            config = config or CLIPVisionConfig.from_pretrained(str(path))
            state = _read_hf_folder(path)
            to_original = None
        else:
            path = path / ORIGINAL_CLIP_FILE if path.is_dir() else path
            config = config or vit_h_14_config()
            state = convert_clip_original_to_hf(read_state_dict(path), str(path))
            to_original = clip_key_to_original
        model = build_and_load(config, cast_floating(state, dtype), str(path), to_original)
        return cls(model).to(device).eval()

    @classmethod
    def from_model_folder(
        cls, folder: str | os.PathLike, subpath: str | None, dtype: torch.dtype = torch.float32
    ) -> WanImageEncoder | None:
        """The encoder at ``folder / subpath``, or ``None`` (logged with the expected path) when absent.

        Callers that then get an image to encode fail with :func:`missing_image_encoder_error`
        instead of feeding the transformer zero CLIP tokens in place of the image.
        """
        if not subpath:
            return None
        path = Path(folder) / subpath
        if not path.exists():
            logger.warning("no image encoder at %s: modes with an input image will fail", path)
            return None
        return cls.from_pretrained(path, dtype=dtype)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the transformers layout (config.json, model.safetensors)."""
        self.model.save_pretrained(str(folder))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the original Wan ``visual.*`` names (without the unused ``visual.head``)."""
        return convert_clip_hf_to_original(vision_core(self.model).state_dict())

    # -- properties -----------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width of the image tokens (1280 for ViT-H/14)."""
        return self.model.config.hidden_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image: one class token plus the patches (257 for 224 / 14)."""
        return (self.model.config.image_size // self.model.config.patch_size) ** 2 + 1

    def weights_device(self) -> torch.device:
        """Device of the encoder weights."""
        return vision_core(self.model).embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the encoder weights."""
        return vision_core(self.model).embeddings.patch_embedding.weight.dtype

    # -- computation ----------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) CLIP-normalised, S = image_size (224), in float32.

        Same order as Wan's ``CLIPModel.visual``: bicubic resize (align_corners=False, no clamp),
        then [-1, 1] -> [0, 1], then (x - mean) / std.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got dtype {images.dtype}")
        low, high = images.amin().item(), images.amax().item()
        # Catches [0, 255] pixels; leaves room for the overshoot of an earlier bicubic resize.
        if low < -1.5 or high > 1.5:
            raise ValueError(f"images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]")
        size = self.model.config.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)  # (B, 3, S, S) in [0, 1]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) -> hidden state after the penultimate block, (B, N, C)."""
        out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=True)
        # hidden_states = (embeddings after pre-norm, block 1, ..., block L): [-2] is block L-1,
        # i.e. Wan's use_31_block for L = 32.
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> Wan image context (B, 257, C).

        Runs on the encoder's device; the result is returned on ``device`` (default: the
        encoder's) in ``dtype`` (default: the encoder's).
        """
        pixels = self.preprocess(images.to(self.device))  # (B, 3, 224, 224)
        context = self(pixels)  # (B, 257, C)
        return context.to(device=device or self.device, dtype=dtype or self.dtype)


def _read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a transformers CLIP folder, under vision-core names."""
    return hf_vision_state(read_folder_state_dict(folder, prefix="model"), str(folder))


def hf_vision_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP state (a whole ``CLIPModel``'s or a ``CLIPVisionModel``'s) under vision-core names.

    The text tower and projections, which Wan never runs, are dropped with a log line; so is the position-id
    buffer some versions saved; the ``vision_model.`` prefix goes.
    """
    state = dict(state)
    drop_prefixed(state, HF_UNUSED, "text tower / projections, unused by Wan", source, logger)
    for key in (f"{HF_VISION_PREFIX}embeddings.position_ids", "embeddings.position_ids"):
        state.pop(key, None)
    return strip_prefix(state, [HF_VISION_PREFIX])


def build_and_load(
    config: CLIPVisionConfig,
    state: Mapping[str, torch.Tensor],
    source: str,
    to_original: Callable[[str], str | None] | None,
) -> CLIPVisionModel:
    """Build the tower without allocating it (meta device) and take ``state``'s tensors (vision-core names)
    strictly: a missing, unexpected or mis-shaped key fails, named in the original layout too when
    ``to_original`` maps it. The one strict build of the tower, for folders and single files alike."""
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    core = vision_core(model)
    load_into_naming_originals(core, state, source, to_original)
    # The position ids are a non-persistent buffer: not in any checkpoint, still on meta.
    embeddings = core.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
    assert_materialised(model, source)
    return model
