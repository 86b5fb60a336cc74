"""Checkpoint reading and strict key / shape checking, shared by every model family.

Released checkpoints come as a single ``*.safetensors`` file, a sharded set with an
``*.safetensors.index.json``, or a PyTorch ``.pth`` / ``.bin`` file. Every load goes through
:func:`load_into`, which refuses to skip a missing, unexpected or mis-shaped key silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..config import read_json_mapping
from ..io.files import save_safetensors

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# A single file's suffixes that mean safetensors: ComfyUI lists ``.sft`` files as safetensors (BFL shipped FLUX.1's
# ``ae.sft`` and ``flux1-dev.sft`` so); any other suffix is read as a pickle.
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Keys of ComfyUI's fp8_scaled files that describe the format rather than hold weights; they carry
# no wrapper prefix, unlike the weights beside them.
FORMAT_MARKER_KEYS = ("scaled_fp8",)
# A single file's safetensors metadata entry for what its shapes cannot say: a JSON object with one
# config per component ({"transformer": {...}, "vae": {...}}), the convention ComfyUI reads (its LTXV files).
CONFIG_METADATA_KEY = "config"
# safetensors' dtype names -> torch's (for reading a header without the data).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model built for it."""


class WeightsReadError(ValueError):
    """A weights file that is there but cannot be read: permission denied, truncated, another format."""


def check_readable(path: Path, what: str = "weights file") -> None:
    """Raise ``FileNotFoundError`` when ``path`` is no file, :class:`WeightsReadError` when it may not be read.

    The readers below would report a file this process may not open as missing (safetensors) or
    with a bare ``[Errno 13]``; this says which it is, naming the file.
    """
    try:
        if path.is_file():  # first: opening a fifo would block
            with path.open("rb"):
                return
    except PermissionError as err:  # the file's mode, or a folder on the way that may not be searched
        raise WeightsReadError(f"cannot read {what} {path}: permission denied") from err
    raise FileNotFoundError(f"{what} not found: {path}")


def _cause(err: BaseException) -> str:
    """An error's type and the first sentence of its message (torch's run on for lines)."""
    lines = str(err).strip().splitlines()
    first = lines[0].split(". ")[0][:200] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def unreadable_safetensors(path: Path, err: BaseException, what: str = "weights") -> WeightsReadError:
    """The error for a safetensors reader's failure on ``path`` (to raise ``from err``)."""
    return WeightsReadError(f"cannot read {what} {path}: truncated or not a safetensors file ({_cause(err)})")


def is_safetensors(path: Path) -> bool:
    """Whether a weights file is read as safetensors (by its suffix, :data:`SAFETENSORS_SUFFIXES`)."""
    return path.suffix in SAFETENSORS_SUFFIXES


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one weights file (safetensors, or a pickle read with ``weights_only=True``).

    A missing file raises ``FileNotFoundError``; one that cannot be read (permission denied,
    truncated, empty, another format) raises :class:`WeightsReadError` naming the file and the cause.
    """
    path = Path(path)
    check_readable(path)
    if is_safetensors(path):
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise unreadable_safetensors(path, err) from err
    try:
        # mmap needs the zip format of torch >= 1.6; an older (legacy pickle) file is read whole.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as err:  # torch.load fails on a bad file with anything from EOFError to KeyError
        raise WeightsReadError(
            f"cannot read weights {path}: truncated, corrupt, or not a checkpoint of plain tensors ({_cause(err)})"
        ) from err
    # Some trainers wrap the weights: {"state_dict": {...}} or {"module": {...}}.
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


@dataclass(frozen=True)
class WeightsHeader:
    """A weights file without its data: each tensor on the meta device (name, shape, dtype), and its metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    def config_entry(self, component: str) -> dict[str, Any] | None:
        """The ``config`` metadata's entry for ``component`` (None when the file carries none)."""
        text = self.metadata.get(CONFIG_METADATA_KEY)
        if text is None:
            return None
        try:
            entry = json.loads(text).get(component)
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{self.path}: its '{CONFIG_METADATA_KEY}' metadata is not a JSON object ({err})") from err
        return dict(entry) if entry is not None else None


def read_header(path: str | os.PathLike) -> WeightsHeader:
    """Tensor names, shapes and dtypes of one weights file, and its metadata, without reading the weights.

    A safetensors file gives its header only (milliseconds for any size); a pickle is memory-mapped and
    described the same way (its data is read only when touched; it has no metadata).
    """
    path = Path(path)
    check_readable(path)
    if not is_safetensors(path):
        return WeightsHeader(path, {k: v.to("meta") for k, v in read_state_dict(path).items()}, {})
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            tensors = {key: meta_tensor(reader.get_slice(key)) for key in reader.keys()}  # noqa: SIM118 (no dict)
            metadata = dict(reader.metadata() or {})
    except Exception as err:  # a truncated or foreign file: say which
        raise unreadable_safetensors(path, err) from err
    return WeightsHeader(path, tensors, metadata)


def meta_tensor(tensor_slice: Any) -> torch.Tensor:
    """A meta tensor of a safetensors slice's shape and dtype."""
    return torch.empty(tensor_slice.get_shape(), dtype=SAFETENSORS_DTYPES[tensor_slice.get_dtype()], device="meta")


