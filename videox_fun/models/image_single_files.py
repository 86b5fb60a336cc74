"""Image models (the diffusers-layout image families) from single files, one per component, as ComfyUI keeps them.

ComfyUI keeps each component of an image model as one file in a folder of its kind: the transformer in
``diffusion_models/`` (Z-Image's original names, BFL's FLUX.2 names, Qwen-Image's diffusers names; ComfyUI's
``model.diffusion_model.`` prefix), the VAE in ``vae/`` (``ae.safetensors``, ``flux2-vae.safetensors``,
``qwen_image_vae.safetensors``), the language model in ``text_encoders/`` (``qwen_3_4b.safetensors``,
``mistral_3_small_flux2_*.safetensors``, ``qwen_2.5_vl_7b*.safetensors``); the tokenizer (and Qwen-Image-Edit's
image processor) is a folder of its own (VideoX-Fun keeps them in ``models/Fun_Models/``).

This module is what every image family shares: :class:`ImageSingleFiles` reads a file from its header (names,
shapes, dtypes, metadata: milliseconds for any size), tells which component of which family it holds, reads its
config (the file's ``config`` metadata, else the release's, sized by the shapes), checks the transformer's and the
VAE's every name and shape on the meta device, and loads the chosen files with the family's own component classes
and key converters; it also writes a loaded pipeline back as such files (:meth:`ImageSingleFiles.write`). A family
subclasses it in its own ``models/<family>/single_files.py`` with what differs: its key layouts, release configs,
text encoder and pipeline arguments. A model joined from such files is recognised and loaded by
:class:`videox_fun.families.image_single_files.SingleFileImageFamily`.

A file of another family (or of another component) is refused in one line that says what the file holds, from the
markers each family's reader declares (:func:`describe_file`).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..runtime.fp8 import dequantize_fp8_state, is_fp8
from .component import quiet_transformers_load, strictly_loaded
from .loading import (
    cast_floating,
    check_state_dict,
    config_metadata,
    count_blocks,
    load_into,
    public_config,
    read_header,
    read_state_dict,
    strip_prefix,
    torch_dtype,
)

logger = logging.getLogger(__name__)

KINDS = ("transformer", "vae", "text_encoder")
KIND_NAMES = {"transformer": "transformer", "vae": "VAE", "text_encoder": "text encoder"}  # in messages
COMFY_PREFIX = "model.diffusion_model."  # ComfyUI's prefix before a diffusion model's keys
# Tensors a text encoder file may carry that are no weights: ComfyUI keeps the tokenizer's model in the file.
TOKENIZER_TENSORS = ("tekken_model", "spiece_model")

_READERS: list[ImageSingleFiles] = []  # every family's reader, in registration order (for messages)


def register_reader(reader: ImageSingleFiles) -> ImageSingleFiles:
    """Add a family's reader to those :func:`describe_file` asks (each reader's module calls this on import)."""
    _READERS.append(reader)
    return reader


def widened(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """A state with its float8 weights widened (times their ``scale_weight``): said in the log, never silently."""
    if not is_fp8(state):
        return dict(state)
    logger.info("%s: float8 weights widened to the chosen precision", source.name)
    return dequantize_fp8_state(dict(state))


def looks_like_vae(keys: Iterable[str]) -> bool:
    """Whether names are an autoencoder's (an encoder and a decoder)."""
    keys = [key.removeprefix("first_stage_model.").removeprefix("vae.") for key in keys]
    return any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys)


def looks_like_language_model(keys: Iterable[str]) -> bool:
    """Whether names are a language model's (token embeddings and attention layers)."""
    return any("embed_tokens." in key or key == "shared.weight" for key in keys)


def describe_file(keys: Iterable[str]) -> str:
    """What a file holds, for a refusal: the first registered reader's component that claims the names ("a FLUX.2
    transformer"), else a VAE or a language model of no known family, else what its keys start with."""
    keys = list(keys)
    for reader in _READERS:
        for kind in KINDS:
            if reader.claims(kind, keys):
                return f"a {reader.label} {KIND_NAMES[kind]}"
    for reader in _READERS:
        known = reader.describe_neighbour(keys)
        if known is not None:
            return known
    if looks_like_vae(keys):
        return "a VAE"
    if looks_like_language_model(keys):
        return "a text encoder"
    return f"not a model component this version reads (its keys start {', '.join(sorted(keys)[:3])})"


