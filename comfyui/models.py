"""Model choice, loading and generation for the nodes: thin over :mod:`videox_fun.api`.

A loader node returns :class:`FunModels`: which folder, recognised by its family from its config
files (or, from CombineWanPipeline, which single files, recognised from their headers), and the load
options. The option nodes (LoRA, compile, attention, step cache) return a changed copy. The pipeline
itself is loaded by the first sampler that needs it and kept (one at a time, as ComfyUI keeps one
model in memory) until a sampler asks for a different one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videox_fun.api import GenerationRequest, LoadedPipeline, RuntimeOptions, load_pipeline
from videox_fun.families import Recognised, recognise
from videox_fun.models.wan.single_files import WanParts
from videox_fun.registry import BUILTIN_MODELS, resolve_model, shipped_models

from . import host
from .single_files import recognise_parts

logger = logging.getLogger("videox_fun.comfyui")

# VideoX-Fun's precision widget (plus fp32, the CPU's) -> the library's dtype names.
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# VideoX-Fun's model_type widget -> the modes a checkpoint of that type serves (any one of them).
MODEL_TYPES = {"Inpaint": ("inpaint", "i2v"), "Control": ("control", "camera")}
# CombineWanPipeline's model_type, as VideoX-Fun's: Inpaint joins any model without control (a T2V one too).
COMBINE_MODEL_TYPES = {"Inpaint": ("t2v", "i2v", "inpaint"), "Control": ("control", "camera")}
# VideoX-Fun's FunAttention choices -> the library's attention backends.
ATTENTION_TYPES = {"flash": "flash_attn", "sage": "sage", "torch": "sdpa"}


@dataclass(frozen=True)
class StepCache:
    """A step cache for the samplers (the FunStepCache node, or a sampler's TeaCache widgets)."""

    kind: str = "teacache"
    threshold: float = 0.1
    num_skip_start_steps: int = 5
    offload: bool = False


@dataclass(frozen=True)
class FunModels:
    """What a sampler needs to get its pipeline: a recognised model folder and how to load and run it."""

    recognised: Recognised
    options: RuntimeOptions  # load options only (no per-job features)
    loras: tuple[tuple[str, float], ...] = ()  # (path, strength): the low-noise expert's of a two-expert model
    loras_high: tuple[tuple[str, float], ...] = ()  # the high-noise expert's (Wan2.2 A14B; LoadWan2_2Lora)
    step_cache: StepCache | None = None  # set by FunStepCache: overrides the sampler's TeaCache widgets
    compile_cache_size_limit: int | None = None
    # A Fun control file chosen by a Load*ControlNetInPipeline node (image families): the control samplers pass it
    # to the library as the ``control_path`` setting. Part of the held pipeline's key, so a control model loaded
    # for one chain never steers another's run.
    control_path: str | None = None

    @property
    def family(self) -> str:
        """The family name (``wan``, ``cogvideox``...)."""
        return self.recognised.family.name

    def replace(self, **changes: Any) -> FunModels:
        """A copy with ``changes`` (the chainable option nodes never change their input)."""
        return dataclasses.replace(self, **changes)

    def with_load_options(self, **changes: Any) -> FunModels:
        """A copy whose load options have ``changes``."""
        return self.replace(options=dataclasses.replace(self.options, **changes))


@dataclass
class _Held:
    key: tuple[str, ...] | None = None
    loaded: LoadedPipeline | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_HELD = _Held()


def model_choices(known: tuple[str, ...], prefixes: tuple[str, ...], family: str) -> list[str]:
    """The names a loader offers: releases on disk of ``family``, the packaged / built-in tiny models whose
    names start with ``prefixes``, then VideoX-Fun's release names (kept so its workflows validate; they load
    once their folders are in ``models/Fun_Models/``)."""
    found = [name for name in releases_on_disk() if folder_family(resolve_name(name)) == family]
    tiny = [name for name in (*shipped_models(), *BUILTIN_MODELS) if name.startswith(prefixes)]
    return list(dict.fromkeys([*found, *tiny, *known]))


def releases_on_disk() -> list[str]:
    """Subfolder names of the model folders (``models/Fun_Models/<release>`` and the rest)."""
    names: list[str] = []
    for folder in host.model_search_folders():
        if folder.is_dir():
            names += sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return names


def folder_family(folder: Path | None) -> str | None:
    """The family that recognises a folder (None when none does: listing must never fail)."""
    if folder is None:
        return None
    try:
        return recognise(folder).family.name
    except (OSError, ValueError) as err:
        logger.debug("%s: not a model folder (%s)", folder, err)
        return None


def resolve_name(name: str) -> Path | None:
    """A model name's folder: a release folder of ComfyUI's model folders first, then the library's names."""
    for folder in host.model_search_folders():
        if (folder / name).is_dir():
            return folder / name
    return None


def model_folder(name: str) -> Path:
    """The folder of a model name, or a clear error that says where to put it."""
    found = resolve_name(name)
    if found is not None:
        return found
    try:
        return resolve_model(name)
    except FileNotFoundError as err:
        places = ", ".join(str(f) for f in host.model_search_folders())
        raise FileNotFoundError(f"model {name!r} not found: put its folder in one of {places} ({err})") from err


def load_fun_models(
    name: str, family: str, memory_mode: str, precision: str, config: str | None = None, model_type: str | None = None
) -> FunModels:
    """Recognise a model folder (config files only, no weights) and check it is what the loader node says."""
    folder = model_folder(name)
    own_config = (folder / "videox_fun.yaml").is_file()  # our folders carry their config: it always wins
    config_path = None if own_config or config in (None, "auto") else config_file(config)
    recognised = recognise(folder, config_path)
    if recognised.family.name != family:
        raise ValueError(f"{name} is a {recognised.family.name} model: load it with that family's loader node")
    if model_type is not None:
        check_model_type(name, recognised, model_type, MODEL_TYPES)
    options = RuntimeOptions(
        device=host.torch_device(), dtype=PRECISIONS[precision], gpu_memory_mode=memory_mode, config=config_path
    )
    options.check()
    return FunModels(recognised, options)


def check_model_type(name: str, recognised: Recognised, model_type: str, types: dict[str, tuple[str, ...]]) -> None:
    """Fail when a model serves none of the modes its ``model_type`` widget stands for (``types``), naming the
    value that fits."""
    if set(types[model_type]) & set(recognised.modes):
        return
    fitting = next((t for t, modes in types.items() if set(modes) & set(recognised.modes)), "Inpaint")
    raise ValueError(
        f"model_type {model_type}: {name} is of the {recognised.variant} variant, serving "
        f"{', '.join(recognised.modes)}; choose model_type {fitting}"
    )


def load_single_file_models(parts: WanParts, memory_mode: str, model_type: str) -> FunModels:
    """A Wan model joined from single files (CombineWanPipeline): recognised from the files' headers, loaded
    by the first sampler that needs it, in the transformer's precision."""
    recognised = recognise_parts(parts)
    check_model_type(parts.transformer.path.name, recognised, model_type, COMBINE_MODEL_TYPES)
    options = RuntimeOptions(device=host.torch_device(), dtype=parts.transformer.precision, gpu_memory_mode=memory_mode)
    options.check()
    return FunModels(recognised, options)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"  # the repository's config/ (VideoX-Fun's names)


# VideoX-Fun's config names that the repository's config/ spells otherwise (kept so its workflows validate).
CONFIG_ALIASES = {"wan2.2/wan_civitai_5b.yaml": "wan2.2/wan_civitai_ti2v_5b.yaml"}


def config_choices() -> list[str]:
    """``auto`` and the model YAMLs under the repository's ``config/`` by VideoX-Fun's names (``wan2.1/...``)."""
    found = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name != "accelerate")
    return ["auto", *found, *(alias for alias, name in CONFIG_ALIASES.items() if name in found)]


