"""Writing files with the permissions an ordinary ``open(path, "w")`` gives.

Two things leave files at mode 0600 whatever the umask: safetensors >= 0.8 (its ``save_file``
writes a ``tempfile`` temporary and renames it) and any temporary made by ``tempfile``. Saved
weights then cannot be read by the other users of a shared model folder, or by a container
running as another user. The package's writers go through the helpers below instead.

They also write atomically: :func:`atomic_path` / :func:`atomic_dir` give a temporary name beside
the target that replaces it only once complete, so a crash never leaves half a file (or folder)
under the real name.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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


def _hidden_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path``: ``.{stem}.{random}.{tag}{suffix}``.

    Beside it so the final rename stays on one file system (atomic); hidden and tagged so a leftover
    of a killed process is told from real files; random so concurrent writers of one target do not
    share a temporary; with the suffix, because some writers (PyAV, PIL) pick the format by it.
    """
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.{tag}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` so that it appears only complete: write to the yielded temporary path instead.

    ``with atomic_path(target) as temporary: write(temporary)`` replaces ``target`` with the
    temporary when the block ends normally (through :func:`replace_file`, so the result has the
    mode a plain write gives: an existing target's, else ``0o666 & ~umask``). When the block
    raises, the temporary is removed, the target (if any) is left as it was and the error goes
    on. The temporary is a hidden name in the same folder that keeps the target's suffix. The
    folder must exist.
    """
    path = Path(path)
    temporary = _hidden_sibling(path, "partial")
    try:
        yield temporary
        replace_file(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary behind
        temporary.unlink(missing_ok=True)
        raise


def replace_dir(staging: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a finished folder ``staging`` onto ``path``, replacing a folder already there.

    A folder cannot be renamed onto a non-empty one, so an existing ``path`` is first renamed
    aside (a hidden ``.old`` name) and deleted after the swap: a crash leaves the old folder or
    the new one whole (or, between the two renames, the old one under the hidden name), never a
    half-deleted one under the real name, as deleting it in place could.
    """
    path = Path(path)
    old = _hidden_sibling(path, "old") if path.is_dir() and not path.is_symlink() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the old folder back: the caller sees the target unchanged
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the swap is done; a leftover here is only hidden garbage
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write the folder ``path`` so that it appears only complete: fill the yielded staging folder instead.

    The staging folder (hidden, beside ``path``, created empty with mode ``0o777 & ~umask``)
    replaces ``path`` through :func:`replace_dir` when the block ends normally, and is deleted
    when it raises, leaving ``path`` as it was. Files written inside keep the modes their writers
    gave them (see :func:`reset_tree_modes` for writers that make them 0600). The parent folder
    must exist.
    """
    path = Path(path)
    staging = _hidden_sibling(path, "partial")
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompts file."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts-file: file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-file {path} holds no prompt")
    return prompts


def check_output_location(output: Path | None, output_dir: Path | None, flag: str = "--output") -> None:
    """Fail now, not after the work, when the result could not be written where asked."""
    if output is not None:
        if output.is_dir():
            raise ValueError(f"{flag} {output} is a folder: name a file")
        check_writable_folder(output.parent, f"{flag} {output}")
    if output_dir is not None:
        check_writable_folder(output_dir, f"--output-dir {output_dir}")
    if output is None and output_dir is None:
        check_writable_folder(Path("samples"), "the default output folder samples/")


def check_writable_folder(folder: Path, flag: str) -> None:
    """``folder`` exists as a writable folder or can be created: its nearest existing ancestor is one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: no permission to write in {existing}")


def check_input_file(name: str, value: object) -> None:
    """A given input that is a path must exist and be readable as far as shows it is usable."""
    from .camera import is_trajectory_name, read_camera_trajectory
    from .video import read_video

    if not isinstance(value, (str, Path)):
        return  # tensors and arrays are the caller's
    if name == "camera" and is_trajectory_name(str(value)):
        return  # a built-in trajectory (pan_left, zoom_in...), not a file
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"--{name.replace('_', '-')}: file not found: {value}")
    try:
        if name == "camera":
            read_camera_trajectory(path)
        else:
            read_video(path, num_frames=1)  # a medium's first frame: undecodable files fail before loading
    except ValueError as err:  # VideoReadError and malformed trajectories
        raise ValueError(f"--{name.replace('_', '-')}: {err}") from err
