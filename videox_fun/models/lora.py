"""LoRA files as people share them, read onto the Linear layers of our transformer, and merged.

Three key layouts are in circulation and all are read:

- **original names** (ours, ComfyUI): ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``
  (rank, in), ``...lora_B.weight`` (out, rank), ``...alpha``; ``lora_down`` / ``lora_up`` and
  the ``model.diffusion_model.`` prefix or none are seen too;
- **diffusers names** (``load_lora_weights`` / ``save_lora_weights``):
  ``transformer.blocks.0.attn1.to_q.lora_A.weight``, renamed by the model's ``lora_module_name``
  (Wan: through its checkpoint key table; CogVideoX's own names are diffusers');
- **kohya names** (VideoX-Fun's own training scripts): ``lora_unet__blocks_0_self_attn_q.lora_down.weight``
  with ``lora_up`` and ``alpha``; dots of the module name became underscores;
- **peft's** (``get_peft_model_state_dict``, ``PeftModel.save_pretrained``): original or diffusers names, with
  ``base_model.model.`` before them and ``.default`` after ``lora_A`` / ``lora_B`` or neither; the alpha of an
  ``adapter_model.safetensors`` is read from the ``adapter_config.json`` beside it. Pickled checkpoints
  (``.ckpt`` / ``.pt`` / ``.pth``, e.g. Wan2.2-Animate's ``relighting_lora.ckpt``, ``{"state_dict": ...}``) are
  read as safetensors files are.

A file that names modules this model does not have goes, whole, through the model's ``lora_state_dict`` hook when it
has one: the layouts shared for the diffusers-layout image families (kohya / sd-scripts FLUX.1 with fused ``qkv`` and
BFL names, ComfyUI's ``diffusion_model.double_blocks.*`` / ``diffusion_model.layers.*``, FLUX.2 BFL names...) are
renamed, split and alpha-scaled by diffusers' own converters (:func:`diffusers_lora_state_dict`, which the family
attaches when it loads a folder), then grouped as a diffusers-named file is.

The update of a module is ``scale * alpha / rank * up @ down`` (alpha = rank where a file has
none). Every key must land on a Linear of the model: a key that does not (a text-encoder LoRA, a
module this architecture lacks, a full-weight ``diff``) fails, naming it, instead of being skipped.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..config import read_json_mapping
from .loading import check_readable, read_state_dict, unreadable_safetensors

_DOTTED_KEY = re.compile(
    r"^(?:(?:model\.)?diffusion_model\.|transformer\.|base_model\.model\.)?(?P<module>.+?)"
    r"\.(?:lora_(?P<ab>A|B|down|up)(?:\.default)?\.weight|(?P<alpha>alpha))$"
)
# peft's adapter folder: adapter_model.safetensors keeps no alpha; adapter_config.json beside it does.
PEFT_CONFIG = "adapter_config.json"
# Pickled LoRA checkpoints (Wan2.2-Animate's relighting_lora.ckpt: {"state_dict": peft's state dict}).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_KOHYA_KEY = re.compile(r"^lora_unet_+(?P<module>[^.]+)\.(?:lora_(?P<ab>down|up)\.weight|(?P<alpha>alpha))$")
_DOWN = ("A", "down")
# What diffusers' converters read as low-rank weights: down / up (A / B, ``lora.down`` dotted, peft's ``.default``
# adapter name, XLabs' ``down`` / ``up``) and alpha. Anything else (full-weight ``diff`` / ``diff_b``, DoRA scales,
# LoKr factors) cannot merge as ``up @ down`` and some converters drop it without a word: it fails here, named.
_LOW_RANK_KEY = re.compile(r"(?:[._](?:lora_)?(?:down|up|A|B)(?:\.default)?\.weight|\.alpha)$")
# Text-encoder LoRA (kohya ``lora_te*``, diffusers ``text_encoder*``, ComfyUI ``text_encoders.``): merged into the
# transformer they would be lost, and some converters drop them without a word, so they fail, named.
_TEXT_ENCODER_KEY = re.compile(r"^(?:lora_te\d*_|text_encoders?(?:_\d)?\.)")
_CONVERTER_ERRORS = (ValueError, KeyError, AssertionError, NotImplementedError, IndexError, RuntimeError)

# A model's ``lora_state_dict`` hook: a LoRA file's tensors in any layout it reads -> the same update with diffusers'
# names (``transformer.<module>.lora_A.weight``, ``.lora_B.weight``, optional ``.alpha``); ValueError if it cannot.
LoraStateDict = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class LoraWeights:
    """One module's low-rank update: ``down`` (rank, in), ``up`` (out, rank) and ``alpha``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        """The LoRA rank."""
        return self.down.shape[0]

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """The weight update (out, in) in float32."""
        alpha = self.alpha if self.alpha is not None else float(self.rank)
        return (scale * alpha / self.rank) * (self.up.float() @ self.down.float())


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file: safetensors, or a pickled checkpoint of plain tensors (read with
    ``weights_only``); a peft ``adapter_config.json`` beside the file adds each module's alpha.

    A missing file raises ``FileNotFoundError``; an unreadable one (permission denied, truncated,
    not safetensors) raises :class:`~videox_fun.models.loading.WeightsReadError` naming it; one
    holding NaN or infinite values a ``ValueError`` naming it and the first such key.
    """
    path = Path(path)
    check_readable(path, "LoRA file")
    if path.suffix in PICKLE_SUFFIXES:
        tensors, metadata = read_state_dict(path), {}
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except SafetensorError as err:
            raise unreadable_safetensors(path, err, "LoRA file") from err
    for key, tensor in tensors.items():  # merged, NaN or inf would turn every video black
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ValueError(
                f"LoRA file {path}: tensor {key} holds non-finite values (NaN or inf); the file is damaged"
            )
    return {**tensors, **peft_alphas(path, tensors)}, metadata


def peft_alphas(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<module>.alpha`` for each ``lora_A`` of a file with a peft ``adapter_config.json`` beside it (peft keeps
    ``lora_alpha`` there, not in the weights); nothing when there is no such file or the weights carry alphas.

    Per-module ranks or alphas (``rank_pattern`` / ``alpha_pattern``) fail in one line: they are not read here.
    """
    config_path = path.parent / PEFT_CONFIG
    if not config_path.is_file() or any(key.endswith(".alpha") for key in tensors):
        return {}
    config = read_json_mapping(config_path, "peft adapter config")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{config_path}: per-module rank_pattern / alpha_pattern are not read; merge the adapter "
                         "with peft and pass the merged weights")  # fmt: skip
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)):
        return {}
    downs = [key for key in tensors if re.search(r"\.lora_A(?:\.default)?\.weight$", key)]
    return {re.sub(r"\.lora_A(?:\.default)?\.weight$", ".alpha", key): torch.tensor(float(alpha)) for key in downs}


