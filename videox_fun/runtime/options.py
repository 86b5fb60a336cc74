"""How a model is loaded and run (:class:`RuntimeOptions`, the programmatic entry's and every face's): the speed,
memory and weight options, their checks, and attaching them to a loaded pipeline of any family (through the
pipeline's ``transformers``)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.files import printable
from .cache import FirstBlockCache, StepCache, TeaCache, coefficients_for

if TYPE_CHECKING:
    from torch import nn

    from ..families import Pipeline

logger = logging.getLogger(__name__)

CACHES = ("none", "teacache", "first-block")
# What TeaCache measures across steps: the time embedding or its projection (Wan, CogVideoX, FLUX, Z-Image), or the
# first block's modulated image input (Qwen-Image: VideoX-Fun's published set is fitted on it).
TEACACHE_INDICATORS = ("time_embedding", "time_projection", "modulated_input")
DEFAULT_THRESHOLDS = {"teacache": 0.1, "first-block": 0.05}
DEFAULT_SKIP_START_STEPS = 5
# Flags that only mean something with a step cache: given without --cache they would be ignored.
CACHE_FLAGS = ("cache_threshold", "teacache_indicator", "num_skip_start_steps", "cache_offload_residuals")


@dataclass
class RuntimeOptions:
    """How a model is loaded and run: device, memory mode, weights, speed features, parallelism.

    Field names are those of the CLI flags (``--gpu-memory-mode`` -> ``gpu_memory_mode``).
    """

    device: str = "auto"
    dtype: str = "auto"
    config: Path | None = None  # a YAML model config instead of the folder's own
    attention: str = "auto"
    gpu_memory_mode: str = "model_full_load"
    resident_blocks: int = 4
    fp8: str = "plain"
    transformer_path: Path | None = None
    transformer_high_path: Path | None = None
    lora_path: list[str] = field(default_factory=list)
    lora_weight: list[float] | None = None
    lora_high_path: list[str] = field(default_factory=list)
    lora_high_weight: list[float] | None = None
    cache: str = "none"
    cache_threshold: float | None = None
    teacache_indicator: str | None = None
    num_skip_start_steps: int | None = None
    cache_offload_residuals: bool = False
    cfg_skip_ratio: float = 0.0
    cfg_sequential: bool = False
    compile: bool = False
    riflex_k: int | None = None
    ulysses_degree: int | None = None
    ring_degree: int | None = None
    cfg_parallel: bool = False
    fsdp_dit: bool = False
    fsdp_text_encoder: bool = False

    def check(self) -> None:
        """Fail on options that cannot work or would be ignored, before anything loads."""
        if self.resident_blocks < 1:
            raise ValueError(f"--resident-blocks must be at least 1, got {self.resident_blocks}")
        check_device_name(self.device)
        for name in ("transformer_path", "transformer_high_path"):
            path = getattr(self, name)
            if path is not None and path.exists() and not (path.is_file() or path.is_dir()):
                raise ValueError(f"--{name.replace('_', '-')} {printable(path)}: not a regular file (nor a folder)")
        for name in ("lora_weight", "lora_high_weight", "cache_threshold", "cfg_skip_ratio"):
            value = getattr(self, name)
            for number in value if isinstance(value, list) else [value]:
                if number is not None and not math.isfinite(number):
                    raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {number}")
        check_runtime_options(self)

    def load_options(self) -> RuntimeOptions:
        """These options with the per-job ones (:data:`JOB_OPTION_FIELDS`) at their defaults: what a load needs."""
        defaults = RuntimeOptions()
        return dataclasses.replace(self, **{name: getattr(defaults, name) for name in JOB_OPTION_FIELDS})


# Options a loaded pipeline can take for one generation and give back after (LoRAs, step cache, RIFLEx, CFG
# schedule): a service keeps one loaded model and changes only these between jobs.
JOB_OPTION_FIELDS = (
    "lora_path",
    "lora_weight",
    "lora_high_path",
    "lora_high_weight",
    "cache",
    "cache_threshold",
    "teacache_indicator",
    "num_skip_start_steps",
    "cache_offload_residuals",
    "cfg_skip_ratio",
    "cfg_sequential",
    "riflex_k",
)


def check_device_name(device: str) -> None:
    """``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with N a GPU this torch sees, else a ValueError."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", device):
        raise ValueError(f"--device {printable(device)}: use cpu, cuda, cuda:N or auto")
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda:") and torch.cuda.is_available() and index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 and up")


