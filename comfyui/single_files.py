"""Wan models from single files in ComfyUI's own model folders: what the chunked loader nodes read and load.

ComfyUI keeps each component of a model as one file in a folder of its kind: the transformer in
``diffusion_models/``, the VAE in ``vae/``, umT5 in ``text_encoders/``, the CLIP vision tower in
``clip_vision/``. This module reads such files in the layouts people have (the original Wan release files,
ComfyUI's repackaged ones, its ``*_fp8_scaled`` files), tells the Wan variant from the transformer's tensor
names and shapes, and loads a pipeline from the chosen files with the library's own component classes, key
converters and fp8 layers.

The loader nodes read headers only (names, shapes, dtypes, metadata: milliseconds for any size); the weights
load when a sampler first needs the pipeline, as with the folder loaders.

What shapes cannot say (the head count of a transformer whose heads are not 128 wide as in every release, a
VAE's latent statistics, a vision tower's heads) is read from the file's safetensors metadata: a ``config``
JSON with one entry per component (``transformer``, ``vae``, ``image_encoder``), the convention ComfyUI itself
reads for such facts (its LTXV files). :func:`export_single_files` writes files that carry it
(``python -m comfyui.write_single_files``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from videox_fun.config import GenerationDefaults, ModelConfig
from videox_fun.families import Recognised, SizeRules
from videox_fun.families.wan import WAN_MODES, WanFamily
from videox_fun.models.loading import (
    FORMAT_MARKER_KEYS,
    CheckpointMismatchError,
    cast_floating,
    check_readable,
    check_state_dict,
    drop_prefixed,
    public_config,
    read_state_dict,
    strip_prefix,
    unreadable_safetensors,
)
from videox_fun.models.wan.keys import (
    CLIP_DIM,
    diffusers_config_to_original,
    diffusers_to_original_keys,
    has_clip_branch,
    is_diffusers_config,
    is_diffusers_state,
)
from videox_fun.models.wan.text_encoder import ORIGINAL_TOKENIZER_DIR, UMT5_XXL_CONFIG
from videox_fun.models.wan.variants import PRESETS, WanVariant, variant_of
from videox_fun.runtime.fp8 import FP8, dequantize_fp8_state, prepare_for_fp8_state

from . import host

if TYPE_CHECKING:
    from videox_fun.models.wan.image_encoder import WanImageEncoder
    from videox_fun.models.wan.text_encoder import WanTextEncoder
    from videox_fun.models.wan.transformer import WanTransformer3DModel
    from videox_fun.models.wan.vae import WanVAE
    from videox_fun.pipelines.wan import WanPipeline

logger = logging.getLogger("videox_fun.comfyui")

METADATA_KEY = "config"  # safetensors metadata: {"transformer": {...}, "vae": {...}, "image_encoder": {...}}
HEAD_DIM = 128  # every Wan release's attention head width (ComfyUI reads num_heads = dim // 128 too)
CLIP_HEAD_DIM = 80  # ViT-H/14's (1280 wide, 16 heads), the vision tower of every Wan2.1 i2v / Fun release
TOKENIZER_KEY = "spiece_model"  # ComfyUI's umT5 files carry their sentencepiece model as a uint8 tensor
# The vision tower's names in a transformers CLIP file (ComfyUI's clip_vision_h.safetensors is one).
HF_VISION_PREFIX = "vision_model."
# safetensors' dtype names -> torch's (for header-only reading).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


# ------------------------------------------------------------------------------------------
# Reading files: names, shapes and metadata without the weights
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A weights file without its data: each tensor on the meta device (name, shape, dtype), and its metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    def config_entry(self, component: str) -> dict[str, Any] | None:
        """The ``config`` metadata's entry for ``component`` (None when the file carries none)."""
        text = self.metadata.get(METADATA_KEY)
        if text is None:
            return None
        try:
            entry = json.loads(text).get(component)
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{self.path}: its '{METADATA_KEY}' metadata is not a JSON object ({err})") from err
        return dict(entry) if entry is not None else None


