"""LoRA files as people share them, read onto the Linear layers of our transformer, and merged.

Three key layouts are in circulation and all are read:

- **original names** (ours, ComfyUI): ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``
  (rank, in), ``...lora_B.weight`` (out, rank), ``...alpha``; ``lora_down`` / ``lora_up`` and
  the ``model.diffusion_model.`` prefix or none are seen too;
- **diffusers names** (``load_lora_weights`` / ``save_lora_weights``):
  ``transformer.blocks.0.attn1.to_q.lora_A.weight``, renamed by the model's ``lora_module_name``
  (Wan: through its checkpoint key table; CogVideoX's own names are diffusers');
- **kohya names** (VideoX-Fun's own training scripts): ``lora_unet__blocks_0_self_attn_q.lora_down.weight``
  with ``lora_up`` and ``alpha``; dots of the module name became underscores.

The update of a module is ``scale * alpha / rank * up @ down`` (alpha = rank where a file has
none). Every key must land on a Linear of the model: a key that does not (a text-encoder LoRA, a
module this architecture lacks, a full-weight ``diff``) fails, naming it, instead of being skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .loading import check_readable, unreadable_safetensors

_DOTTED_KEY = re.compile(
    r"^(?:(?:model\.)?diffusion_model\.|transformer\.)?(?P<module>.+?)"
    r"\.(?:lora_(?P<ab>A|B|down|up)\.weight|(?P<alpha>alpha))$"
)
_KOHYA_KEY = re.compile(r"^lora_unet_+(?P<module>[^.]+)\.(?:lora_(?P<ab>down|up)\.weight|(?P<alpha>alpha))$")
_DOWN = ("A", "down")


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
    """Tensors and metadata of a LoRA safetensors file.

    A missing file raises ``FileNotFoundError``; an unreadable one (permission denied, truncated,
    not safetensors) raises :class:`~videox_fun.models.loading.WeightsReadError` naming it; one
    holding NaN or infinite values a ``ValueError`` naming it and the first such key.
    """
    path = Path(path)
    check_readable(path, "LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except SafetensorError as err:
        raise unreadable_safetensors(path, err, "LoRA file") from err
    for key, tensor in tensors.items():  # merged, NaN or inf would turn every video black
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ValueError(
                f"LoRA file {path}: tensor {key} holds non-finite values (NaN or inf); the file is damaged"
            )
    return tensors, metadata


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


def lora_weights_for(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, LoraWeights]:
    """Group a LoRA file's tensors by the model module they adapt (original module names).

    Raises ``ValueError`` naming the keys that are not LoRA keys or name no Linear of ``model``,
    and the modules that lack their down or up half.
    """
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
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} key(s) are not LoRA weights of a Linear layer of this model: {unknown[:6]}"
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
