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

import errno
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


def place_new_file(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move a finished ``temporary`` to ``path`` only if nothing has that name: else ``FileExistsError``.

    A hard link is the atomic "create if absent" of a whole file (a check then a rename could
    replace a file that appeared in between); where the file system has no hard links, a check
    and a rename it is.
    """
    taken = f"{printable(path)} exists: this run does not replace a file it did not write"
    os.chmod(temporary, 0o666 & ~current_umask())
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(taken) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise FileExistsError(taken) from None
        os.replace(temporary, path)
        return Path(path)
    os.unlink(temporary)
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Write ``path`` so that it appears only complete: write to the yielded temporary path instead.

    ``with atomic_path(target) as temporary: write(temporary)`` replaces ``target`` with the
    temporary when the block ends normally (through :func:`replace_file`, so the result has the
    mode a plain write gives: an existing target's, else ``0o666 & ~umask``). With ``overwrite``
    False an existing ``target`` (a symlink too) is never replaced: the block's result is put in
    place only if the name is still free (:func:`place_new_file`), else ``FileExistsError``. When
    the block raises, the temporary is removed, the target (if any) is left as it was and the
    error goes on. The temporary is a hidden name in the same folder that keeps the target's
    suffix. The folder must exist.
    """
    path = Path(path)
    temporary = _hidden_sibling(path, "partial")
    try:
        yield temporary
        if overwrite:
            replace_file(temporary, path)
        else:
            place_new_file(temporary, path)
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


def printable(path: str | os.PathLike) -> str:
    """A path as text any terminal can print: bytes that are not UTF-8 shown as ``\\xff`` escapes.

    Python hands such bytes of file names and arguments over as lone surrogates, which a strict
    UTF-8 stdout refuses to print.
    """
    text = os.fspath(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (given as text, not from the OS)
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def why_missing(path: Path) -> str:
    """Why ``path`` cannot be opened, in words: a symlink loop, a broken symlink, or no such file."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop (the link leads back to itself)"
        if path.is_symlink():
            return f"a broken symlink (to {printable(os.readlink(path))}, which does not exist)"
        if err.errno == errno.ENOTDIR:
            return "file not found (a part of the path is a file, not a folder)"
        if err.errno == errno.EACCES:
            return "no permission to look into its folder"
    return "file not found"


def read_text_file(path: Path, flag: str) -> str:
    """The UTF-8 text of a file a flag names (a leading byte order mark dropped); fails naming the file."""
    if path.exists() and not path.is_file():  # a folder, a FIFO (reading it would wait), a device
        raise ValueError(f"{flag} {printable(path)}: not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {printable(path)}: {why_missing(path)}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # editors on Windows start UTF-8 files with a BOM: not part of the text
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{flag} {printable(path)}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompts file (UTF-8; a byte order mark at its start is not part of the first prompt)."""
    text = read_text_file(path, "--prompts-file")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-file {printable(path)} holds no prompt")
    return prompts


def check_output_target(path: Path, flag: str, overwrite: bool = False) -> None:
    """Refuse to write ``path`` when that would replace something the run did not write.

    A symbolic link or anything but a regular file is always refused (writing through a link to
    ``/dev/full`` or replacing a device is never what was meant); an existing regular file only
    when ``overwrite`` is False. ``flag`` starts the message (``--output clip.mp4``).
    """
    if path.is_symlink():
        raise ValueError(
            f"{flag}: {printable(path)} is a symbolic link: a run never writes through a link nor replaces one; "
            "name the file itself"
        )
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise ValueError(f"{flag}: {printable(path)} exists and is not a regular file: name a new file")
    if not overwrite:
        raise FileExistsError(f"{flag}: {printable(path)} exists: pass --overwrite to replace it, or name another file")


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