def config_file(name: str) -> Path:
    """A config widget value as a file."""
    path = CONFIG_DIR / CONFIG_ALIASES.get(name, name)
    if not path.is_file():
        raise FileNotFoundError(f"config {name}: no such file under {CONFIG_DIR}")
    return path


def held_pipeline(models: FunModels) -> LoadedPipeline:
    """The loaded pipeline for ``models``, loading it (and dropping the one held before) when it differs."""
    # The family's repr names the files of a model joined from single files (one folder may hold several).
    key = (str(models.recognised.folder.resolve()), repr(models.options), repr(models.recognised.family),
           str(models.control_path))  # fmt: skip
    if _HELD.key == key and _HELD.loaded is not None:
        return _HELD.loaded
    release_pipeline()
    if models.compile_cache_size_limit is not None:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = models.compile_cache_size_limit
    _HELD.loaded = load_pipeline(models.recognised.folder, models.options, recognised=models.recognised)
    _HELD.key = key
    return _HELD.loaded


def release_pipeline() -> None:
    """Close the held pipeline (its hooks removed, its weights dropped) and let ComfyUI free the memory."""
    if _HELD.loaded is not None:
        logger.info("videox_fun: released the held pipeline (%s)", _HELD.loaded.folder.name)
        _HELD.loaded.close()
    _HELD.key, _HELD.loaded = None, None
    host.free_cache()


