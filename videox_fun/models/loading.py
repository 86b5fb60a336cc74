"""Checkpoint reading and strict key / shape checking, shared by every model family.

Released checkpoints come as a single ``*.safetensors`` file, a sharded set with an
``*.safetensors.index.json``, or a PyTorch ``.pth`` / ``.bin`` file. Every load goes through
:func:`load_into`, which refuses to skip a missing, unexpected or mis-shaped key silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model built for it."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one weights file (safetensors, or a pickle read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    # Some trainers wrap the weights: {"state_dict": {...}} or {"module": {...}}.
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def find_weight_files(folder: str | os.PathLike, prefix: str = "diffusion_pytorch_model") -> list[Path]:
    """The weight files of a model folder: the shards named by an index json, or the single file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    indexes = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
    if indexes:
        with open(indexes[0]) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{indexes[0].name} names shards that are not in {folder}: {missing}")
        return [folder / s for s in shards]
    preferred = [p for p in sorted(folder.iterdir()) if p.name.startswith(prefix) and p.suffix in WEIGHT_SUFFIXES]
    candidates = preferred or [p for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES]
    safetensors = [p for p in candidates if p.suffix == ".safetensors"]
    chosen = safetensors or candidates
    if not chosen:
        raise FileNotFoundError(f"no weights (*.safetensors, *.pth, *.bin) in {folder}")
    return chosen


def read_folder_state_dict(
    folder: str | os.PathLike, prefix: str = "diffusion_pytorch_model"
) -> dict[str, torch.Tensor]:
    """Read and merge every weight file of a (possibly sharded) model folder."""
    state: dict[str, torch.Tensor] = {}
    for file in find_weight_files(folder, prefix):
        part = read_state_dict(file)
        overlap = state.keys() & part.keys()
        if overlap:
            raise CheckpointMismatchError(f"{file} repeats keys of another shard: {sorted(overlap)[:5]}")
        state.update(part)
    return state


def strip_prefix(state: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``model.diffusion_model.``, ``diffusion_model.``...) when every key has it."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_describe(misshaped)}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match {type(model).__name__}:\n  " + "\n  ".join(problems)
        )


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Check ``state`` strictly against ``model`` and copy it in (``assign`` keeps meta-built models cheap)."""
    check_state_dict(model, state, source)
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


def save_sharded(
    state: Mapping[str, torch.Tensor],
    folder: str | os.PathLike,
    max_shard_bytes: int = 10 * 2**30,
    prefix: str = "diffusion_pytorch_model",
) -> list[Path]:
    """Write a state dict as one safetensors file, or as shards plus an index json when it is large."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        path = folder / f"{prefix}.safetensors"
        save_file(shards[0], str(path))
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"{prefix}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        paths.append(folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(folder / f"{prefix}.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return paths