def check_runtime_options(options: RuntimeOptions) -> None:
    """Fail on speed / memory / weight flags that cannot work or would be ignored, before loading."""
    if not 0.0 <= options.cfg_skip_ratio <= 1.0:
        raise ValueError(f"--cfg-skip-ratio is a share of the steps, between 0 and 1; got {options.cfg_skip_ratio}")
    if options.fp8 != "plain" and "qfloat8" not in options.gpu_memory_mode:
        raise ValueError(f"--fp8 {options.fp8} needs a *_qfloat8 --gpu-memory-mode (got {options.gpu_memory_mode})")
    if options.cache == "none":
        ignored = [name for name in CACHE_FLAGS if getattr(options, name) not in (None, False)]
        if ignored:
            raise ValueError(f"{_flag_names(ignored)}: no effect without --cache teacache or first-block")
    if options.num_skip_start_steps is not None and options.num_skip_start_steps < 0:
        raise ValueError(f"--num-skip-start-steps must be 0 or more, got {options.num_skip_start_steps}")
    if options.cache_threshold is not None and options.cache_threshold < 0:
        raise ValueError(f"--cache-threshold must be 0 or more, got {options.cache_threshold}")
    if options.riflex_k is not None and options.riflex_k < 1:
        raise ValueError(f"--riflex-k is a frame frequency index from 1, got {options.riflex_k}")
    for suffix in ("", "_high"):
        paths, weights = getattr(options, f"lora{suffix}_path") or [], getattr(options, f"lora{suffix}_weight")
        if weights and not paths:
            raise ValueError(f"{_flag_names([f'lora{suffix}_weight'])} without {_flag_names([f'lora{suffix}_path'])}")
        lora_weights(weights, len(paths))  # one weight for all, or one each
        for name in paths:
            resolve_lora(name)
        path = getattr(options, f"transformer{suffix}_path")
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{_flag_names([f'transformer{suffix}_path'])} {path}: no such file or folder")


def _flag_names(names: list[str]) -> str:
    """Option names as flags (``cache_threshold`` -> ``--cache-threshold``)."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def transformer_experts(pipe: Pipeline) -> dict[str, nn.Module | None]:
    """The transformers by the suffix of their flags: "" the (low-noise) one, "high" Wan2.2 A14B's high-noise one."""
    return {"": pipe.transformers[-1], "high": pipe.transformers[0] if len(pipe.transformers) > 1 else None}


def apply_weight_options(pipe: Pipeline, options: RuntimeOptions) -> dict:
    """Replace or adapt the transformers' weights as the flags ask (before sharding, offload and fp8).

    Per transformer, a ``--transformer-path`` file first, then each ``--lora-path`` merged at its
    ``--lora-weight``. With two experts (Wan2.2 A14B) these go to the low-noise one and the
    ``--*-high-*`` flags to the high-noise one, as in VideoX-Fun. Returns a summary for the sidecar.
    """
    experts = transformer_experts(pipe)
    applied: dict = {}
    for expert, transformer in experts.items():
        suffix = f"_{expert}" if expert else ""
        file, names = getattr(options, f"transformer{suffix}_path"), getattr(options, f"lora{suffix}_path") or []
        if transformer is None:
            if file is not None or names:
                raise ValueError("--transformer-high-path / --lora-high-path are for two-expert (Wan2.2 A14B) models")
            continue
        if file is not None:
            load_transformer_file(transformer, file)
            applied[f"transformer{suffix}_path"] = str(file)
        loras = merge_loras(transformer, names, getattr(options, f"lora{suffix}_weight"))
        if loras:
            applied[f"loras{suffix}"] = loras
    return applied