def _linear_like(module: nn.Module) -> bool:
    """A Linear or a layer standing in for one (fp8 storage keeps ``in_features`` / ``out_features``)."""
    return isinstance(module, nn.Linear) or hasattr(module, "dequantized_weight")


def _resolve_module(
    name: str, kohya: bool, linears: set[str], underscored: Mapping[str, str], rename: Callable[[str], str | None]
) -> str | None:
    if kohya:
        return underscored.get(name.strip("_"))
    if name in linears:
        return name
    renamed = rename(name)
    return renamed if renamed in linears else None


def _no_rename(name: str) -> str | None:
    return None


def _group_by_module(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """The tensors of a file grouped as {module: {"down" | "up" | "alpha": tensor}}, and the keys that name no
    Linear of ``model`` (read as original, diffusers or kohya names, renamed by the model's ``lora_module_name``)."""
    linears = {name for name, module in model.named_modules() if _linear_like(module)}
    underscored = {name.replace(".", "_"): name for name in linears}
    # The family's key rule for names of another layout (Wan: diffusers' names -> the original ones).
    rename = getattr(model, "lora_module_name", _no_rename)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        match = _KOHYA_KEY.match(key)
        kohya = match is not None
        match = match or _DOTTED_KEY.match(key)
        module = _resolve_module(match["module"], kohya, linears, underscored, rename) if match else None
        if module is None:
            unknown.append(key)
            continue
        part = "alpha" if match["alpha"] else ("down" if match["ab"] in _DOWN else "up")
        parts.setdefault(module, {})[part] = tensor
    return parts, unknown


def lora_weights_for(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, LoraWeights]:
    """Group a LoRA file's tensors by the model module they adapt.

    Keys are read as original, diffusers or kohya names first; a file with keys that name no Linear so goes, whole,
    through the model's ``lora_state_dict`` hook when it has one (diffusers' converter of the layouts shared for
    its family) and is grouped again. Raises ``ValueError`` naming the keys that are not LoRA keys or name no
    Linear of ``model``, and the modules that lack their down or up half.
    """
    parts, unknown = _group_by_module(model, tensors)
    normalise: LoraStateDict | None = getattr(model, "lora_state_dict", None)
    layout = ""
    if unknown and normalise is not None:
        try:
            converted = normalise(tensors)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        parts, unknown = _group_by_module(model, converted)
        layout = " (converted to diffusers' names)"
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} key(s){layout} are not LoRA weights of a Linear layer of this model: "
            f"{unknown[:6]}"
        )
    halves = sorted(m for m, p in parts.items() if "down" not in p or "up" not in p)
    if halves:
        raise ValueError(f"{source}: modules missing lora down (A) or up (B) weights: {halves[:6]}")
    if not parts:
        raise ValueError(f"{source}: the file holds no LoRA weights")
    return {
        module: LoraWeights(p["down"], p["up"], float(p["alpha"]) if "alpha" in p else None)
        for module, p in parts.items()
    }


# -- diffusers' converters of the layouts people share ------------------------------------------------------------