def read_header(path: Path) -> Header:
    """Tensor names, shapes and dtypes of a weights file (safetensors: its header only; a pickle is mapped)."""
    check_readable(path)
    if path.suffix != ".safetensors":
        state = read_state_dict(path)  # mmap: the data is read only when touched
        return Header(path, {k: v.to("meta") for k, v in state.items()}, {})
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            names = reader.keys()  # a list, not a mapping's view
            tensors = {key: meta_tensor(reader.get_slice(key)) for key in names}
            metadata = dict(reader.metadata() or {})
    except Exception as err:  # a truncated or foreign file: say which
        raise unreadable_safetensors(path, err) from err
    return Header(path, tensors, metadata)


def meta_tensor(tensor_slice: Any) -> torch.Tensor:
    """A meta tensor of a safetensors slice's shape and dtype."""
    return torch.empty(tensor_slice.get_shape(), dtype=SAFETENSORS_DTYPES[tensor_slice.get_dtype()], device="meta")


def count_blocks(names: Any, prefix: str) -> int:
    """How many numbered blocks ``{prefix}N.`` the names hold."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({match.group(1) for name in names if (match := pattern.match(name))})


def torch_dtype(name: str) -> torch.dtype:
    """A library dtype name (``bfloat16``...) as a torch dtype."""
    return getattr(torch, name)


def is_fp8(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state stores weights in float8 (ComfyUI's ``*_fp8_e4m3fn*`` / ``*_fp8_scaled`` files)."""
    return any(t.dtype == FP8 for t in state.values()) or any(k in FORMAT_MARKER_KEYS for k in state)


# ------------------------------------------------------------------------------------------
# The transformer: variant from shapes
# ------------------------------------------------------------------------------------------