@dataclass(frozen=True)
class ComponentFile:
    """One component's single file as its header describes it."""

    family: str  # the registered family it belongs to
    kind: str  # transformer | vae | text_encoder
    path: Path
    config: dict[str, Any]  # the component's config (the file's metadata, else the release's sized by the shapes)
    precision: str  # the library's dtype name it loads in
    fp8: bool = False  # stored in float8 (widened when it loads)
    # A transformer's Fun control file joined to it (ComfyUI's Load*ControlNetInModel); a request's control_path.
    control: Path | None = None

    @property
    def label(self) -> str:
        """The file and what it holds, for the model_name socket and the log."""
        return f"{self.path.stem} [{self.family} {self.kind}{', fp8' if self.fp8 else ''}]"


@dataclass(frozen=True)
class ImageParts:
    """The single files that make one image model, its tokenizer (and image processor) folder, and its name."""

    reader: ImageSingleFiles
    transformer: ComponentFile
    vae: ComponentFile
    text_encoder: ComponentFile
    tokenizer: Path
    processor: Path | None = None
    name: str = ""

    def check(self) -> None:
        """Every part is the reader's family's and of its kind, and the text width fits (the family's check)."""
        for kind in KINDS:
            part = getattr(self, kind)
            if part.kind != kind:
                raise ValueError(f"{part.path.name} is a {KIND_NAMES[part.kind]} file, given as the {KIND_NAMES[kind]}")
            if part.family != self.reader.family:
                label = next((reader.label for reader in _READERS if reader.family == part.family), part.family)
                raise ValueError(f"{part.path.name} is a {label} {KIND_NAMES[kind]}; a {self.reader.label} model "
                                 "needs its own")  # fmt: skip
        self.reader.check_fit(self)