def merge_loras(transformer: nn.Module, names: list[str], given_weights: list[float] | None) -> list[dict]:
    """Merge LoRA files (paths or names under models/Personalized_Model) at their weights; returns the record."""
    from ..models.lora import merge_lora

    paths = [resolve_lora(name) for name in names]
    weights = lora_weights(given_weights, len(paths))
    for path, weight in zip(paths, weights, strict=True):
        modules = merge_lora(transformer, path, weight)
        logger.info("merged LoRA %s at weight %g into %d layers", path, weight, len(modules))
    return [{"path": str(path), "weight": weight} for path, weight in zip(paths, weights, strict=True)]


def merge_loras_restorably(pipe: Pipeline, options: RuntimeOptions) -> tuple[dict, Callable[[], None]]:
    """Merge the options' LoRAs into the loaded transformers; returns the sidecar record and a restore call.

    The layers a LoRA touches are copied to CPU memory first, and the restore call loads the copies
    back, so the weights afterwards are bit for bit those before (subtracting the update again would
    leave rounding behind, and later videos would differ from a fresh load's).
    """
    from ..models.lora import lora_target_modules

    experts = transformer_experts(pipe)
    saved: list[tuple[nn.Module, dict]] = []

    def restore() -> None:
        for module, state in reversed(saved):
            module.load_state_dict(state)
        saved.clear()

    applied: dict = {}
    try:
        for expert, transformer in experts.items():
            suffix = f"_{expert}" if expert else ""
            names = getattr(options, f"lora{suffix}_path") or []
            if not names:
                continue
            if transformer is None:
                raise ValueError("--lora-high-path is for two-expert (Wan2.2 A14B) models")
            targets = {module for name in names for module in lora_target_modules(transformer, resolve_lora(name))}
            for module_name in sorted(targets):
                module = transformer.get_submodule(module_name)
                saved.append((module, {k: v.to("cpu", copy=True) for k, v in module.state_dict().items()}))
            applied[f"loras{suffix}"] = merge_loras(transformer, names, getattr(options, f"lora{suffix}_weight"))
    except BaseException:
        restore()
        raise
    return applied, restore


LORA_FOLDER = Path("models/Personalized_Model")