def config_metadata(component: str, config: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata that gives a loader ``component``'s config (:meth:`WeightsHeader.config_entry`)."""
    return {CONFIG_METADATA_KEY: json.dumps({component: public_config(dict(config))})}


def count_blocks(names: Iterable[str], prefix: str) -> int:
    """How many numbered blocks ``{prefix}N.`` the names hold."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({match.group(1) for name in names if (match := pattern.match(name))})


def torch_dtype(name: str) -> torch.dtype:
    """A dtype by the library's name for it (``bfloat16``, ``float32``...)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype name (bfloat16, float16, float32...)")
    return dtype


def find_weight_files(folder: str | os.PathLike, prefix: str = "diffusion_pytorch_model") -> list[Path]:
    """The weight files of a model folder: the shards named by an index json, or the single file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    indexes = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
    if indexes:
        weight_map = read_json_mapping(indexes[0], "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{indexes[0]}: a shard index needs a 'weight_map' of key: file name")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{indexes[0].name} names shards that are not in {folder}: {missing}")
        return [folder / s for s in shards]
    # Hidden files are never weights: a killed atomic write leaves `.name.xxxx.partial.safetensors`.
    files = [p for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".")]
    preferred = [p for p in files if p.name.startswith(prefix)]
    candidates = preferred or files
    safetensors = [p for p in candidates if p.suffix == ".safetensors"]
    chosen = safetensors or candidates
    if not chosen:
        raise FileNotFoundError(f"no weights (*.safetensors, *.pth, *.bin) in {folder}")
    return chosen


def weight_key_names(folder: str | os.PathLike, prefix: str = "diffusion_pytorch_model") -> set[str]:
    """The tensor names of a folder's safetensors files, read from their headers (no tensor data).

    Recognising a checkpoint's variant needs what config.json leaves out (Fun extras); this reads it
    in milliseconds. Non-safetensors files give no names (they cannot be read without loading).
    """
    from safetensors import safe_open

    names: set[str] = set()
    for file in find_weight_files(folder, prefix):
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt") as reader:
                names.update(reader.keys())
        except Exception as err:  # a truncated header: say which file
            raise unreadable_safetensors(file, err) from err
    return names


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


def read_weights_at(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of one weights file, or of every weight file of a (sharded) folder (``--transformer-path`` and
    control files take either)."""
    path = Path(path)
    return read_folder_state_dict(path) if path.is_dir() else read_state_dict(path)


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
        save_safetensors(shards[0], path)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"{prefix}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(shard, folder / name)
        paths.append(folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(folder / f"{prefix}.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return paths


# ----------------------------------------------------------------------------------------
# Key renaming between checkpoint layouts, by tables of name templates
# ----------------------------------------------------------------------------------------


def template_regex(template: str) -> re.Pattern[str]:
    """A regex for a key template.

    ``{i}`` / ``{j}`` match block indices, ``{p}`` ``weight`` or ``bias``, ``{tail}`` any dotted rest of a name.
    """
    pattern = (
        re.escape(template)
        .replace(r"\{i\}", r"(?P<i>\d+)")
        .replace(r"\{j\}", r"(?P<j>\d+)")
        .replace(r"\{p\}", r"(?P<p>weight|bias)")
        .replace(r"\{tail\}", r"(?P<tail>[\w.]+)")
    )
    return re.compile(pattern + "$")


def rename_rules(pairs: Sequence[tuple[str, str]], reverse: bool = False) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, template) rules from (source, target) template pairs, in either direction."""
    return [(template_regex(target if reverse else source), source if reverse else target) for source, target in pairs]


def rename_key(key: str, rules: Sequence[tuple[re.Pattern[str], str]]) -> str | None:
    """Rename ``key`` by the first matching (pattern, template) rule; None when no rule matches."""
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def put_unique(out: dict[str, torch.Tensor], key: str, tensor: torch.Tensor, source_key: str) -> None:
    """Insert ``key`` into a converted state dict, refusing two source keys that land on one name."""
    if key in out:
        raise CheckpointMismatchError(f"two checkpoint keys convert to {key} (the second is {source_key})")
    out[key] = tensor


def with_original_names(
    err: CheckpointMismatchError, to_original: Callable[[str], str | None]
) -> CheckpointMismatchError:
    """The same mismatch error, plus the original-layout names of the keys it mentions.

    The strict check speaks transformers' names; a user holding the original file should be able
    to find the offending tensor in it too.
    """
    names = dict.fromkeys(re.findall(r"[A-Za-z_][\w.]*\w", str(err)))
    pairs = [f"{name} = {original}" for name in names if (original := to_original(name)) and original != name]
    if not pairs:
        return err
    return CheckpointMismatchError(f"{err}\n  in the original layout: " + ", ".join(pairs[:24]))


def load_into_naming_originals(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, to_original: Callable[[str], str | None] | None
) -> nn.Module:
    """:func:`load_into`; a mismatch also gives the keys' original-layout names when ``to_original`` maps them."""
    try:
        return load_into(model, state, source)
    except CheckpointMismatchError as err:
        raise (with_original_names(err, to_original) if to_original else err) from None


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without its private entries (``_class_name``, ``_diffusers_version``...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def cast_floating(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast the floating-point tensors of a state dict to ``dtype`` (None keeps them)."""
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def assert_materialised(model: nn.Module, source: str) -> None:
    """Fail if a meta-built model still has a tensor without data after loading."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointMismatchError(f"loading {source} left tensors without data: {left[:12]}")


def drop_prefixed(
    state: dict[str, torch.Tensor],
    prefixes: tuple[str, ...],
    why: str,
    source: str,
    log: logging.Logger = logger,
) -> list[str]:
    """Delete (in place) the keys starting with one of ``prefixes``; log and return them.

    Used only for parts of a checkpoint that are known by name and not needed (a decoder, a text
    tower); everything else unknown is left for the strict check to reject.
    """
    dropped = [k for k in state if k.startswith(prefixes)]
    for key in dropped:
        del state[key]
    if dropped:
        shown = ", ".join(dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        log.info("%s: dropped %d tensors (%s): %s", source, len(dropped), why, shown)
    return dropped
