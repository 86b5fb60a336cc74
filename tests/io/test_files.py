"""Written files get the permissions of an ordinary ``open(path, "w")``, not tempfile's / safetensors' 0600."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from videox_fun.io.camera import static, write_camera_trajectory
from videox_fun.io.files import save_safetensors
from videox_fun.io.video import write_video
from videox_fun.models.loading import save_sharded
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config
from videox_fun.registry import resolve_model
from videox_fun.training.lora import add_lora, save_lora_file

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tiny_model() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel.from_config(tiny_config("t2v", text_dim=32)).eval()


@pytest.mark.parametrize(("name", "frames"), [("clip.mp4", 3), ("clip.gif", 3), ("still.png", 1)])
def test_write_video_gives_an_ordinary_file(umask_022, tmp_path, name, frames):
    path = write_video(np.zeros((frames, 16, 16, 3), np.uint8), tmp_path / name)
    assert mode(path) == 0o644


def test_camera_trajectory_gives_an_ordinary_file(umask_022, tmp_path):
    assert mode(write_camera_trajectory(static(3), tmp_path / "cam.txt")) == 0o644


def test_lora_file_gives_an_ordinary_file(umask_022, tmp_path):
    model = tiny_model()
    add_lora(model, rank=2, alpha=2.0, targets=("q",))
    path = save_lora_file(model.state_dict(), tmp_path / "out" / "lora.safetensors", rank=2, alpha=2.0)
    assert mode(path) == 0o644


def test_transformer_save_original_gives_ordinary_files(umask_022, tmp_path):
    # The full fine-tune's output (output_dir/transformer) is written this way.
    tiny_model().save_original(tmp_path / "single")
    tiny_model().save_original(tmp_path / "sharded", max_shard_bytes=20_000)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    for folder in (tmp_path / "single", tmp_path / "sharded"):
        files = list(folder.iterdir())  # config.json, weights (and the shard index)
        assert {f.name: mode(f) for f in files} == {f.name: 0o644 for f in files}


def test_save_sharded_follows_the_umask_and_keeps_an_existing_files_mode(tmp_path):
    state = {"w": torch.zeros(4)}
    previous = os.umask(0o027)
    try:
        (path,) = save_sharded(state, tmp_path)
        assert mode(path) == 0o640  # the umask is honoured, not a fixed 0644
        os.chmod(path, 0o664)
        save_safetensors(state, path)
        assert mode(path) == 0o664  # an overwrite keeps the file's mode, as open(path, "w") does
    finally:
        os.umask(previous)


def test_builtin_model_folder_is_readable_by_others(umask_022, tmp_path, monkeypatch):
    # Built in a mkdtemp (0700) folder with diffusers' save_pretrained (0600 safetensors), then renamed.
    monkeypatch.setenv("VIDEOX_FUN_CACHE", str(tmp_path / "cache"))
    folder = resolve_model("Wan2.1-Fun-Tiny-Random-InP")
    assert mode(folder) == 0o755
    for path in folder.rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.parametrize("name", ["Wan2.1_VAE.pth", "vae.safetensors"])
def test_vae_save_original_and_pretrained_give_ordinary_files(umask_022, tmp_path, name):
    from videox_fun.models.wan.vae import WanVAE, tiny_vae_config

    vae = WanVAE.from_config(tiny_vae_config())
    assert mode(vae.save_original(tmp_path / "original" / name)) == 0o644
    folder = vae.save_pretrained(tmp_path / "diffusers")
    assert all(mode(path) == 0o644 for path in folder.iterdir())
