"""What the node pack takes from ComfyUI when it runs inside it, and plain stand-ins when it does not.

ComfyUI's modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) are imported
lazily and optionally, so the node classes import (and the contract tests run) without ComfyUI.
"""

from __future__ import annotations

import functools
import importlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("videox_fun.comfyui")

# Where VideoX-Fun's users keep whole model releases, under ComfyUI's models/ folder.
MODEL_FOLDER_NAMES = ("Fun_Models", "CogVideoX_Fun", "VideoX_Fun", "Wan-AI")
# The folder_paths key they are registered under (one key, several folders).
FUN_MODELS_KEY = "Fun_Models"


def comfy_module(name: str) -> ModuleType | None:
    """A ComfyUI module when this process is ComfyUI, else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def register_model_folders() -> None:
    """Register ``models/Fun_Models`` (and VideoX-Fun's other release folders) with ComfyUI's ``folder_paths``."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return
    for name in MODEL_FOLDER_NAMES:
        folder_paths.add_model_folder_path(FUN_MODELS_KEY, str(Path(folder_paths.models_dir) / name))


def model_search_folders() -> list[Path]:
    """The folders whose subfolders are model releases: ComfyUI's registered ones, then the library's own."""
    from videox_fun.registry import models_dir

    folders: list[Path] = []
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None and FUN_MODELS_KEY in folder_paths.folder_names_and_paths:
        folders += [Path(p) for p in folder_paths.get_folder_paths(FUN_MODELS_KEY)]
    folders.append(models_dir())  # models/Diffusion_Transformer (or $VIDEOX_FUN_MODELS), as the CLI
    return folders


def lora_names() -> list[str]:
    """LoRA files in ComfyUI's ``loras/`` folder (none outside ComfyUI)."""
    folder_paths = comfy_module("folder_paths")
    return list(folder_paths.get_filename_list("loras")) if folder_paths is not None else []


def lora_path(name: str) -> str:
    """The full path of a LoRA by its name in ``loras/`` (or a path, outside ComfyUI)."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return name
    found = folder_paths.get_full_path("loras", name)
    if found is None:
        folders = folder_paths.get_folder_paths("loras")
        raise FileNotFoundError(f"LoRA {name!r} is not in ComfyUI's loras folder ({', '.join(folders)})")
    return found


def model_file_names(*kinds: str) -> list[str]:
    """The files in ComfyUI's model folders of ``kinds`` (``diffusion_models``, ``vae``...); none outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    names: list[str] = []
    for kind in kinds:
        try:
            names += folder_paths.get_filename_list(kind)
        except KeyError:  # a ComfyUI older than the folder kind (text_encoders was clip): it lists nothing
            logger.warning("videox_fun: this ComfyUI has no %s model folder", kind)
    return list(dict.fromkeys(names))


def model_file_path(name: str, *kinds: str) -> Path:
    """A file by its name in ComfyUI's model folders of ``kinds``, the first kind that has it (a path, outside
    ComfyUI)."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return Path(name)
    for kind in kinds:
        found = folder_paths.get_full_path(kind, name)
        if found is not None:
            return Path(found)
    folders = [folder for kind in kinds for folder in folder_paths.folder_names_and_paths.get(kind, ([],))[0]]
    raise FileNotFoundError(f"{name!r} is not in ComfyUI's {' / '.join(kinds)} folders ({', '.join(folders)})")


def temp_folder() -> Path:
    """A folder for files the nodes hand to the library (camera trajectories): ComfyUI's temp folder."""
    folder_paths = comfy_module("folder_paths")
    base = Path(folder_paths.get_temp_directory()) if folder_paths is not None else Path(tempfile.gettempdir())
    folder = base / "videox_fun"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def torch_device() -> str:
    """ComfyUI's device (it honours ``--cpu``), else the library's choice."""
    mm = comfy_module("comfy.model_management")
    return str(mm.get_torch_device()) if mm is not None else "auto"


def free_cache() -> None:
    """Ask ComfyUI to release cached GPU memory (after a pipeline is dropped)."""
    mm = comfy_module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()


def on_unload_all_models(release: Callable[[], None]) -> None:
    """Call ``release`` whenever ComfyUI unloads all its models, so the pipeline the pack holds goes too.

    That is ``POST /free`` with ``unload_models`` or ``free_memory`` (the page's "Unload Models" / "Free model
    and node cache"), and any node that calls ``comfy.model_management.unload_all_models()``. ComfyUI offers no
    hook for it, so that function is wrapped: ComfyUI's own runs first, unchanged, then ``release``. Wrapping
    again (the pack imported twice) replaces the earlier wrapper instead of stacking a second one.
    """
    mm = comfy_module("comfy.model_management")
    if mm is None:
        return
    original = mm.unload_all_models
    original = getattr(original, "__videox_fun_original__", original)

    @functools.wraps(original)
    def unload_all_models(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        try:
            release()
        except Exception:  # ComfyUI's unload must not fail because of the pack
            logger.exception("videox_fun: releasing the held pipeline failed")
        return result

    unload_all_models.__videox_fun_original__ = original  # type: ignore[attr-defined]
    mm.unload_all_models = unload_all_models


def step_reporter(node_id: str | None = None) -> Callable[[int, int], None]:
    """An ``on_step(step, total)`` that drives ComfyUI's progress bar and stops the run when it is interrupted.

    ``throw_exception_if_processing_interrupted`` raises ComfyUI's own InterruptProcessingException, so a
    ``POST /interrupt`` ends the run after the step in progress, and ComfyUI reports it as interrupted.
    """
    utils = comfy_module("comfy.utils")
    mm = comfy_module("comfy.model_management")
    bars: dict[int, object] = {}

    def on_step(step: int, total: int) -> None:
        if mm is not None:
            try:
                mm.throw_exception_if_processing_interrupted()
            except Exception:  # ComfyUI's InterruptProcessingException: say where the run stopped
                logger.info("videox_fun: interrupted after step %d of %d", step, total)
                raise
        if utils is not None:
            bar = bars.setdefault(total, utils.ProgressBar(total, node_id=node_id))
            bar.update_absolute(step, total)

    return on_step


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when a ``POST /interrupt`` came (no-op outside ComfyUI)."""
    mm = comfy_module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