class ImageSingleFiles:
    """A family's reader and writer of single files; subclasses (one per family) fill the class attributes and the
    hooks marked so. The generic parts: header reading, recognition, meta-device checks, loading, writing."""

    family: ClassVar[str]  # the registered family name ("zimage")
    label: ClassVar[str]  # the family in messages ("Z-Image")
    transformer_class: ClassVar[Any]  # a StrictDiffusersModel subclass
    vae_class: ClassVar[Any]  # a DiffusersVAE subclass
    vae_release: ClassVar[Mapping[str, Any]] = {}  # the released VAE's config (what a file without metadata gets)
    pipeline: ClassVar[str]  # "module:Class" of the family's pipeline
    sizes: ClassVar[Any]  # the family's ImageSizeRules
    # Where VideoX-Fun's chunked loaders look for the tokenizer (and the processor) in the model folders, in order.
    tokenizer_folders: ClassVar[tuple[str, ...]] = ()
    processor_folders: ClassVar[tuple[str, ...]] = ()
    # The names ComfyUI gives its files, for writing ({name}: the model's stem).
    file_names: ClassVar[Mapping[str, str]] = {"transformer": "{name}.safetensors", "vae": "{name}_vae.safetensors",
                                               "text_encoder": "{name}_text_encoder.safetensors"}  # fmt: skip

    def __repr__(self) -> str:
        return f"<{self.label} single files>"

    # -- hooks: what a family's files hold --------------------------------------------------------
    def claims(self, kind: str, keys: list[str]) -> bool:
        """Whether names are this family's ``kind`` (from the markers its layouts carry)."""
        raise NotImplementedError

    def describe_neighbour(self, keys: list[str]) -> str | None:
        """What a file of a family this one is mistaken for holds ("a FLUX.1 transformer"), when its names say so;
        None by default."""
        return None

    def transformer_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """A transformer file's tensors under the transformer class's names (meta tensors too)."""
        raise NotImplementedError

    def transformer_config(self, state: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> dict[str, Any]:
        """The release's transformer config sized by a (converted) state's shapes, for a file without metadata;
        ``options`` are the loader's widgets that the shapes cannot say (Qwen-Image's ``zero_cond_t``)."""
        raise NotImplementedError

    def vae_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """A VAE file's tensors under the diffusers class's names (unchanged by default)."""
        return dict(state)

    def text_state(self, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """A text encoder file's weights under names the text model's loader reads."""
        raise NotImplementedError

    def text_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The release's text encoder config sized by the file's shapes, for a file without metadata."""
        raise NotImplementedError

    def text_width(self, config: Mapping[str, Any]) -> int:
        """The width of the text features a text encoder of ``config`` gives the transformer."""
        raise NotImplementedError

    def transformer_text_width(self, config: Mapping[str, Any]) -> int:
        """The width of the text features a transformer of ``config`` reads."""
        raise NotImplementedError

    def build_text_encoder(
        self, file: ComponentFile, state: dict[str, torch.Tensor], dtype: torch.dtype, parts: ImageParts
    ) -> nn.Module:
        """The family's text encoder wrapper of a file's (renamed, widened, cast to ``dtype``) weights and the parts'
        tokenizer (and image processor)."""
        raise NotImplementedError

    def model_config(self, parts: ImageParts) -> Any:
        """The family's typed folder config for the parts (the release's defaults; the variant by the name)."""
        raise NotImplementedError

    def variant(self, parts: ImageParts) -> tuple[str, tuple[str, ...]]:
        """The variant's name and the modes it serves."""
        raise NotImplementedError

    def pipeline_arguments(self, parts: ImageParts) -> dict[str, Any]:
        """The family pipeline's constructor arguments besides the components (its variant)."""
        return {}

    def check_inputs(self, family: Any, recognised: Any, mode: str, inputs: Mapping[str, Any]) -> None:
        """One-line checks of a request's inputs before any weight loads (``family``: the single-file family, with
        the ``parts`` and the registered ``base`` family): by default the registered family's own."""
        family.base.check_inputs(recognised, mode, inputs)

    # writing (ComfyUI's layouts)
    def transformer_file_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A transformer's state in the layout ComfyUI ships (unchanged by default)."""
        return dict(state)

    def vae_file_state(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """A VAE's state in the layout ComfyUI ships (unchanged by default)."""
        return dict(state)

    def text_file_state(self, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
        """A text encoder's weights in the layout ComfyUI ships."""
        raise NotImplementedError

    def text_file_config(self, text_encoder: nn.Module) -> dict[str, Any]:
        """The config of the text model a written text encoder file holds (the whole model's by default)."""
        return text_encoder.model.config.to_dict()

    def diffusers_pipeline(self, parts: ImageParts) -> str:
        """The diffusers pipeline class of the parts' variant, whose LoRA reader merges LoRA files of other layouts."""
        raise NotImplementedError

    # -- reading ----------------------------------------------------------------------------------
    def refuse_foreign(self, kind: str, keys: list[str], path: Path) -> None:
        """One line when the names are not this family's ``kind``, saying what the file holds."""
        if not self.claims(kind, keys):
            raise ValueError(f"{path.name} is {describe_file(keys)}, not a {self.label} {KIND_NAMES[kind]}")

    def read_transformer(self, path: Path, precision: str, **options: Any) -> ComponentFile:
        """Recognise a transformer file from its header: this family's (else one line), its config (metadata, else
        the release's sized by its shapes), every name and shape checked on the meta device."""
        header = read_header(path)
        self.refuse_foreign("transformer", list(header.tensors), path)
        state = self.transformer_state(header.tensors, path)
        given = header.config_entry("transformer")  # a widget never overrides what the file says
        config = {**options, **given} if given is not None else self.transformer_config(state, options)
        with torch.device("meta"):
            model = self.transformer_class.from_model_config(config)
        check_state_dict(model, state, str(path))
        found = ComponentFile(self.family, "transformer", path, config, precision, is_fp8(header.tensors))
        logger.info("%s", found.label)
        return found

    def read_vae(self, path: Path, precision: str) -> ComponentFile:
        """Recognise a VAE file: this family's, its config (metadata, else the release's), checked on meta."""
        header = read_header(path)
        self.refuse_foreign("vae", list(header.tensors), path)
        config = header.config_entry("vae") or dict(self.vae_release)
        self.vae_model(config, self.vae_state(header.tensors, config), path)
        return ComponentFile(self.family, "vae", path, config, precision, is_fp8(header.tensors))

    def read_text_encoder(self, path: Path, precision: str) -> ComponentFile:
        """Recognise a text encoder file: this family's language model, its config (metadata, else the release's
        sized by its shapes). Its names are checked when it loads (by the text model's own loader)."""
        header = read_header(path)
        self.refuse_foreign("text_encoder", list(header.tensors), path)
        state = self.text_state(header.tensors, path)
        config = header.config_entry("text_encoder") or self.text_config(state)
        return ComponentFile(self.family, "text_encoder", path, config, precision, is_fp8(header.tensors))

    def find_folder(self, names: tuple[str, ...], beside: Path | None, model_folders: Iterable[Path],
                    marker: tuple[str, ...], what: str) -> Path:  # fmt: skip
        """The first folder holding one of ``marker``'s files: ``beside``'s own folder (and ``names`` there), then
        ``names`` in each of ``model_folders``; else one line naming where to put it."""
        candidates = [beside.parent, *(beside.parent / name for name in names)] if beside is not None else []
        candidates += [root / name for root in model_folders for name in names]
        for folder in candidates:
            if any((folder / file).is_file() for file in marker):
                return folder
        places = ", ".join(str(folder) for folder in candidates[:4])
        raise FileNotFoundError(f"no {self.label} {what} ({' or '.join(marker)}): put {names[0]}/ in a model folder "
                                f"(models/Fun_Models/); looked in {places}, ...")  # fmt: skip

    def find_tokenizer(self, text_encoder: Path, model_folders: Iterable[Path] = ()) -> Path:
        """The tokenizer folder of a text encoder file: beside it, else VideoX-Fun's folders in the model folders."""
        return self.find_folder(self.tokenizer_folders, text_encoder, model_folders, ("tokenizer.json", "vocab.json"),
                                "tokenizer")  # fmt: skip

    def find_processor(self, model_folders: Iterable[Path] = ()) -> Path:
        """The image processor folder (Qwen-Image-Edit's) in the model folders."""
        if not self.processor_folders:
            raise ValueError(f"a {self.label} model reads no image processor")
        return self.find_folder(self.processor_folders, None, model_folders, ("preprocessor_config.json",),
                                "image processor")  # fmt: skip

    def check_fit(self, parts: ImageParts) -> None:
        """The text encoder gives the width the transformer reads."""
        wanted, given = (
            self.transformer_text_width(parts.transformer.config),
            self.text_width(parts.text_encoder.config),
        )
        if wanted != given:
            raise ValueError(f"{parts.transformer.path.name} reads {wanted}-wide text features; "
                             f"{parts.text_encoder.path.name} gives {given}")  # fmt: skip

    # -- loading ----------------------------------------------------------------------------------
    def vae_model(self, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
        """The diffusers VAE of ``config`` built on the meta device with ``state`` checked (and assigned when the
        tensors hold data)."""
        with torch.device("meta"):
            model = self.vae_class.model_class.from_config(dict(config))
        if any(t.is_meta for t in state.values()):
            check_state_dict(model, state, str(source))
            return model
        return load_into(model, state, str(source))

    def load_transformer(self, file: ComponentFile, dtype: torch.dtype) -> nn.Module:
        """The transformer of a file, strictly, in ``dtype`` (float8 weights widened)."""
        state = self.transformer_state(widened(read_state_dict(file.path), file.path), file.path)
        return self.transformer_class.from_state(file.config, state, str(file.path), dtype)

    def load_vae(self, file: ComponentFile) -> nn.Module:
        """The VAE wrapper of a file, strictly, in its precision."""
        state = cast_floating(widened(read_state_dict(file.path), file.path), torch_dtype(file.precision))
        return self.vae_class(self.vae_model(file.config, self.vae_state(state, file.config), file.path)).eval()

    def load_text_encoder(self, parts: ImageParts) -> nn.Module:
        """The text encoder wrapper of the parts' file and tokenizer, strictly, in its precision."""
        file = parts.text_encoder
        state = self.text_state(widened(read_state_dict(file.path), file.path), file.path)
        dtype = torch_dtype(file.precision)
        return self.build_text_encoder(file, cast_floating(state, dtype), dtype, parts)

    def load_pipeline(self, parts: ImageParts, config: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """The family's pipeline of the parts: the transformer in ``dtype``, the others in their files' precisions,
        the release's scheduler."""
        module, name = self.pipeline.split(":")
        pipeline_class = getattr(importlib.import_module(module), name)
        pipe = pipeline_class(
            transformer=self.load_transformer(parts.transformer, dtype),
            vae=self.load_vae(parts.vae),
            text_encoder=self.load_text_encoder(parts),
            scheduler_config=dict(pipeline_class.scheduler_release),
            config=config,
            device=device,
            dtype=dtype,
            **self.pipeline_arguments(parts),
        )
        return pipe.to(device)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, pipe: Any, models_dir: Path, name: str) -> Exported:
        """Write a loaded pipeline's components as single files in a ComfyUI ``models/`` tree, in the layouts ComfyUI
        ships, each with its config in the metadata: the transformer in ``diffusion_models/``, the VAE in ``vae/``,
        the text encoder in ``text_encoders/``; the tokenizer (and an edit model's image processor) in
        ``Fun_Models/`` under VideoX-Fun's folder names."""
        from ..io.files import save_safetensors

        out = Exported()
        transformer, vae = pipe.transformer, pipe.vae
        files = {
            "diffusion_models": ("transformer", self.transformer_file_state(transformer.state_dict()),
                                 transformer.config),
            "vae": ("vae", self.vae_file_state(vae.model.state_dict(), vae.config), vae.config),
            "text_encoders": ("text_encoder", self.text_file_state(pipe.text_encoder),
                              self.text_file_config(pipe.text_encoder)),
        }  # fmt: skip
        for folder, (kind, state, config) in files.items():
            path = models_dir / folder / self.file_names[kind].format(name=name)
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {key: tensor.contiguous() for key, tensor in state.items()}
            getattr(out, folder).append(save_safetensors(state, path, config_metadata(kind, dict(config))))
        tokenizer = models_dir / "Fun_Models" / self.tokenizer_folders[0]
        pipe.text_encoder.tokenizer.save_pretrained(str(tokenizer))
        out.folders.append(tokenizer)
        processor = getattr(pipe.text_encoder, "image_processor", None)
        if processor is not None:
            folder = models_dir / "Fun_Models" / self.processor_folders[0]
            processor.save_pretrained(str(folder))
            out.folders.append(folder)
        return out


@dataclass
class Exported:
    """The files :meth:`ImageSingleFiles.write` wrote, by the ComfyUI folder of their kind."""

    diffusion_models: list[Path] = field(default_factory=list)
    vae: list[Path] = field(default_factory=list)
    text_encoders: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # the tokenizer's (and processor's), in Fun_Models/


# ------------------------------------------------------------------------------------------
# Layouts shared by several families
# ------------------------------------------------------------------------------------------


def without_comfy_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusion model's state without ComfyUI's ``model.diffusion_model.`` prefix (when every key has it)."""
    return strip_prefix(state, (COMFY_PREFIX,))


# diffusers' AutoencoderKL names -> the original (ldm / BFL ``ae.safetensors``) names, by pattern; the inverse of
# diffusers' ``convert_ldm_vae_checkpoint``, which reads them back (the decoder's levels run in reverse order there).
_LDM_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_key(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key in ldm names (``levels``: the decoder's up blocks, numbered in reverse)."""
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3]}".replace("conv_shortcut", "nin_shortcut")
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = levels - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3]}".replace("conv_shortcut", "nin_shortcut")
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)"
                             r"\.(\w+)", key):  # fmt: skip
        return f"{match[1]}.mid.attn_1.{_LDM_ATTENTION[match[2]]}.{match[3]}"
    return re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)  # conv_in / out, quant convs: same


