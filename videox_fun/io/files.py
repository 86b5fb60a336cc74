"""Writing files with the permissions an ordinary ``open(path, "w")`` gives.

Two things leave files at mode 0600 whatever the umask: safetensors >= 0.8 (its ``save_file``
writes a ``tempfile`` temporary and renames it) and any temporary made by ``tempfile``. Saved
weights then cannot be read by the other users of a shared model folder, or by a container
running as another user. The package's writers go through the helpers below instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import torch


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        # Linux >= 4.7 reports it; setting and restoring it instead would briefly expose other threads' files.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode_for(path: str | os.PathLike) -> int:
    """The permission bits ``open(path, "w")`` leaves ``path`` with: its own if it exists, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def replace_file(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a finished ``temporary`` onto ``path`` (atomically), with the mode a plain write of ``path`` gives."""
    os.chmod(temporary, file_mode_for(path))
    os.replace(temporary, path)
    return Path(path)


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` (atomic itself), leaving the file with ordinary permissions, not 0600."""
    from safetensors.torch import save_file

    mode = file_mode_for(path)  # before the save, which replaces an existing file
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(path, mode)
    return Path(path)


def reset_tree_modes(folder: str | os.PathLike) -> Path:
    """Give a freshly written folder and everything under it ordinary modes (0o777 / 0o666 & ~umask).

    For trees written by others: diffusers' / transformers' ``save_pretrained`` (safetensors
    inside, 0600) or a ``tempfile.mkdtemp`` staging folder (0700) renamed into place.
    """
    umask = current_umask()
    root = Path(folder)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    return root
