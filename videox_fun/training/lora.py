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
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

PREFIX = "diffusion_model."
ADAPTER = "default"
# peft parameter names: "<module>.lora_A.<adapter>.weight"
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_FILE_KEY = re.compile(r"^" + re.escape(PREFIX) + r"(?P<module>.+)\.(?:lora_(?P<ab>[AB])\.weight|(?P<alpha>alpha))$")


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


def save_lora_file(state: Mapping[str, torch.Tensor], path: str | os.PathLike, rank: int, alpha: float) -> Path:
    """Write the LoRA tensors of ``state`` (a model state dict) atomically, with rank / alpha metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = to_file_format(state, alpha)
    modules = sorted({k[len(PREFIX) :].rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_A.weight")})
    metadata = {
        "format": "pt",
        "lora_format": "wan-original/diffusion_model",
        "rank": str(rank),
        "network_alpha": str(alpha),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "target_modules": json.dumps(modules),
    }
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return path


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, metadata


def load_lora(model: nn.Module, path: str | os.PathLike, scale: float = 1.0) -> list[str]:
    """Attach a LoRA file to ``model`` through peft (alpha / rank per module as stored; ``scale`` on top).

    Keys must be ``diffusion_model.<module>.lora_{A,B}.weight`` (+ optional ``.alpha``; absent means
    alpha = rank); a key naming no module of the model fails, naming it.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    tensors, _ = read_lora_file(path)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _FILE_KEY.match(key)
        if match is None:
            raise ValueError(f"{path}: {key!r} is not a diffusion_model.<module>.lora_A/lora_B/alpha key")
        weights.setdefault(match["module"], {})["alpha" if match["alpha"] else match["ab"]] = tensor
    modules = dict(model.named_modules())
    unknown = sorted(m for m in weights if not isinstance(modules.get(m), nn.Linear))
    if unknown:
        raise ValueError(f"{path}: LoRA for modules this model has no Linear layer for: {unknown[:8]}")
    ranks = {m: w["A"].shape[0] for m, w in weights.items()}
    alphas = {m: float(w["alpha"]) if "alpha" in w else float(ranks[m]) for m, w in weights.items()}
    first = next(iter(weights))
    config = LoraConfig(
        r=ranks[first],
        lora_alpha=alphas[first] * scale,
        target_modules=list(weights),
        rank_pattern={f"^{re.escape(m)}$": r for m, r in ranks.items()},
        alpha_pattern={f"^{re.escape(m)}$": a * scale for m, a in alphas.items()},
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    peft_state = {f"{m}.lora_{ab}.weight": w[ab] for m, w in weights.items() for ab in ("A", "B")}
    result = set_peft_model_state_dict(model, peft_state, adapter_name=ADAPTER)
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise ValueError(f"{path}: LoRA tensors that did not load: {bad[:8]}")
    return list(weights)
