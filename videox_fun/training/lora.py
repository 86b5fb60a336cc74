"""LoRA on a family's transformer through peft, and the LoRA file people share.

Adapters are injected with peft (``inject_adapter_in_model``), so the model keeps its class,
its forward and its original parameter names. The saved file is the format that ComfyUI and
diffusers' ``load_lora_weights`` both read for Wan: original key names under a
``diffusion_model.`` prefix,

    diffusion_model.blocks.0.self_attn.q.lora_A.weight   (rank, in)
    diffusion_model.blocks.0.self_attn.q.lora_B.weight   (out, rank)
    diffusion_model.blocks.0.self_attn.q.alpha           ()  alpha: the update is B @ A * alpha / rank

plus ``rank`` / ``network_alpha`` / ``target_modules`` in the safetensors metadata (and the
kohya-style ``ss_network_dim`` / ``ss_network_alpha`` that LoRA tools display).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..io.files import atomic_path
from ..models.lora import lora_weights_for, read_lora_file

PREFIX = "diffusion_model."
ADAPTER = "default"
# peft parameter names: "<module>.lora_A.<adapter>.weight"
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def lora_module_names(model: nn.Module, targets: Sequence[str], skip: Sequence[str] | None = None) -> list[str]:
    """Full names of the Linear layers whose names end with one of ``targets`` and contain no ``skip`` part."""
    skip = tuple(skip or ())
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(name == t or name.endswith("." + t) for t in targets)
        and not any(s in name for s in skip)
    ]
    if not names:
        raise ValueError(f"no Linear layer matches the LoRA targets {list(targets)} (skipping {list(skip)})")
    return names


def add_lora(
    model: nn.Module, rank: int, alpha: float, targets: Sequence[str], skip: Sequence[str] | None = None
) -> list[str]:
    """Inject LoRA adapters (B = 0, so the model is unchanged at first); only they require grad.

    Returns the adapted module names. Adapter weights are fp32 whatever the base dtype.
    """
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_module_names(model, targets, skip)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, init_lora_weights=True)
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        param.requires_grad_(is_lora)
        if is_lora:
            param.data = param.data.float()
    return names


def to_file_format(state: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft adapter tensors of a model state dict -> the shared LoRA format (with per-module alpha)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.match(key)
        if match is None or match["adapter"] != ADAPTER:
            continue
        module = match["module"]
        out[f"{PREFIX}{module}.lora_{match['ab']}.weight"] = tensor.detach().float().cpu().contiguous()
        out[f"{PREFIX}{module}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError("the state dict holds no LoRA adapter weights")
    return out


def write_lora_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, prefix: str, metadata: Mapping[str, str]
) -> Path:
    """Write LoRA tensors keyed ``<prefix><module>.lora_A.weight``... atomically, with ``metadata`` and the adapted
    modules (``target_modules``) in the safetensors metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modules = sorted({k[len(prefix) :].rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_A.weight")})
    with atomic_path(path) as temporary:
        save_file(dict(tensors), str(temporary), metadata={"format": "pt", **metadata,
                                                           "target_modules": json.dumps(modules)})  # fmt: skip
    return path


def save_lora_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike, rank: int, alpha: float) -> Path:
    """Write the LoRA tensors of ``state`` (a model state dict) atomically, with rank / alpha metadata."""
    metadata = {
        "lora_format": "wan-original/diffusion_model",
        "rank": str(rank),
        "network_alpha": str(alpha),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
    }
    return write_lora_tensors(to_file_format(state, alpha), path, PREFIX, metadata)


def save_diffusers_lora_file(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, rank: int, alpha: float, prefix: str = "transformer."
) -> Path:
    """Write the LoRA tensors of ``state`` as diffusers' ``load_lora_weights`` reads them for a diffusers-named
    transformer: ``<prefix><module>.lora_A.weight`` / ``lora_B.weight``, atomically.

    diffusers reads no per-module alpha in this layout (it applies B @ A as stored), so alpha / rank is folded
    into ``lora_B``; our loaders (``models.lora``, :func:`load_lora`) read the file the same way. Metadata keeps
    rank and alpha.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in to_file_format(state, alpha).items():
        if key.endswith(".alpha"):
            continue
        tensors[prefix + key[len(PREFIX) :]] = tensor * (alpha / rank) if ".lora_B." in key else tensor
    metadata = {"lora_format": "diffusers/transformer", "rank": str(rank), "network_alpha": str(alpha),
                "alpha_folded_into_lora_B": "true"}  # fmt: skip
    return write_lora_tensors(tensors, path, prefix, metadata)


def load_lora(model: nn.Module, path: str | os.PathLike, scale: float = 1.0) -> list[str]:
    """Attach a LoRA file to ``model`` through peft, unmerged (alpha / rank per module as stored; ``scale`` on top).

    Any layout :func:`~videox_fun.models.lora.lora_weights_for` reads (original, diffusers or
    kohya names); a key naming no Linear of the model fails, naming it.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    tensors, _ = read_lora_file(path)
    weights = lora_weights_for(model, tensors, str(path))
    ranks = {m: w.rank for m, w in weights.items()}
    alphas = {m: w.alpha if w.alpha is not None else float(w.rank) for m, w in weights.items()}
    first = next(iter(weights))
    config = LoraConfig(
        r=ranks[first],
        lora_alpha=alphas[first] * scale,
        target_modules=list(weights),
        rank_pattern={f"^{re.escape(m)}$": r for m, r in ranks.items()},
        alpha_pattern={f"^{re.escape(m)}$": a * scale for m, a in alphas.items()},
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    peft_state = {f"{m}.lora_{ab}.weight": t for m, w in weights.items() for ab, t in (("A", w.down), ("B", w.up))}
    result = set_peft_model_state_dict(model, peft_state, adapter_name=ADAPTER)
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise ValueError(f"{path}: LoRA tensors that did not load: {bad[:8]}")
    return list(weights)
