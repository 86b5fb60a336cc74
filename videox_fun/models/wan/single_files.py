"""Wan models from single files, one per component: read from their headers, then loaded with the library's classes.

People keep each component of a Wan model as one file: the transformer (the original release's names, ComfyUI's
``model.diffusion_model.`` ones, diffusers'; ComfyUI's ``*_fp8_scaled`` files too), the VAE (``Wan2.1_VAE.pth``,
``wan_2.1_vae.safetensors``), umT5 (Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` or transformers' names as in
ComfyUI's ``umt5_xxl_*``), the CLIP vision tower (Wan's ``.pth`` or transformers' ``clip_vision_h``). This module
reads such files from their headers only (names, shapes, dtypes, metadata: milliseconds for any size), tells the
Wan variant from the transformer's tensor names and shapes, checks each file on the meta device, and loads the
chosen files with the library's own component classes, key converters and fp8 layers; and it writes a loaded
model as such files (:func:`write_single_files`).

What shapes cannot say (the head count of a transformer whose heads are not 128 wide as in every release, a VAE's
latent statistics, a vision tower's heads) is read from the file's safetensors metadata: a ``config`` JSON with one
entry per component (``transformer``, ``vae``, ``image_encoder``; see
:func:`videox_fun.models.loading.config_metadata`).

A pipeline joined from such files is recognised and loaded by
:class:`videox_fun.families.wan.SingleFileWanFamily` (:func:`videox_fun.families.wan.recognise_single_files`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...config import ModelConfig
from ...runtime.fp8 import FP8, dequantize_fp8_state, is_fp8, prepare_for_fp8_state
from ..loading import (
    CONFIG_METADATA_KEY,
    CheckpointMismatchError,
    assert_materialised,
    cast_floating,
    check_state_dict,
    config_metadata,
    count_blocks,
    drop_prefixed,
    load_into,
    read_header,
    read_state_dict,
    torch_dtype,
)
from .keys import CLIP_DIM, has_clip_branch
from .text_encoder import ORIGINAL_TOKENIZER_DIR, UMT5_XXL_CONFIG
from .variants import PRESETS, WanVariant, variant_of

if TYPE_CHECKING:
    from ...pipelines.wan import WanPipeline
    from .image_encoder import WanImageEncoder
    from .text_encoder import WanTextEncoder
    from .transformer import WanTransformer3DModel
    from .vae import WanVAE

logger = logging.getLogger(__name__)

HEAD_DIM = 128  # every Wan release's attention head width (ComfyUI reads num_heads = dim // 128 too)
CLIP_HEAD_DIM = 80  # ViT-H/14's (1280 wide, 16 heads), the vision tower of every Wan2.1 i2v / Fun release
TOKENIZER_KEY = "spiece_model"  # ComfyUI's umT5 files carry their sentencepiece model as a uint8 tensor


def cast_keeping_fp8(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast floating tensors to ``dtype``, except float8 weights and their scales (kept as stored)."""
    keep = {k for k, t in state.items() if t.dtype == FP8 or k.endswith(".scale_weight")}
    cast = cast_floating({k: t for k, t in state.items() if k not in keep}, dtype)
    return {**cast, **{k: state[k] for k in keep}}


# ------------------------------------------------------------------------------------------
# The transformer: its config and variant from its shapes
# ------------------------------------------------------------------------------------------


def shape_of(state: Mapping[str, torch.Tensor], key: str, source: Path) -> tuple[int, ...]:
    """A tensor's shape, or an error saying the file is not a Wan transformer."""
    if key not in state:
        raise CheckpointMismatchError(f"{source} has no {key}: not a Wan transformer (keys: {sorted(state)[:5]})")
    return tuple(state[key].shape)