def resolve_lora(name: str) -> Path:
    """A LoRA file path, or a file name under ``models/Personalized_Model/`` (VideoX-Fun's folder)."""
    for candidate in (Path(name), LORA_FOLDER / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--lora-path: no file {name} (nor {LORA_FOLDER / name})")


def lora_weights(given: list[float] | None, count: int) -> list[float]:
    """One weight per LoRA: none given = 1.0 each, one given = that for all, else one each."""
    if not given:
        return [1.0] * count
    if len(given) == 1:
        return given * count
    if len(given) != count:
        raise ValueError(f"{len(given)} --lora-weight values for {count} --lora-path files: give one or one each")
    return list(given)


def apply_runtime_options(
    pipe: Pipeline, options: RuntimeOptions, folder: Path, removers: list[Callable[[], None]] | None = None
) -> dict:
    """Attach what the flags ask for to a loaded pipeline; returns a summary for the sidecar JSON.

    ``removers`` collects one call per attached hook (memory-mode hooks, step caches, RIFLEx) that
    detaches it again, in the order attached (undo in reverse). Placement and fp8 storage stay.
    """
    removers = [] if removers is None else removers
    from .compile import compile_blocks
    from .offload import apply_memory_mode

    applied: dict = {"gpu_memory_mode": options.gpu_memory_mode, **run_settings(options)}
    if "qfloat8" in options.gpu_memory_mode and options.fp8 == "scaled":
        from .fp8 import fp8_stored_models, quantize_to_fp8

        for model in fp8_stored_models(pipe):
            quantize_to_fp8(model, scaled=True, per_channel=True)  # the mode then finds it quantised
    removers.append(apply_memory_mode(pipe, options.gpu_memory_mode, pipe.device, options.resident_blocks).remove)
    applied |= attach_step_features(pipe, options, folder, removers)
    if options.compile:
        for transformer in pipe.transformers:
            compile_blocks(transformer)
        applied["compile"] = True
    return applied


def attach_step_features(
    pipe: Pipeline, options: RuntimeOptions, folder: Path, removers: list[Callable[[], None]]
) -> dict:
    """Attach the step cache and RIFLEx the options ask for (each with its remover); returns their sidecar summary.

    These are the per-generation features: a service attaches them for one job and removes them after.
    """
    from .compile import apply_riflex, remove_riflex

    applied: dict = {}
    if options.cache != "none":
        threshold = (
            options.cache_threshold if options.cache_threshold is not None else DEFAULT_THRESHOLDS[options.cache]
        )
        two_experts = len(pipe.transformers) > 1
        for transformer in pipe.transformers:  # each expert skips by its own accumulated change
            removers.append(attach_cache(transformer, options.cache, threshold, options, folder, two_experts).remove)
        applied.update(cache=options.cache, cache_threshold=threshold, num_skip_start_steps=skip_start_steps(options))
        if options.cache == "teacache":
            indicator = teacache_indicator(options.teacache_indicator, two_experts, pipe.transformers[0])
            applied["teacache_indicator"] = indicator
    if options.riflex_k is not None:
        for transformer in pipe.transformers:
            apply_riflex(transformer, options.riflex_k)
            removers.append(functools.partial(remove_riflex, transformer))
        applied["riflex_k"] = options.riflex_k
    return applied


def run_settings(options: RuntimeOptions) -> dict:
    """The flags that change the video or how it was made, for the sidecar JSON (beyond the sampling ones)."""
    settings: dict = {"cfg_skip_ratio": options.cfg_skip_ratio, "cfg_sequential": options.cfg_sequential}
    if "qfloat8" in options.gpu_memory_mode:
        settings["fp8"] = options.fp8
    if options.gpu_memory_mode == "model_group_offload":
        settings["resident_blocks"] = options.resident_blocks
    return settings


def attach_cache(
    transformer: nn.Module,
    kind: str,
    threshold: float,
    options: RuntimeOptions,
    folder: Path,
    two_experts: bool = False,
) -> StepCache:
    """A TeaCache (coefficients from the folder's calibration or the published ones) or first-block cache."""
    common = {"num_skip_start_steps": skip_start_steps(options), "offload_residuals": options.cache_offload_residuals}
    if kind == "first-block":
        return FirstBlockCache(transformer, threshold, **common)
    indicator = teacache_indicator(options.teacache_indicator, two_experts, transformer)
    coefficients = coefficients_for(transformer, folder, indicator, two_experts)
    return TeaCache(transformer, coefficients, threshold, indicator=indicator, **common)


def skip_start_steps(options: RuntimeOptions) -> int:
    """``--num-skip-start-steps``, or its default."""
    return DEFAULT_SKIP_START_STEPS if options.num_skip_start_steps is None else options.num_skip_start_steps


def teacache_indicator(asked: str | None, two_experts: bool, model: nn.Module | None = None) -> str:
    """The indicator asked for, else the one the model's published coefficients were fitted on: its declared
    ``_cache_default_indicator``, else the time embedding (the time projection for two experts: Wan2.2 A14B)."""
    from .points import default_cache_indicator

    declared = default_cache_indicator(model) if model is not None else None
    return asked or declared or ("time_projection" if two_experts else "time_embedding")


def load_transformer_file(transformer: nn.Module, path: Path) -> None:
    """Replace a transformer's weights with those of a file or folder of the same architecture (fp8 too)."""
    from .fp8 import load_state_with_fp8

    if not path.exists():
        raise FileNotFoundError(f"--transformer-path {path}: no such file or folder")
    reader = getattr(type(transformer), "read_weights", None)  # each family's layouts and key names
    if reader is None:
        raise ValueError(f"--transformer-path: {type(transformer).__name__} declares no read_weights")
    load_state_with_fp8(transformer, reader(path), source=str(path))