def transformer_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformer state under the original Wan names, as :func:`read_transformer_weights` reads files
    (ComfyUI's ``model.diffusion_model.`` prefix off, diffusers names converted), its format markers kept."""
    from videox_fun.models.wan.transformer import CHECKPOINT_PREFIXES, DIFFUSERS_PREFIXES

    markers = {key: state[key] for key in FORMAT_MARKER_KEYS if key in state}
    weights = {key: value for key, value in state.items() if key not in markers}
    if is_diffusers_state(weights):
        weights = diffusers_to_original_keys(strip_prefix(weights, DIFFUSERS_PREFIXES))
    else:
        weights = strip_prefix(weights, CHECKPOINT_PREFIXES)
    return {**weights, **markers}


def shape_of(state: Mapping[str, torch.Tensor], key: str, source: Path) -> tuple[int, ...]:
    """A tensor's shape, or an error saying the file is not the model the loader reads."""
    if key not in state:
        raise CheckpointMismatchError(f"{source} has no {key}: not a Wan transformer (keys: {sorted(state)[:5]})")
    return tuple(state[key].shape)


def config_from_shapes(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, Any]:
    """A Wan transformer config (the released config.json's fields) read off a state's names and shapes.

    Widths, depth, patch and channel layout are in the shapes; the head count is not (the q / k norms span the
    whole width), so it is ``dim / 128`` as in every release; ``text_len`` is the releases' 512. ``model_type``:
    ``i2v`` with a CLIP branch (``img_emb``) or extra input channels, ``ti2v`` for the Wan2.2 VAE's 48 latent
    channels, else ``t2v``.
    """
    dim, in_dim, *patch = shape_of(state, "patch_embedding.weight", source)
    out_dim = shape_of(state, "head.head.weight", source)[0] // math.prod(patch)
    if dim % HEAD_DIM:
        raise ValueError(
            f"{source}: a {dim}-wide transformer is no Wan release (their heads are {HEAD_DIM} wide), so its head "
            f"count is not in its shapes: give the file a '{METADATA_KEY}' metadata entry 'transformer' "
            "(python -m comfyui.write_single_files writes one)"
        )
    image = "img_emb.proj.0.weight" in state
    model_type = "i2v" if image else "ti2v" if out_dim == 48 else "i2v" if in_dim != out_dim else "t2v"
    return {
        "model_type": model_type,
        "patch_size": list(patch),
        "text_len": 512,
        "in_dim": in_dim,
        "dim": dim,
        "ffn_dim": shape_of(state, "blocks.0.ffn.0.weight", source)[0],
        "freq_dim": shape_of(state, "time_embedding.0.weight", source)[1],
        "text_dim": shape_of(state, "text_embedding.0.weight", source)[1],
        "out_dim": out_dim,
        "num_heads": dim // HEAD_DIM,
        "num_layers": count_blocks(state, "blocks."),
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in state,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
        "eps": 1e-6,
        "image_dim": state["img_emb.proj.0.weight"].shape[0] if image else None,
    }


def transformer_config(state: Mapping[str, torch.Tensor], given: Mapping[str, Any] | None, source: Path) -> dict:
    """The config of a transformer file: its metadata's (original or diffusers fields), else read off its shapes;
    plus the Fun extras its names show (reference conv, camera adapter), as a folder's loading adds them."""
    from videox_fun.models.wan.transformer import infer_fun_extras

    if given is not None:
        config = diffusers_config_to_original(given) if is_diffusers_config(given) else public_config(given)
    else:
        config = config_from_shapes(state, source)
    return {**config, **infer_fun_extras(dict(state), config)}


def check_transformer(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Build the model on the meta device (no memory) and check every name and shape of the file against it,
    fp8 linears included, so a wrong config or a foreign file fails at the loader, naming the keys."""
    from videox_fun.models.wan.transformer import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(dict(config))
        checked = prepare_for_fp8_state(model, dict(state))
    check_state_dict(model, checked, str(source))


def release_key(config: Mapping[str, Any]) -> tuple:
    """What tells released transformers apart by their shapes."""
    clip = has_clip_branch(config.get("model_type", "t2v"), config.get("image_dim", CLIP_DIM))
    sizes = tuple(config[k] for k in ("in_dim", "out_dim", "dim", "ffn_dim", "num_layers"))
    return (*sizes, bool(config.get("add_ref_conv")), bool(config.get("add_control_adapter")), clip)


def matching_releases(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The released models whose transformer has these shapes (several share one: I2V-14B and Fun-14B-InP)."""
    key = release_key(config)
    return tuple(name for name, preset in PRESETS.items() if release_key(preset) == key)


@dataclass(frozen=True)
class TransformerFile:
    """A Wan transformer file as its header describes it: what the LoadWanTransformerModel node outputs."""

    path: Path
    config: dict[str, Any]
    fp8: bool
    releases: tuple[str, ...]
    precision: str  # the library's dtype name

    @property
    def variant(self) -> WanVariant:
        """The conditioning layout (T2V, InP, Control, Control-Camera, TI2V...) of the config."""
        return variant_of(self.config)

    @property
    def label(self) -> str:
        """The file, its variant and the releases of its shapes (the node's model_name output)."""
        sizes = " / ".join(self.releases) or f"dim {self.config['dim']}, {self.config['num_layers']} layers"
        return f"{self.path.stem} [{self.variant.name}{', fp8' if self.fp8 else ''}: {sizes}]"


def read_transformer(path: Path, precision: str) -> TransformerFile:
    """Recognise a Wan transformer single file from its header: config, variant, releases, fp8 or not."""
    header = read_header(path)
    state = transformer_names(header.tensors)
    config = transformer_config(state, header.config_entry("transformer"), path)
    check_transformer(config, state, path)
    found = TransformerFile(path, config, is_fp8(state), matching_releases(config), precision)
    logger.info("videox_fun: %s", found.label)
    return found


# ------------------------------------------------------------------------------------------
# The VAE, the text encoder and the CLIP vision tower: headers
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEFile:
    """A Wan VAE file (original Wan names, as ComfyUI's ``wan_2.1_vae.safetensors``, or diffusers')."""

    path: Path
    config: dict[str, Any] | None  # the metadata's; None: the release's by structure (Wan2.1, or Wan2.2's)
    z_dim: int
    precision: str


def read_vae(path: Path, precision: str) -> VAEFile:
    """Recognise a Wan VAE file: its latent channels (16 Wan2.1, 48 Wan2.2) from ``conv2`` / ``post_quant_conv``."""
    header = read_header(path)
    config = header.config_entry("vae")
    outer = [t for k, t in header.tensors.items() if k.split(".")[-2:] in (["conv2", "weight"], ["post_quant_conv",
             "weight"]) and "coder." not in k]  # fmt: skip
    if config is None and not outer:
        raise CheckpointMismatchError(f"{path}: no conv2 / post_quant_conv weight: not a Wan VAE")
    z_dim = int(config["z_dim"]) if config is not None and "z_dim" in config else outer[0].shape[0]
    return VAEFile(path, config, z_dim, precision)


@dataclass(frozen=True)
class TextEncoderFile:
    """A umT5 encoder file: the original Wan names or transformers' (ComfyUI's ``umt5_xxl_*``), fp8 or not."""

    path: Path
    config: dict[str, Any]  # UMT5Config fields, read off the shapes
    fp8: bool
    precision: str

    @property
    def dim(self) -> int:
        """The width of the text context it gives (4096 for umt5-xxl)."""
        return int(self.config["d_model"])


def umt5_state(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """A umT5 file's weights under ``UMT5EncoderModel`` names: its tokenizer tensor out (logged), fp8 widened by
    its scales, original Wan names converted (transformers' pass as they are)."""
    from videox_fun.models.wan.text_encoder import convert_umt5_original_to_hf

    state = dict(state)
    drop_prefixed(state, (TOKENIZER_KEY,), "the sentencepiece tokenizer; tokenizer.json is read instead", str(source))
    return convert_umt5_original_to_hf(dequantize_fp8_state(state) if is_fp8(state) else state)


def umt5_config(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, Any]:
    """UMT5Config fields from the shapes (all of them are there: the position table is (buckets, heads))."""
    table = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if "shared.weight" not in state or table not in state:
        raise CheckpointMismatchError(f"{source}: not a umT5 encoder (no shared.weight / {table})")
    buckets, heads = state[table].shape
    vocab, width = state["shared.weight"].shape
    inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    return {
        **UMT5_XXL_CONFIG,
        "vocab_size": vocab,
        "d_model": width,
        "num_heads": heads,
        "d_kv": inner // heads,
        "d_ff": state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        "num_layers": count_blocks(state, "encoder.block."),
        "relative_attention_num_buckets": buckets,
    }


def read_text_encoder(path: Path, precision: str) -> TextEncoderFile:
    """Recognise a umT5 encoder file and read its architecture off its shapes."""
    header = read_header(path)
    state = umt5_state(header.tensors, path)
    return TextEncoderFile(path, umt5_config(state, path), is_fp8(header.tensors), precision)


def find_tokenizer(text_encoder: Path) -> Path:
    """The folder with the umT5 ``tokenizer.json`` for a text encoder file.

    Looked for beside the file (and in ``google/umt5-xxl/`` there, the Wan release layout), then where
    VideoX-Fun's chunked loader reads it: ``google/umt5-xxl/`` in the model folders (``models/Fun_Models/``...),
    or in a release folder there. ComfyUI's own files carry a sentencepiece model instead, which the library's
    fast tokenizer does not read.
    """
    candidates = [text_encoder.parent, text_encoder.parent / ORIGINAL_TOKENIZER_DIR]
    for root in host.model_search_folders():
        candidates += [root / ORIGINAL_TOKENIZER_DIR, *sorted(root.glob(f"*/{ORIGINAL_TOKENIZER_DIR}"))]
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            return folder
    places = ", ".join(str(folder) for folder in candidates[:4])
    raise FileNotFoundError(
        f"no umT5 tokenizer (tokenizer.json) for {text_encoder.name}: put google/umt5-xxl (from a Wan release) in "
        f"models/Fun_Models/, or tokenizer.json beside the file; looked in {places}, ..."
    )


@dataclass(frozen=True)
class ImageEncoderFile:
    """A CLIP vision tower file: ComfyUI's ``clip_vision_h.safetensors`` (transformers' names) or Wan's original
    ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``."""

    path: Path
    config: dict[str, Any]  # CLIPVisionConfig fields
    precision: str

    @property
    def dim(self) -> int:
        """The width of its image tokens (1280 for ViT-H/14)."""
        return int(self.config["hidden_size"])


def vision_state(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """A CLIP file's vision tower under ``CLIPVisionModel`` core names (what Wan never runs dropped, logged)."""
    from videox_fun.models.wan.image_encoder import HF_UNUSED, convert_clip_original_to_hf

    state = dict(state)
    if not any(key.startswith((HF_VISION_PREFIX, "encoder.layers.")) for key in state):
        return convert_clip_original_to_hf(state, str(source))
    drop_prefixed(state, HF_UNUSED, "text tower / projections, unused by Wan", str(source), logger)
    for key in (f"{HF_VISION_PREFIX}embeddings.position_ids", "embeddings.position_ids"):
        state.pop(key, None)  # a buffer some versions saved
    return strip_prefix(state, [HF_VISION_PREFIX])


def vision_config(state: Mapping[str, torch.Tensor], given: Mapping[str, Any] | None, source: Path) -> dict:
    """CLIPVisionConfig fields: the metadata's, else the shapes with ViT-H/14's head width (80) and constants."""
    from videox_fun.models.wan.image_encoder import VIT_H_14_CONFIG

    if given is not None:
        return {**VIT_H_14_CONFIG, **given}
    width, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
    if width % CLIP_HEAD_DIM:
        raise ValueError(f"{source}: a {width}-wide vision tower is not ViT-H/14; give it '{METADATA_KEY}' metadata")
    positions = state["embeddings.position_embedding.weight"].shape[0]
    return {
        **VIT_H_14_CONFIG,
        "hidden_size": width,
        "intermediate_size": state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": count_blocks(state, "encoder.layers."),
        "num_attention_heads": width // CLIP_HEAD_DIM,
        "patch_size": patch,
        "image_size": patch * math.isqrt(positions - 1),
    }


def read_image_encoder(path: Path, precision: str) -> ImageEncoderFile:
    """Recognise a CLIP vision file and its architecture."""
    header = read_header(path)
    state = vision_state(header.tensors, path)
    if "embeddings.patch_embedding.weight" not in state:
        raise CheckpointMismatchError(f"{path}: not a CLIP vision tower (no patch embedding among {sorted(state)[:5]})")
    return ImageEncoderFile(path, vision_config(state, header.config_entry("image_encoder"), path), precision)


# ------------------------------------------------------------------------------------------
# Loading the weights (when a sampler first needs the pipeline)
# ------------------------------------------------------------------------------------------


def cast_keeping_fp8(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast floating tensors to ``dtype``, except float8 weights and their scales (kept as stored)."""
    keep = {k for k, t in state.items() if t.dtype == FP8 or k.endswith(".scale_weight")}
    cast = cast_floating({k: t for k, t in state.items() if k not in keep}, dtype)
    return {**cast, **{k: state[k] for k in keep}}


def load_transformer(file: TransformerFile, dtype: torch.dtype) -> WanTransformer3DModel:
    """The transformer of a file, strictly; an fp8 file keeps its float8 linears (and their scales), as
    ``--transformer-path`` loads it, the rest in ``dtype``."""
    from videox_fun.models.loading import assert_materialised, load_into
    from videox_fun.models.wan.transformer import WanTransformer3DModel, read_transformer_weights

    state = cast_keeping_fp8(read_transformer_weights(file.path), dtype)
    with torch.device("meta"):  # no random init: the file's tensors are taken as they are
        model = WanTransformer3DModel.from_config(dict(file.config))
        # What load_state_with_fp8 does, with the float8 linears built on meta as well.
        state = prepare_for_fp8_state(model, state)
    load_into(model, state, source=str(file.path))
    assert_materialised(model, str(file.path))
    return model.eval()


def load_vae(file: VAEFile) -> WanVAE:
    """The VAE of a file: its metadata's config, else the library's (a config.json beside it, or the release's)."""
    from videox_fun.models.wan.vae import WanVAE, _build_checked

    dtype = torch_dtype(file.precision)
    if file.config is None:
        return WanVAE.from_pretrained(file.path, dtype=dtype)
    # The library's one strict build of a VAE from a config and a state (either key layout).
    return WanVAE(_build_checked(file.config, read_state_dict(file.path), str(file.path), dtype)).eval()


def load_text_encoder(file: TextEncoderFile, tokenizer: Path) -> WanTextEncoder:
    """The umT5 encoder of a file with the tokenizer of ``tokenizer``."""
    from transformers import UMT5Config

    from videox_fun.models.wan.text_encoder import WanTextEncoder, _build_and_load, load_tokenizer, umt5_key_to_original

    state = cast_floating(umt5_state(read_state_dict(file.path), file.path), torch_dtype(file.precision))
    # The library's one strict build of the encoder (private to its module: the pack reuses it, not a copy).
    model = _build_and_load(UMT5Config(**file.config), state, str(file.path), umt5_key_to_original)
    return WanTextEncoder(model, load_tokenizer(tokenizer)).eval()


def load_image_encoder(file: ImageEncoderFile) -> WanImageEncoder:
    """The CLIP vision tower of a file."""
    from transformers import CLIPVisionConfig

    from videox_fun.models.wan.image_encoder import WanImageEncoder, _build_and_load

    state = cast_floating(vision_state(read_state_dict(file.path), file.path), torch_dtype(file.precision))
    return WanImageEncoder(_build_and_load(CLIPVisionConfig(**file.config), state, str(file.path), None)).eval()


# ------------------------------------------------------------------------------------------
# A pipeline from the files: the family layer's view of them
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanParts:
    """The files CombineWanPipeline joins, and the name it gives the model."""

    transformer: TransformerFile
    vae: VAEFile
    text_encoder: TextEncoderFile
    tokenizer: Path
    image_encoder: ImageEncoderFile | None = None
    name: str = ""

    def check(self) -> None:
        """The components fit together: latent channels, text width, CLIP width."""
        config, name = self.transformer.config, self.transformer.path.name
        text, image = self.text_encoder, self.image_encoder
        if self.vae.z_dim != config["out_dim"]:
            kind = "Wan2.2 (48 channels)" if config["out_dim"] == 48 else "Wan2.1 (16 channels)"
            raise ValueError(f"{name} needs a {kind} VAE; {self.vae.path.name} has {self.vae.z_dim} latent channels")
        if text.dim != config["text_dim"]:
            raise ValueError(f"{name} reads {config['text_dim']}-wide text; {text.path.name} gives {text.dim}")
        image_dim = config.get("image_dim")
        if image is not None and image_dim is not None and image.dim != image_dim:
            raise ValueError(f"{name} reads {image_dim}-wide CLIP tokens; {image.path.name} gives {image.dim}")


class SingleFileWanFamily(WanFamily):
    """The Wan family for a pipeline joined from single files: Wan's modes, samplers and checks, and a loader
    that reads the chosen files instead of a folder. Never registered: it recognises no folder."""

    def __init__(self, parts: WanParts) -> None:
        self.parts = parts

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """No folder is of this layout (the files were chosen one by one)."""
        return None

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> WanPipeline:
        """Every component from its file; the transformer in ``dtype``, the others in their nodes' precisions."""
        from videox_fun.pipelines.wan import WanPipeline

        parts = self.parts
        transformer = load_transformer(parts.transformer, dtype)
        image_encoder = None
        if parts.image_encoder is not None and transformer.uses_clip:
            image_encoder = load_image_encoder(parts.image_encoder)
        pipe = WanPipeline(
            transformer,
            load_vae(parts.vae),
            load_text_encoder(parts.text_encoder, parts.tokenizer),
            image_encoder,
            model_name=parts.name,
            masked_fill=recognised.config.masked_fill,
            device=device,
            dtype=dtype,
        )
        pipe.config = recognised.config
        return pipe.to(device)

    def __repr__(self) -> str:  # the pack's key for the pipeline it holds: every file and precision
        return f"<family wan from single files {self.parts!r}>"


def masked_fill_for(file: TransformerFile) -> float:
    """Unknown pixels' fill for the InP channels: -1 as the Fun InP releases trained, 0 for a Wan-AI I2V file.

    The two share their shapes; only the name tells them apart (``wan2.1_i2v_480p_14B_fp16`` from ComfyUI),
    as VideoX-Fun's loader tells them. Files of neither name take the library's default, -1.
    """
    name = file.path.name.lower()
    return 0.0 if "i2v" in name and "fun" not in name else ModelConfig().masked_fill


def recognise_parts(parts: WanParts) -> Recognised:
    """What the library's Wan family would say of a folder holding these files: variant, modes, sizes."""
    parts.check()
    config = parts.transformer.config
    variant = parts.transformer.variant
    if parts.image_encoder is None and has_clip_branch(config["model_type"], config.get("image_dim")):
        logger.warning(
            "videox_fun: %s attends to CLIP image tokens and no clip_encoder is connected: text to video runs, an "
            "input image needs LoadWanClipEncoderModel",
            parts.transformer.path.name,
        )
    spatial = 16 if config["out_dim"] == 48 else 8  # the Wan2.2 VAE (48 channels) compresses 16x
    model_config = ModelConfig(masked_fill=masked_fill_for(parts.transformer), image_encoder_subpath=None)
    return Recognised(
        family=SingleFileWanFamily(parts),
        folder=parts.transformer.path.parent,  # where a cache_calibration.json for it would be
        config=model_config,
        variant=variant.name,
        modes=tuple(mode for mode in WAN_MODES if mode in variant.modes),
        defaults=GenerationDefaults(),
        sizes=SizeRules(multiple=spatial * config["patch_size"][1], frame_factor=4),
    )


# ------------------------------------------------------------------------------------------
# Writing single files from a model folder (the example workflows' files, tests)
# ------------------------------------------------------------------------------------------


@dataclass
class Exported:
    """The files :func:`export_single_files` wrote, by ComfyUI folder."""

    diffusion_models: list[Path] = field(default_factory=list)
    vae: list[Path] = field(default_factory=list)
    text_encoders: list[Path] = field(default_factory=list)
    clip_vision: list[Path] = field(default_factory=list)


def config_metadata(component: str, config: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata that tells a loader what the shapes cannot."""
    return {METADATA_KEY: json.dumps({component: public_config(dict(config))})}


def fp8_scaled_state(transformer: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """A transformer's state as ComfyUI's ``*_fp8_scaled`` files store it: block linears in float8 with a
    per-tensor ``scale_weight``, the ``scaled_fp8`` marker, every key under ``model.diffusion_model.``."""
    from videox_fun.runtime.fp8 import quantize_to_fp8

    quantised = quantize_to_fp8(copy.deepcopy(transformer), scaled=True)
    state = {f"model.diffusion_model.{k}": v for k, v in quantised.state_dict().items()}
    return {**state, "scaled_fp8": torch.empty(0, dtype=FP8)}


def export_single_files(model: str | Path, models_dir: Path, name: str, fp8: bool = False) -> Exported:
    """Write a model folder's components as single files in a ComfyUI ``models/`` tree, as ComfyUI keeps them:
    the transformer (original names; with ``fp8`` also ``<name>_fp8_scaled``) in ``diffusion_models/``, the VAE
    (original names) in ``vae/``, umT5 (transformers' names) with its tokenizer in ``text_encoders/<name>/``,
    the CLIP tower (transformers' names) in ``clip_vision/``; each with its config in the metadata."""
    from videox_fun.io.files import save_safetensors
    from videox_fun.models.wan.image_encoder import vision_core
    from videox_fun.models.wan.text_encoder import HF_TIED_EMBEDDING
    from videox_fun.models.wan.vae import wan_vae_to_original
    from videox_fun.pipelines.wan import WanPipeline

    pipe = WanPipeline.from_pretrained(model)
    out = Exported()
    folders = {kind: models_dir / kind for kind in ("diffusion_models", "vae", "text_encoders")}
    if pipe.image_encoder is not None:
        folders["clip_vision"] = models_dir / "clip_vision"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    transformer_meta = config_metadata("transformer", pipe.transformer.config)
    path = folders["diffusion_models"] / f"{name}.safetensors"
    out.diffusion_models.append(save_safetensors(pipe.transformer.state_dict(), path, transformer_meta))
    if fp8:
        path = folders["diffusion_models"] / f"{name}_fp8_scaled.safetensors"
        out.diffusion_models.append(save_safetensors(fp8_scaled_state(pipe.transformer), path, transformer_meta))
    vae_state = wan_vae_to_original(pipe.vae.model.state_dict(), pipe.vae.config)
    path = folders["vae"] / f"{name}_vae.safetensors"
    out.vae.append(save_safetensors(vae_state, path, config_metadata("vae", pipe.vae.config)))
    text_folder = folders["text_encoders"] / name
    text_folder.mkdir(exist_ok=True)
    text_state = {k: v for k, v in pipe.text_encoder.model.state_dict().items() if k != HF_TIED_EMBEDDING}
    out.text_encoders.append(save_safetensors(text_state, text_folder / "umt5.safetensors"))
    pipe.text_encoder.tokenizer.save_pretrained(str(text_folder))
    if pipe.image_encoder is not None:
        core = vision_core(pipe.image_encoder.model).state_dict()
        clip_state = {f"{HF_VISION_PREFIX}{k}": v for k, v in core.items() if not k.endswith("position_ids")}
        meta = config_metadata("image_encoder", pipe.image_encoder.model.config.to_dict())
        out.clip_vision.append(save_safetensors(clip_state, folders["clip_vision"] / f"{name}_clip.safetensors", meta))
    return out