def drop_held_pipeline() -> None:
    """Release the held pipeline once no run uses it (what ComfyUI's unload of all models calls)."""
    with _HELD.lock:
        release_pipeline()


def job_options(models: FunModels, loaded: LoadedPipeline, step_cache: StepCache | None, riflex_k: int,
                cfg_skip_ratio: float) -> RuntimeOptions:  # fmt: skip
    """The per-job options of one sampler run: the chain's LoRAs, a step cache, RIFLEx, CFG skip."""
    loras_high = models.loras_high
    if loras_high and len(loaded.pipe.transformers) == 1:  # as VideoX-Fun's nodes: no high-noise expert, no LoRA
        logger.warning("high-noise LoRAs ignored: %s has one transformer, not two experts", loaded.folder.name)
        loras_high = ()
    cache = models.step_cache or step_cache
    if cache is not None and cache.kind == "teacache" and not has_teacache_coefficients(loaded):
        logger.warning("TeaCache off: no coefficients for %s (run `videox-fun calibrate-cache`)", loaded.folder.name)
        cache = None
    cache_fields: dict[str, Any] = {}
    if cache is not None and cache.kind != "none":
        cache_fields = {
            "cache": cache.kind,
            "cache_threshold": cache.threshold,
            "num_skip_start_steps": cache.num_skip_start_steps,
            "cache_offload_residuals": cache.offload,
        }
    return dataclasses.replace(
        models.options,
        lora_path=[path for path, _ in models.loras],
        lora_weight=[weight for _, weight in models.loras] or None,
        lora_high_path=[path for path, _ in loras_high],
        lora_high_weight=[weight for _, weight in loras_high] or None,
        riflex_k=riflex_k if riflex_k > 0 else None,
        cfg_skip_ratio=cfg_skip_ratio,
        **cache_fields,
    )


def has_teacache_coefficients(loaded: LoadedPipeline) -> bool:
    """Whether TeaCache can run on this model: its folder's calibration or its architecture's published set."""
    from videox_fun.runtime.cache import coefficients_for
    from videox_fun.runtime.options import teacache_indicator

    two = len(loaded.pipe.transformers) > 1
    try:
        model = loaded.pipe.transformers[-1]  # its declared indicator: Qwen-Image's set is on its modulated input
        coefficients_for(model, loaded.folder, teacache_indicator(None, two, model), two)
    except ValueError:
        return False
    return True


def generate(
    models: FunModels,
    request: GenerationRequest,
    step_cache: StepCache | None = None,
    riflex_k: int = 0,
    cfg_skip_ratio: float = 0.0,
    on_step: Callable[[int, int], None] | None = None,
    boundary: float | None = None,
) -> Any:
    """One generation with the held pipeline and this run's per-job options; returns the library's result.

    ``boundary``: the Wan2.2 samplers' widget, where a two-expert model hands over to its low-noise expert.
    """
    from videox_fun.models.attention import attention_backend

    with _HELD.lock:  # one run at a time on the held pipeline (ComfyUI runs one prompt at a time anyway)
        host.check_interrupted()
        loaded = held_pipeline(models)
        options = job_options(models, loaded, step_cache, riflex_k, cfg_skip_ratio)
        # The attention backend is process-wide in the library: set it for this run (FunAttention may change it).
        with (
            attention_backend(models.options.attention),
            loaded.job_options(options),
            expert_boundary(loaded, boundary),
        ):
            return loaded.generate(request, progress=False, on_step=on_step or host.step_reporter())


@contextmanager
def expert_boundary(loaded: LoadedPipeline, boundary: float | None) -> Iterator[None]:
    """Run with the experts switching at ``boundary`` (a share of the 1000 train timesteps), then put back the
    folder's own: the library reads it from the model config, VideoX-Fun's Wan2.2 samplers per run. A model
    with one transformer has no boundary and ignores the widget, as VideoX-Fun's nodes do."""
    pipe = loaded.pipe
    if boundary is None or len(pipe.transformers) == 1:
        yield
        return
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must be in [0, 1], got {boundary}")
    folder_boundary, pipe.boundary = pipe.boundary, boundary
    try:
        yield
    finally:
        pipe.boundary = folder_boundary