def config_from_shapes(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, Any]:
    """A Wan transformer config (the released config.json's fields) read off a state's names and shapes.

    ``state`` is in the original names (:func:`~videox_fun.models.wan.transformer.transformer_state_to_original`).
    Widths, depth, patch and channel layout are in the shapes; the head count is not (the q / k norms span the
    whole width), so it is ``dim / 128`` as in every release; ``text_len`` is the releases' 512. ``model_type``:
    ``i2v`` with a CLIP branch (``img_emb``) or extra input channels, ``ti2v`` for the Wan2.2 VAE's 48 latent
    channels, ``vace`` with a VACE stream, else ``t2v``; Animate's face modules set theirs (with the Fun extras).
    """
    dim, in_dim, *patch = shape_of(state, "patch_embedding.weight", source)
    out_dim = shape_of(state, "head.head.weight", source)[0] // math.prod(patch)
    if dim % HEAD_DIM:
        raise ValueError(
            f"{source}: a {dim}-wide transformer is no Wan release (their heads are {HEAD_DIM} wide), so its head "
            f"count is not in its shapes: give the file a '{CONFIG_METADATA_KEY}' metadata entry 'transformer' "
            "(python -m comfyui.write_single_files writes one)"
        )
    image = "img_emb.proj.0.weight" in state
    model_type = "i2v" if image else "ti2v" if out_dim == 48 else "i2v" if in_dim != out_dim else "t2v"
    if "vace_patch_embedding.weight" in state:  # Wan2.1-VACE's config name (its layers come with the Fun extras)
        model_type = "vace"
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
    """The config of a transformer file: ``given`` (its metadata's, original or diffusers fields), else read off
    its shapes; plus the Fun extras its names show (reference conv, camera adapter), as a folder's loading adds
    them. ``state`` is in the original names."""
    from .transformer import config_to_original, infer_fun_extras

    config = config_to_original(given) if given is not None else config_from_shapes(state, source)
    return {**config, **infer_fun_extras(dict(state), config)}


