"""Model names -> folders.

A ``--model`` value is an existing folder, a folder name under ``models/Diffusion_Transformer``
(VideoX-Fun's layout; ``$VIDEOX_FUN_MODELS`` overrides it), or a built-in tiny model: the
packaged ones trained on the toy world (``assets/models/``, the defaults), or tiny configs of
the real architecture with seeded random weights, built on first use into a cache folder (their
videos are noise, and the CLI says so).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MODELS_DIR_ENV = "VIDEOX_FUN_MODELS"
CACHE_ENV = "VIDEOX_FUN_CACHE"

RANDOM_NOTE = "random weights (tiny config of the real architecture): the video is noise, not a trained result"
# name -> (the builder of its tiny folder, "module:function" taking (folder, variant, seed=, note=); the variant)
_WAN_TINY = "videox_fun.models.wan.tiny:build_tiny_model_folder"
_COGVIDEOX_TINY = "videox_fun.models.cogvideox.tiny:build_tiny_cogvideox_folder"
_FLUX_TINY = "videox_fun.models.flux.tiny:build_tiny_flux_folder"
_FLUX2_TINY = "videox_fun.models.flux2.tiny:build_tiny_flux2_folder"
_QWENIMAGE_TINY = "videox_fun.models.qwenimage.tiny:build_tiny_qwenimage_folder"
_ZIMAGE_TINY = "videox_fun.models.zimage.tiny:build_tiny_zimage_folder"
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "Wan2.1-Fun-Tiny-Random-InP": (_WAN_TINY, "inp"),
    "Wan2.1-Fun-Tiny-Random-Control": (_WAN_TINY, "control"),
    "Wan2.1-Fun-Tiny-Random-Camera": (_WAN_TINY, "camera"),
    "Wan2.1-VACE-Tiny-Random": (_WAN_TINY, "vace"),
    "Wan2.2-Animate-Tiny-Random": (_WAN_TINY, "animate"),
    "CogVideoX-Fun-Tiny-Random-InP": (_COGVIDEOX_TINY, "inp"),
    "CogVideoX-Fun-Tiny-Random-Control": (_COGVIDEOX_TINY, "control"),
    "Flux-Tiny-Random": (_FLUX_TINY, "dev"),
    "Flux-Schnell-Tiny-Random": (_FLUX_TINY, "schnell"),
    "Flux2-Tiny-Random": (_FLUX2_TINY, "dev"),
    "Flux2-Fun-Control-Tiny-Random": (_FLUX2_TINY, "dev-control"),
    "Qwen-Image-Tiny-Random": (_QWENIMAGE_TINY, "t2i"),
    "Qwen-Image-Edit-Tiny-Random": (_QWENIMAGE_TINY, "edit"),
    "Qwen-Image-Edit-2509-Tiny-Random": (_QWENIMAGE_TINY, "edit-plus"),
    "Qwen-Image-Fun-Control-Tiny-Random": (_QWENIMAGE_TINY, "t2i-control"),
    "Z-Image-Tiny-Random": (_ZIMAGE_TINY, "base"),
    "Z-Image-Turbo-Tiny-Random": (_ZIMAGE_TINY, "turbo"),
    "Z-Image-Turbo-Fun-Control-Tiny-Random": (_ZIMAGE_TINY, "turbo-control"),
}
# Trained on the toy world by `videox-fun toyworld train-all` (the CogVideoX one: `--family cogvideox`)
# and shipped inside the package; a name is found once its folder is in assets/models/.
PACKAGED_DIR = Path(__file__).parent / "assets" / "models"
PACKAGED_COGVIDEOX_MODEL = "CogVideoX-Fun-Tiny-InP"
PACKAGED_VACE_MODEL = "Wan2.1-VACE-Tiny"  # shares Wan2.1-Fun-Tiny-InP's VAE and text encoder
# 4-step DMD students of the InP and Control models (toyworld train-distill), sharing their VAE and text encoder.
PACKAGED_STUDENTS = ("Wan2.1-Fun-Tiny-InP-Distill", "Wan2.1-Fun-Tiny-Control-Distill")
PACKAGED_MODELS = (
    "Wan2.1-Fun-Tiny-InP",
    "Wan2.1-Fun-Tiny-Control",
    PACKAGED_COGVIDEOX_MODEL,
    PACKAGED_VACE_MODEL,
    *PACKAGED_STUDENTS,
)


def packaged_model(name: str) -> Path | None:
    """The folder of a packaged trained model, if this install ships it."""
    folder = PACKAGED_DIR / name
    return folder if (folder / "videox_fun.yaml").is_file() else None


def shipped_models() -> list[str]:
    """The packaged model names whose folders this install has."""
    return [name for name in PACKAGED_MODELS if packaged_model(name)]


DEFAULT_MODEL = "Wan2.1-Fun-Tiny-InP" if packaged_model("Wan2.1-Fun-Tiny-InP") else "Wan2.1-Fun-Tiny-Random-InP"
DEFAULT_CONTROL_MODEL = (
    "Wan2.1-Fun-Tiny-Control" if packaged_model("Wan2.1-Fun-Tiny-Control") else "Wan2.1-Fun-Tiny-Random-Control"
)
DEFAULT_CAMERA_MODEL = "Wan2.1-Fun-Tiny-Random-Camera"
# Reference images and task mixes: only VACE serves them (the trained toy model when packaged).
DEFAULT_VACE_MODEL = PACKAGED_VACE_MODEL if packaged_model(PACKAGED_VACE_MODEL) else "Wan2.1-VACE-Tiny-Random"
DEFAULT_ANIMATE_MODEL = "Wan2.2-Animate-Tiny-Random"  # a preprocessing folder: only Wan2.2-Animate reads it
DEFAULT_IMAGE_MODEL = "Flux-Tiny-Random"  # the image modes: only an image model serves them


def models_dir() -> Path:
    """Where released model folders are looked up by name."""
    return Path(os.environ.get(MODELS_DIR_ENV, "models/Diffusion_Transformer"))


def cache_dir() -> Path:
    """Where built-in tiny models are materialised."""
    default = Path.home() / ".cache" / "videox_fun"
    return Path(os.environ.get(CACHE_ENV, default))


def default_model_for_mode(mode: str | None) -> str:
    """The built-in model that serves a mode when the user names none."""
    if mode == "control":
        return DEFAULT_CONTROL_MODEL
    if mode == "camera":
        return DEFAULT_CAMERA_MODEL
    if mode in ("r2v", "vace"):
        return DEFAULT_VACE_MODEL
    if mode in ("animate", "replace"):
        return DEFAULT_ANIMATE_MODEL
    if mode in ("t2i", "i2i"):
        return DEFAULT_IMAGE_MODEL
    return DEFAULT_MODEL


def _materialise_builtin(name: str) -> Path:
    import importlib

    from .io.files import reset_tree_modes

    builder, variant = BUILTIN_MODELS[name]
    module, function = builder.split(":")
    build = getattr(importlib.import_module(module), function)

    target = cache_dir() / "models" / name
    if (target / "videox_fun.yaml").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a crash never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(staging, variant, seed=0, note=RANDOM_NOTE)
        reset_tree_modes(staging)  # mkdtemp made it 0700, save_pretrained's safetensors 0600
        if not target.exists():
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name_or_path: str | os.PathLike | None, mode: str | None = None) -> Path:
    """The folder of a model given by path or name (the mode's built-in model when None)."""
    name = str(name_or_path) if name_or_path is not None else default_model_for_mode(mode)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if (models_dir() / name).is_dir():
        return models_dir() / name
    if packaged_model(name):
        return packaged_model(name)
    if name in BUILTIN_MODELS:
        return _materialise_builtin(name)
    raise FileNotFoundError(
        f"model {name!r} not found: not a folder, not in {models_dir()}, and not a built-in "
        f"({', '.join([*shipped_models(), *BUILTIN_MODELS])})"
    )