def autoencoder_to_ldm(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL(-structured) state in the original ldm names, the attention projections as the
    1x1 convolutions the original files store; keys outside the autoencoder (FLUX.2's ``bn``) as they are."""
    out = {}
    for key, tensor in state.items():
        name = _ldm_key(key, levels)
        attention = ".mid.attn_1." in name and name.endswith("weight") and ".norm." not in name
        out[name] = tensor[:, :, None, None] if attention and tensor.ndim == 2 else tensor
    return out


def ldm_to_autoencoder(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An ldm-named AutoencoderKL state in diffusers' names through diffusers' own ``convert_ldm_vae_checkpoint``;
    keys it does not convert (FLUX.2's ``bn.*``) pass under their own names, so strict loading names what is wrong."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint(dict(state), dict(config))
    known = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    return {**converted, **{key: value for key, value in state.items() if not key.startswith(known)}}


def is_ldm_autoencoder(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether an AutoencoderKL state has the original ldm names (``encoder.down.0.block.0...``)."""
    return any(key.startswith(("encoder.down.", "decoder.up.")) for key in state)


def decoder_sizes(state: Mapping[str, torch.Tensor], head_dim: int) -> dict[str, Any]:
    """A decoder-only language model's sizes read off its weights (``embed_tokens``, ``layers.N.``: the names of
    transformers' Qwen3 / Mistral models): vocabulary, width, MLP width, layers, query and key / value heads of
    ``head_dim`` channels (grouped-query attention has fewer key / value heads)."""
    vocab, hidden = state["embed_tokens.weight"].shape
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0],
        "num_hidden_layers": count_blocks(state, "layers."),
        "num_attention_heads": state["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        "num_key_value_heads": state["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "head_dim": head_dim,
    }


def transformers_strict(
    model_class: type, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path, dtype: torch.dtype
) -> nn.Module:
    """A transformers model of ``config`` (its class's config fields; private ``_`` entries dropped) with
    ``state``'s weights through transformers' own loader (which maps the checkpoint names of every transformers
    version), refused when any key is missing, unexpected or mis-shaped."""
    model_config = model_class.config_class(**public_config(config))
    loaded = quiet_transformers_load(model_class, None, dtype, config=model_config, state_dict=dict(state))
    return strictly_loaded(model_class, loaded, str(source))