def diffusers_lora_state_dict(loader: type, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors in diffusers' layout, as ``loader.lora_state_dict`` (a diffusers pipeline class or its
    LoRA loader mixin: ``FluxPipeline``, ``Flux2Pipeline``, ``QwenImagePipeline``, ``ZImagePipeline``...) reads
    them for ``load_lora_weights``: renamed, fused layers split, alpha baked into the weights or returned apart
    (then put back as ``<module>.alpha``), so merging the result adds what diffusers' ``fuse_lora`` adds.

    Nothing is dropped silently: keys that are not low-rank weights or belong to a text encoder fail before the
    conversion, a converter's refusal or warning (keys it leaves unconverted) fails, naming what it names, and so
    do keys it puts outside the transformer (diffusers' loader would not load those into it either).
    """
    refused = [key for key in tensors if _TEXT_ENCODER_KEY.match(key) or not _LOW_RANK_KEY.search(key)]
    if refused:
        raise ValueError(
            f"{len(refused)} key(s) are not low-rank LoRA weights of the transformer (text-encoder LoRA, full-weight "
            f"diffs, DoRA or LoKr are not merged): {refused[:6]}"
        )
    # A pipeline class's lora_state_dict returns alphas apart only when asked (FLUX.1's); the others bake them in.
    takes_alphas = "return_alphas" in inspect.signature(loader.lora_state_dict).parameters
    with _diffusers_warnings() as warnings:
        try:
            out = loader.lora_state_dict(dict(tensors), **({"return_alphas": True} if takes_alphas else {}))
        except _CONVERTER_ERRORS as err:  # diffusers' messages span lines; ours is one
            raise ValueError(f"diffusers' {loader.__name__} cannot read it: {_converter_error(err)}") from None
    if warnings:
        raise ValueError(f"diffusers' {loader.__name__} would leave part of it out: {' '.join(warnings)}")
    state, alphas = out if isinstance(out, tuple) else (out, None)
    state = dict(state)
    for key, alpha in (alphas or {}).items():  # keyed ``transformer.<module>.alpha``, as a diffusers file keys them
        state[key] = torch.as_tensor(alpha, dtype=torch.float32)
    outside = [key for key in state if not key.startswith("transformer.")]
    if outside:
        raise ValueError(
            f"diffusers' {loader.__name__} maps {len(outside)} key(s) outside the transformer, which its "
            f"load_lora_weights would not load either: {outside[:6]}"
        )
    return state


def diffusers_lora_reader(loader: type) -> LoraStateDict:
    """The ``lora_state_dict`` hook of a model whose shared LoRA files diffusers' ``loader`` reads."""

    def lora_state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return diffusers_lora_state_dict(loader, tensors)

    lora_state_dict.__qualname__ = f"lora_state_dict[{loader.__name__}]"
    return lora_state_dict


class _RecordWarnings(logging.Handler):
    """Keeps the messages of the warnings logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_one_line(record.getMessage()))


@contextmanager
def _diffusers_warnings() -> Iterator[list[str]]:
    """The warnings diffusers logs inside the block (its converters warn, then drop, the keys they cannot map)."""
    root = logging.getLogger("diffusers")
    handler, level = _RecordWarnings(), root.level
    root.addHandler(handler)
    if level == logging.NOTSET or level > logging.WARNING:  # a quieter verbosity must not hide a dropped key
        root.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _converter_error(err: BaseException) -> str:
    """A converter's exception in one line; a bare ``assert`` says which check failed, a KeyError which key."""
    message = _one_line(err)
    if isinstance(err, ValueError) and message:
        return message
    frame = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__} {message} ({frame.name}: {frame.line})".replace("  ", " ")


def lora_target_modules(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """The names of the layers of ``model`` that a LoRA file updates (checked as :func:`merge_lora` checks)."""
    tensors, _ = read_lora_file(path)
    return sorted(lora_weights_for(model, tensors, str(path)))


def merge_lora(model: nn.Module, path: str | os.PathLike, scale: float = 1.0) -> list[str]:
    """Add a LoRA file's updates into ``model``'s weights in place (``scale`` < 0 takes them out again).

    Weights keep their dtype and device; fp8-stored layers are dequantised, updated and stored
    again. Returns the updated module names.
    """
    tensors, _ = read_lora_file(path)
    weights = lora_weights_for(model, tensors, str(path))
    for name, lora in weights.items():
        module = model.get_submodule(name)
        if module.weight.shape != (lora.up.shape[0], lora.down.shape[1]):
            raise ValueError(
                f"{path}: LoRA for {name} is {lora.up.shape[0]}x{lora.down.shape[1]}, "
                f"the layer is {tuple(module.weight.shape)}"
            )
        with torch.no_grad():
            delta = lora.delta(scale).to(module.weight.device)
            if hasattr(module, "dequantized_weight"):
                module.store_weight(module.dequantized_weight(torch.float32) + delta)
            else:
                module.weight.add_(delta.to(module.weight.dtype))
    return sorted(weights)