def build_on_meta(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[WanTransformer3DModel, dict[str, torch.Tensor]]:
    """A transformer of ``config`` built on the meta device (no memory, no random init), its linears that ``state``
    stores in float8 made :class:`~videox_fun.runtime.fp8.Float8Linear`; and the state to load into it (format
    markers out)."""
    from .transformer import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.class_for_config(config).from_config(dict(config))
        return model, prepare_for_fp8_state(model, dict(state))


def check_transformer(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Check every name and shape of a file against the model of ``config`` built on the meta device, fp8 linears
    included, so a wrong config or a foreign file fails when it is read, naming the keys."""
    model, checked = build_on_meta(config, state)
    check_state_dict(model, checked, str(source))


def release_key(config: Mapping[str, Any]) -> tuple:
    """What tells released transformers apart by their shapes (a VACE stream or Animate's face modules too)."""
    from .transformer import WanTransformer3DModel

    clip = has_clip_branch(config.get("model_type", "t2v"), config.get("image_dim", CLIP_DIM))
    sizes = tuple(config[k] for k in ("in_dim", "out_dim", "dim", "ffn_dim", "num_layers"))
    stream = WanTransformer3DModel.class_for_config(config).__name__  # the plain DiT, VACE or Animate
    return (*sizes, bool(config.get("add_ref_conv")), bool(config.get("add_control_adapter")), clip, stream)


def matching_releases(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The released models whose transformer has these shapes (several share one: I2V-14B and Fun-14B-InP)."""
    key = release_key(config)
    return tuple(name for name, preset in PRESETS.items() if release_key(preset) == key)


@dataclass(frozen=True)
class TransformerFile:
    """A Wan transformer file as its header describes it."""

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
        """The file, its variant and the releases of its shapes."""
        sizes = " / ".join(self.releases) or f"dim {self.config['dim']}, {self.config['num_layers']} layers"
        return f"{self.path.stem} [{self.variant.name}{', fp8' if self.fp8 else ''}: {sizes}]"


def read_transformer_file(path: Path, precision: str) -> TransformerFile:
    """Recognise a Wan transformer single file from its header: config, variant, releases, fp8 or not; every
    name and shape checked. ``precision`` (a dtype name) is the one it will load in."""
    from .transformer import transformer_state_to_original

    header = read_header(path)
    state = transformer_state_to_original(header.tensors)
    config = transformer_config(state, header.config_entry("transformer"), path)
    check_transformer(config, state, path)
    found = TransformerFile(path, config, is_fp8(state), matching_releases(config), precision)
    logger.info("%s", found.label)
    return found


def fp8_scaled_state(transformer: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """A transformer's state as ComfyUI's ``*_fp8_scaled`` files store it (what :func:`read_transformer_file` and
    :func:`load_transformer` read): block linears in float8 with a per-tensor ``scale_weight``, the ``scaled_fp8``
    marker, every key under ``model.diffusion_model.``."""
    from ...runtime.fp8 import quantize_to_fp8

    quantised = quantize_to_fp8(copy.deepcopy(transformer), scaled=True)
    state = {f"model.diffusion_model.{k}": v for k, v in quantised.state_dict().items()}
    return {**state, "scaled_fp8": torch.empty(0, dtype=FP8)}


# ------------------------------------------------------------------------------------------
# The VAE, the text encoder and the CLIP vision tower: from their headers
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEFile:
    """A Wan VAE file (original Wan names, as ComfyUI's ``wan_2.1_vae.safetensors``, or diffusers')."""

    path: Path
    config: dict[str, Any] | None  # the metadata's; None: the release's by structure (Wan2.1, or Wan2.2's)
    z_dim: int
    precision: str


def read_vae_file(path: Path, precision: str) -> VAEFile:
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
    from .text_encoder import convert_umt5_original_to_hf

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


def read_text_encoder_file(path: Path, precision: str) -> TextEncoderFile:
    """Recognise a umT5 encoder file and read its architecture off its shapes."""
    header = read_header(path)
    state = umt5_state(header.tensors, path)
    return TextEncoderFile(path, umt5_config(state, path), is_fp8(header.tensors), precision)


def tokenizer_candidates(text_encoder: Path, model_folders: Iterable[Path] = ()) -> list[Path]:
    """Where the umT5 tokenizer of a text encoder file may be, in order: beside it (and ``google/umt5-xxl/``
    there, the Wan release layout), then ``google/umt5-xxl/`` in each of ``model_folders`` and in a release
    folder inside one."""
    candidates = [text_encoder.parent, text_encoder.parent / ORIGINAL_TOKENIZER_DIR]
    for root in model_folders:
        candidates += [root / ORIGINAL_TOKENIZER_DIR, *sorted(root.glob(f"*/{ORIGINAL_TOKENIZER_DIR}"))]
    return candidates


def find_tokenizer(text_encoder: Path, model_folders: Iterable[Path] = ()) -> Path:
    """The first folder of :func:`tokenizer_candidates` with a ``tokenizer.json``.

    ComfyUI's own umT5 files carry a sentencepiece model instead, which the library's fast tokenizer does not
    read: the tokenizer comes from a Wan release (``google/umt5-xxl``).
    """
    candidates = tokenizer_candidates(text_encoder, model_folders)
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            return folder
    places = ", ".join(str(folder) for folder in candidates[:4])
    raise FileNotFoundError(
        f"no umT5 tokenizer (tokenizer.json) for {text_encoder.name}: put google/umt5-xxl (from a Wan release) in "
        f"a model folder, or tokenizer.json beside the file; looked in {places}, ..."
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
    """A CLIP file's vision tower under ``CLIPVisionModel`` core names, from transformers' names or Wan's."""
    from .image_encoder import HF_VISION_PREFIX, convert_clip_original_to_hf, hf_vision_state

    if any(key.startswith((HF_VISION_PREFIX, "encoder.layers.")) for key in state):
        return hf_vision_state(state, str(source))
    return convert_clip_original_to_hf(dict(state), str(source))


def vision_config(state: Mapping[str, torch.Tensor], given: Mapping[str, Any] | None, source: Path) -> dict:
    """CLIPVisionConfig fields: ``given`` (the metadata's), else the shapes with ViT-H/14's head width (80) and
    constants."""
    from .image_encoder import VIT_H_14_CONFIG

    if given is not None:
        return {**VIT_H_14_CONFIG, **given}
    width, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
    if width % CLIP_HEAD_DIM:
        raise ValueError(
            f"{source}: a {width}-wide vision tower is not ViT-H/14; give it '{CONFIG_METADATA_KEY}' metadata"
        )
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


def read_image_encoder_file(path: Path, precision: str) -> ImageEncoderFile:
    """Recognise a CLIP vision file and its architecture."""
    header = read_header(path)
    state = vision_state(header.tensors, path)
    if "embeddings.patch_embedding.weight" not in state:
        raise CheckpointMismatchError(f"{path}: not a CLIP vision tower (no patch embedding among {sorted(state)[:5]})")
    return ImageEncoderFile(path, vision_config(state, header.config_entry("image_encoder"), path), precision)


# ------------------------------------------------------------------------------------------
# Loading the weights
# ------------------------------------------------------------------------------------------


def load_transformer(file: TransformerFile, dtype: torch.dtype) -> WanTransformer3DModel:
    """The transformer of a file, strictly; an fp8 file keeps its float8 linears (and their scales), as
    ``--transformer-path`` loads it, the rest in ``dtype``."""
    from .transformer import read_transformer_weights

    model, state = build_on_meta(file.config, cast_keeping_fp8(read_transformer_weights(file.path), dtype))
    load_into(model, state, source=str(file.path))
    assert_materialised(model, str(file.path))
    return model.eval()


def load_vae(file: VAEFile) -> WanVAE:
    """The VAE of a file: its metadata's config, else the library's (a config.json beside it, or the release's)."""
    from .vae import WanVAE, build_checked

    dtype = torch_dtype(file.precision)
    if file.config is None:
        return WanVAE.from_pretrained(file.path, dtype=dtype)
    return WanVAE(build_checked(file.config, read_state_dict(file.path), str(file.path), dtype)).eval()


def load_text_encoder(file: TextEncoderFile, tokenizer: Path) -> WanTextEncoder:
    """The umT5 encoder of a file with the tokenizer of the folder ``tokenizer``."""
    from transformers import UMT5Config

    from .text_encoder import WanTextEncoder, build_and_load, load_tokenizer, umt5_key_to_original

    state = cast_floating(umt5_state(read_state_dict(file.path), file.path), torch_dtype(file.precision))
    model = build_and_load(UMT5Config(**file.config), state, str(file.path), umt5_key_to_original)
    return WanTextEncoder(model, load_tokenizer(tokenizer)).eval()


def load_image_encoder(file: ImageEncoderFile) -> WanImageEncoder:
    """The CLIP vision tower of a file."""
    from transformers import CLIPVisionConfig

    from .image_encoder import WanImageEncoder, build_and_load

    state = cast_floating(vision_state(read_state_dict(file.path), file.path), torch_dtype(file.precision))
    return WanImageEncoder(build_and_load(CLIPVisionConfig(**file.config), state, str(file.path), None)).eval()


# ------------------------------------------------------------------------------------------
# The files of one model
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanParts:
    """The single files that make one Wan model, and the name it goes by."""

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

    @property
    def lacks_image_encoder(self) -> bool:
        """Whether the transformer attends to CLIP image tokens and no vision tower file was given (text to
        video still runs; an input image cannot)."""
        config = self.transformer.config
        return self.image_encoder is None and has_clip_branch(config["model_type"], config.get("image_dim"))


def masked_fill_for(transformer: Path) -> float:
    """Unknown pixels' fill for the InP channels of a transformer file: -1 as the Fun InP releases trained, 0 for a
    Wan-AI I2V file.

    The two share their shapes, so only the file name tells them apart (``wan2.1_i2v_480p_14B_fp16`` from
    ComfyUI), as VideoX-Fun's chunked loader tells them: a name with ``i2v`` and without ``fun`` gets 0; any
    other the library's default, -1 (a folder says it in its config instead).
    """
    name = transformer.name.lower()
    return 0.0 if "i2v" in name and "fun" not in name else ModelConfig().masked_fill


# ------------------------------------------------------------------------------------------
# Writing a model as single files (the layout ComfyUI keeps; example workflows, tests)
# ------------------------------------------------------------------------------------------


@dataclass
class Exported:
    """The files :func:`write_single_files` wrote, by the folder of their kind."""

    diffusion_models: list[Path] = field(default_factory=list)
    vae: list[Path] = field(default_factory=list)
    text_encoders: list[Path] = field(default_factory=list)
    clip_vision: list[Path] = field(default_factory=list)


def write_single_files(pipe: WanPipeline, models_dir: Path, name: str, fp8: bool = False) -> Exported:
    """Write a loaded pipeline's components as single files in a ``models/`` tree, as ComfyUI keeps them: the
    transformer (original names; with ``fp8`` also ``<name>_fp8_scaled``) in ``diffusion_models/``, the VAE
    (original names) in ``vae/``, umT5 (transformers' names) with its tokenizer in ``text_encoders/<name>/``,
    the CLIP tower (transformers' names) in ``clip_vision/``; each with its config in the metadata."""
    out = Exported()
    folders = {kind: models_dir / kind for kind in ("diffusion_models", "vae", "text_encoders")}
    if pipe.image_encoder is not None:
        folders["clip_vision"] = models_dir / "clip_vision"
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    out.diffusion_models = write_transformer_files(pipe.transformer, folders["diffusion_models"], name, fp8)
    out.vae.append(write_vae_file(pipe.vae, folders["vae"] / f"{name}_vae.safetensors"))
    out.text_encoders.append(write_text_encoder_file(pipe.text_encoder, folders["text_encoders"] / name))
    if pipe.image_encoder is not None:
        path = folders["clip_vision"] / f"{name}_clip.safetensors"
        out.clip_vision.append(write_image_encoder_file(pipe.image_encoder, path))
    return out


def write_transformer_files(transformer: WanTransformer3DModel, folder: Path, name: str, fp8: bool) -> list[Path]:
    """``<name>.safetensors`` in the original names (and ``<name>_fp8_scaled.safetensors``), config in metadata."""
    from ...io.files import save_safetensors

    metadata = config_metadata("transformer", transformer.config)
    paths = [save_safetensors(transformer.state_dict(), folder / f"{name}.safetensors", metadata)]
    if fp8:
        paths.append(
            save_safetensors(fp8_scaled_state(transformer), folder / f"{name}_fp8_scaled.safetensors", metadata)
        )
    return paths


def write_vae_file(vae: WanVAE, path: Path) -> Path:
    """The VAE in the original names (as ``wan_2.1_vae.safetensors``), its config in the metadata."""
    from ...io.files import save_safetensors
    from .vae import wan_vae_to_original

    state = wan_vae_to_original(vae.model.state_dict(), vae.config)
    return save_safetensors(state, path, config_metadata("vae", vae.config))


def write_text_encoder_file(text_encoder: WanTextEncoder, folder: Path) -> Path:
    """umT5 in transformers' names (as ComfyUI's ``umt5_xxl_*``) as ``folder/umt5.safetensors``, its tokenizer
    beside it (its shapes say its config)."""
    from ...io.files import save_safetensors
    from .text_encoder import HF_TIED_EMBEDDING

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in text_encoder.model.state_dict().items() if k != HF_TIED_EMBEDDING}
    path = save_safetensors(state, folder / "umt5.safetensors")
    text_encoder.tokenizer.save_pretrained(str(folder))
    return path


def write_image_encoder_file(image_encoder: WanImageEncoder, path: Path) -> Path:
    """The vision tower in transformers' names (as ComfyUI's ``clip_vision_h.safetensors``), config in metadata."""
    from ...io.files import save_safetensors
    from .image_encoder import HF_VISION_PREFIX, vision_core

    core = vision_core(image_encoder.model).state_dict()
    state = {f"{HF_VISION_PREFIX}{k}": v for k, v in core.items() if not k.endswith("position_ids")}
    return save_safetensors(state, path, config_metadata("image_encoder", image_encoder.model.config.to_dict()))
