"""Weights and config files that are there but cannot be read: one clear error naming the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from model_helpers import random_model
from safetensors.torch import save_file

from videox_fun.models.loading import WeightsReadError, find_weight_files, read_state_dict
from videox_fun.models.lora import read_lora_file
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config

STATE = {"a": torch.arange(300, dtype=torch.float32), "b": torch.ones(2, 3)}


def _save(path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(STATE, str(path))
    else:
        torch.save(STATE, path)
    return path


def _damaged_copies(folder: Path, good: Path) -> dict[str, Path]:
    """A truncated, an empty and a text file with ``good``'s suffix."""
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"this is not a weights file\n" * 20}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}{good.suffix}"
        paths[name].write_bytes(content)
    return paths


def _deny_reading(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: by its mode, and for root (whom modes do not stop) by refusing to open it."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def refusing_open(self: Path, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing_open)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_damaged_weights_name_the_file_and_the_cause(tmp_path, suffix):
    good = _save(tmp_path / f"good{suffix}")
    assert read_state_dict(good).keys() == STATE.keys()
    expected = "truncated or not a safetensors file" if suffix == ".safetensors" else "truncated, corrupt"
    for name, path in _damaged_copies(tmp_path, good).items():
        with pytest.raises(WeightsReadError, match=rf"cannot read weights .*{name}\{suffix}: {expected}") as info:
            read_state_dict(path)
        assert "\n" not in str(info.value), name  # one line for the command line's "error: ..."
    assert issubclass(WeightsReadError, ValueError)  # what cli.run_parsed prints as one line


def test_legacy_pickle_pth_is_read(tmp_path):
    # torch.save before the zip format (torch < 1.6) cannot be memory-mapped: it is read whole.
    torch.save(STATE, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    state = read_state_dict(tmp_path / "old.pth")
    assert all(torch.equal(state[k], v) for k, v in STATE.items())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_unreadable_weights_are_not_reported_missing(tmp_path, monkeypatch, suffix):
    path = _save(tmp_path / f"weights{suffix}")
    _deny_reading(path, monkeypatch)
    with pytest.raises(WeightsReadError, match=rf"cannot read weights file .*weights\{suffix}: permission denied"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nothing\.safetensors"):
        read_state_dict(tmp_path / "nothing.safetensors")


def test_damaged_or_unreadable_lora_file(tmp_path, monkeypatch):
    good = _save(tmp_path / "lora.safetensors")
    assert read_lora_file(good)[0].keys() == STATE.keys()
    for name, path in _damaged_copies(tmp_path, good).items():
        with pytest.raises(WeightsReadError, match=rf"cannot read LoRA file .*{name}\.safetensors: truncated or not"):
            read_lora_file(path)
    # Pickled LoRA checkpoints read too (Wan2.2-Animate's relighting_lora.ckpt); a damaged one is one line.
    assert read_lora_file(_save(tmp_path / "lora.pth"))[0].keys() == STATE.keys()
    (tmp_path / "damaged.ckpt").write_bytes(b"not a pickle")
    with pytest.raises(WeightsReadError, match=r"cannot read weights .*damaged\.ckpt: truncated, corrupt"):
        read_lora_file(tmp_path / "damaged.ckpt")
    _deny_reading(good, monkeypatch)
    with pytest.raises(WeightsReadError, match=r"cannot read LoRA file .*lora\.safetensors: permission denied"):
        read_lora_file(good)


def test_truncated_transformer_and_broken_config_name_the_file(tmp_path):
    random_model(tiny_config("t2v")).save_original(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsReadError, match=r"diffusion_pytorch_model\.safetensors: truncated"):
        WanTransformer3DModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{bad json\n")
    with pytest.raises(ValueError, match=r"config\.json:1:2: transformer config is not valid JSON: Expecting property"):
        WanTransformer3DModel.from_pretrained(tmp_path)


def test_broken_shard_index_names_the_file(tmp_path):
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text('{"weight_map": ')
    with pytest.raises(ValueError, match=r"index\.json:1:16: shard index is not valid JSON"):
        find_weight_files(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=r"index\.json: a shard index needs a 'weight_map'"):
        find_weight_files(tmp_path)
