"""Fixtures of the node pack's tests: single files of the packaged tiny model in a ComfyUI-style models tree."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the pack is the repository's top-level ``comfyui`` package
    sys.path.insert(0, str(REPO))

TINY = "Wan2.1-Fun-Tiny-InP"
TINY_STEM = "wan2.1_fun_tiny_inp"  # the names the single-file example workflow uses
MODEL_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".sft"}  # what ComfyUI lists as model files


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI ``models/`` tree with the packaged tiny InP model as single files (fp8_scaled transformer too),
    as ``python -m comfyui.write_single_files Wan2.1-Fun-Tiny-InP models/ --fp8`` writes them, and a tiny Z-Image
    Fun control file in ``model_patches/`` (the Z-Image control workflow's)."""
    from comfyui.single_files import export_single_files
    from videox_fun.models.zimage.tiny import TINY_CONTROL_FILE, build_tiny_control_file

    root = tmp_path_factory.mktemp("comfy_models")
    export_single_files(TINY, root, TINY_STEM, fp8=True)
    (root / "model_patches").mkdir()
    build_tiny_control_file(root / "model_patches" / TINY_CONTROL_FILE, "2.1", seed=5)
    return root


def install_folder_paths(monkeypatch: pytest.MonkeyPatch, root: Path) -> types.ModuleType:
    """ComfyUI's ``folder_paths`` over a models tree, the part the pack calls (listing and finding model files):
    the host's file lookup, not a model. Names are paths under a kind's folder, as ComfyUI lists them."""
    module = types.ModuleType("folder_paths")
    module.models_dir = str(root)
    kinds = ("diffusion_models", "vae", "text_encoders", "clip_vision", "loras")
    module.folder_names_and_paths = {kind: ([str(root / kind)], MODEL_SUFFIXES) for kind in kinds}

    def get_filename_list(kind: str) -> list[str]:
        folder = root / kind
        files = folder.rglob("*") if folder.is_dir() else []
        return sorted(str(p.relative_to(folder)) for p in files if p.suffix in MODEL_SUFFIXES)

    def get_full_path(kind: str, name: str) -> str | None:
        path = root / kind / name
        return str(path) if path.is_file() else None

    module.get_filename_list = get_filename_list
    module.get_full_path = get_full_path
    module.get_temp_directory = lambda: str(root.parent / "comfy_temp")
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    return module


@pytest.fixture
def comfy_folders(comfy_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny single files, found by the loader nodes as inside ComfyUI (its folder_paths over the tree)."""
    install_folder_paths(monkeypatch, comfy_models)
    return comfy_models


@pytest.fixture
def folder_paths_over(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], types.ModuleType]:
    """Install ComfyUI's folder_paths over another models tree (for this test)."""
    return lambda root: install_folder_paths(monkeypatch, root)
