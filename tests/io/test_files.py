"""Written files get the permissions of an ordinary ``open(path, "w")``, not tempfile's / safetensors' 0600."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import seeded_transformer

from videox_fun.io.camera import static, write_camera_trajectory
from videox_fun.io.files import atomic_dir, atomic_path, replace_dir, save_safetensors
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
    return seeded_transformer(tiny_config("t2v", text_dim=32))


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


# --------------------------------------------------------------------------------------------
# atomic_path / atomic_dir: the target appears only complete
# --------------------------------------------------------------------------------------------
class WriterError(Exception):
    pass


def test_atomic_path_writes_beside_the_target_under_a_hidden_name_with_its_suffix(tmp_path):
    target = tmp_path / "clip.final.mp4"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path  # same folder: the final rename is atomic
        assert temporary.name.startswith(".") and temporary.suffix == ".mp4"  # PyAV / PIL pick the format by it
        temporary.write_bytes(b"half")
        assert not target.exists()  # nothing under the real name until the block ends
    assert target.read_bytes() == b"half"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second  # concurrent writers of one target do not share a temporary
        first.touch()
        second.touch()


@pytest.mark.parametrize("error", [WriterError, KeyboardInterrupt])
def test_atomic_path_failing_writer_leaves_no_target_and_no_temporary(tmp_path, error):
    with pytest.raises(error), atomic_path(tmp_path / "out.safetensors") as temporary:
        temporary.write_bytes(b"half a file")
        raise error("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_an_existing_target_on_failure_and_replaces_it_on_success(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(WriterError), atomic_path(target) as temporary:
        temporary.write_text("new but incomplete")
        raise WriterError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    with atomic_path(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_atomic_path_gives_the_modes_replace_file_gives(tmp_path):
    previous = os.umask(0o027)
    try:
        target = tmp_path / "weights.pth"
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"x")
            os.chmod(temporary, 0o600)  # as tempfile / safetensors leave it
        assert mode(target) == 0o640  # a new file: 0o666 & ~umask
        os.chmod(target, 0o664)
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"y")
            os.chmod(temporary, 0o600)
        assert mode(target) == 0o664  # an overwrite keeps the file's mode, as open(path, "w") does
    finally:
        os.umask(previous)


def test_atomic_path_without_a_written_temporary_fails_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never.txt"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_appears_only_complete_and_replaces_an_existing_folder(umask_022, tmp_path):
    target = tmp_path / "checkpoint-latest"
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".")
        assert mode(staging) == 0o755  # not mkdtemp's 0700
        (staging / "a.txt").write_text("first")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "first"
    with atomic_dir(target) as staging:
        (staging / "b.txt").write_text("second")
        assert (target / "a.txt").is_file()  # the old folder is there until the new one is whole
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-latest"]  # no staging or old folder left


def test_atomic_dir_failing_writer_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "vae"
    with pytest.raises(WriterError), atomic_dir(target) as staging:
        (staging / "config.json").write_text("{}")
        raise WriterError
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(WriterError), atomic_dir(target) as staging:
        (staging / "config.json").write_text("new")
        raise WriterError
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path):
    target = tmp_path / "checkpoint-3"
    target.mkdir()
    (target / "state.json").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / ".checkpoint-3.tmp", target)  # no staging folder to move in
    assert (target / "state.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]


def test_a_leftover_temporary_is_not_taken_for_the_vae_file(tmp_path):
    # A save_original killed midway leaves its hidden temporary (same suffix) beside the file.
    from videox_fun.models.wan.vae import WanVAE, tiny_vae_config

    vae = WanVAE.from_config(tiny_vae_config())
    path = vae.save_original(tmp_path / "my_vae.safetensors")
    (tmp_path / ".my_vae.0123abcd.partial.safetensors").write_bytes(b"half a file")
    loaded = WanVAE.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values(), strict=True))
    assert path.is_file()
