"""Training metadata in VideoX-Fun's format: a JSON list, JSON Lines or CSV of entries.

An entry::

    {"file_path": "train/00000001.mp4", "text": "a red circle moving right", "type": "video",
     "control_file_path": "control/00000001.mp4", "width": 832, "height": 480}

``file_path`` and ``text`` are required; ``type`` is ``video`` or ``image`` (told from the file
suffix when missing); ``control_file_path``, ``width`` and ``height`` are optional, and so are the
Wan2.2-Animate inputs as VideoX-Fun's ``train_animate`` names them (:data:`ANIMATE_FILE_FIELDS`:
``face_file_path``, ``ref_file_path``, ``background_file_path``, ``mask_file_path``; the pose video is
the ``control_file_path``). Relative paths are relative to the data folder. Anything that does
not parse fails at once, naming the file and the line (and entry) at fault.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

DATA_TYPES = ("video", "image")
# Wan2.2-Animate's per-entry files beside the pose video (control_file_path), VideoX-Fun's train_animate field names:
# the face crops video, the character image, and for replacement the video without the person and the person mask.
ANIMATE_FILE_FIELDS = ("face_file_path", "ref_file_path", "background_file_path", "mask_file_path")
EXAMPLE_ENTRY = '{"file_path": "train/00000001.mp4", "text": "a red circle moving right", "type": "video"}'
_SHOWN = 10  # entries listed in an error before "... and N more"


class MetadataError(ValueError):
    """A metadata file that cannot be used as it is; the message says where and what to change."""


@dataclass(frozen=True)
class MetaEntry:
    """One training sample as the metadata names it, with its paths resolved."""

    file_path: str  # as written in the metadata
    path: Path  # resolved against the data folder
    text: str
    data_type: str  # "video" | "image"
    control_file_path: str | None = None
    control_path: Path | None = None
    width: int | None = None
    height: int | None = None
    where: str = ""  # "entry 3 (line 12)": for messages
    # The given ANIMATE_FILE_FIELDS as (field, resolved path) pairs (a tuple: entries are hashed).
    extra_paths: tuple[tuple[str, Path], ...] = ()

    @property
    def is_video(self) -> bool:
        """Whether the entry is a video (else an image)."""
        return self.data_type == "video"

    def path_of(self, name: str) -> Path | None:
        """The resolved path of a file field (``control_file_path`` or one of :data:`ANIMATE_FILE_FIELDS`)."""
        if name == "control_file_path":
            return self.control_path
        return dict(self.extra_paths).get(name)


# --------------------------------------------------------------------------------------------
# Reading the raw records
# --------------------------------------------------------------------------------------------


def _json_records(text: str, path: Path) -> Iterator[tuple[Any, int]]:
    """The elements of a top-level JSON list with the line each starts on."""
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise MetadataError(f"{path}: a JSON metadata file holds a list of entries, e.g. [{EXAMPLE_ENTRY}]")
    position = _skip_space(text, position + 1)
    if position < len(text) and text[position] == "]":
        return
    while True:
        line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise MetadataError(f"cannot parse {path}: {err.msg} at line {err.lineno} column {err.colno}") from err
        yield record, line
        position = _skip_space(text, position)
        if position < len(text) and text[position] == "]":
            break
        if position >= len(text) or text[position] != ",":
            line = text.count("\n", 0, position) + 1
            raise MetadataError(f"cannot parse {path}: expected ',' or ']' after the entry ending on line {line}")
        position = _skip_space(text, position + 1)
    if text[position + 1 :].strip():
        line = text.count("\n", 0, position) + 1
        raise MetadataError(f"cannot parse {path}: unexpected text after the closing ']' on line {line}")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _jsonl_records(text: str, path: Path) -> Iterator[tuple[Any, int]]:
    """One JSON object per non-empty line."""
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw), line
        except json.JSONDecodeError as err:
            raise MetadataError(f"cannot parse {path}: {err.msg} at line {line} column {err.colno}") from err


def _csv_records(text: str, path: Path) -> Iterator[tuple[Any, int]]:
    """CSV rows as dicts keyed by the header; empty cells are missing values."""
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "file_path" not in reader.fieldnames:
        raise MetadataError(f"{path}: the first CSV row must name the columns, e.g. file_path,text,type")
    try:
        for row in reader:
            if None in row:  # more cells than header columns
                raise MetadataError(f"cannot parse {path}: line {reader.line_num} has more cells than the header")
            # An empty cell is a missing value, except an empty caption, which is a caption.
            yield {k: v for k, v in row.items() if v != "" or k == "text"}, reader.line_num
    except csv.Error as err:
        raise MetadataError(f"cannot parse {path}: line {reader.line_num}: {err}") from err


_READERS = {".json": _json_records, ".jsonl": _jsonl_records, ".csv": _csv_records}


# --------------------------------------------------------------------------------------------
# Checking one entry
# --------------------------------------------------------------------------------------------


def _resolve(value: str, data_dir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else data_dir / path


def _data_type(record: Mapping[str, Any], file_path: str, where: str) -> str:
    """``type`` as given, else told from the suffix."""
    value = record.get("type")
    if value is not None:
        if value not in DATA_TYPES:
            raise MetadataError(f"{where}: type {value!r} is unknown; use 'video' or 'image'")
        return value
    suffix = Path(file_path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise MetadataError(f'{where}: no \'type\' and the suffix of {file_path!r} does not tell; add "type": "video"')


def _dimension(record: Mapping[str, Any], name: str, where: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or (isinstance(value, float) and not value.is_integer()):
        raise MetadataError(f"{where}: {name} {value!r} is not a positive whole number of pixels; fix or remove it")
    return number


def _entry(record: Any, where: str, data_dir: Path) -> MetaEntry:
    """Check one raw record and resolve its paths."""
    if not isinstance(record, Mapping):
        raise MetadataError(f"{where}: an entry is an object like {EXAMPLE_ENTRY}, got {type(record).__name__}")
    file_path = record.get("file_path")
    if not isinstance(file_path, str) or not file_path.strip():
        raise MetadataError(f"{where}: 'file_path' is missing or empty; every entry needs one, e.g. {EXAMPLE_ENTRY}")
    text = record.get("text")
    if text is None:
        raise MetadataError(f"{where}: 'text' is missing; every entry needs a caption (\"\" for none)")
    if not isinstance(text, str):
        raise MetadataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    control = record.get("control_file_path")
    if control is not None and not isinstance(control, str):
        raise MetadataError(f"{where}: 'control_file_path' must be a string, got {type(control).__name__}")
    control = control or None
    extra = [(name, _optional_path(record, name, where)) for name in ANIMATE_FILE_FIELDS]
    return MetaEntry(
        file_path=file_path,
        path=_resolve(file_path, data_dir),
        text=text,
        data_type=_data_type(record, file_path, where),
        control_file_path=control,
        control_path=_resolve(control, data_dir) if control else None,
        width=_dimension(record, "width", where),
        height=_dimension(record, "height", where),
        where=where,
        extra_paths=tuple((name, _resolve(value, data_dir)) for name, value in extra if value),
    )


def _optional_path(record: Mapping[str, Any], name: str, where: str) -> str | None:
    """An optional path field: a string when given (empty means not given)."""
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise MetadataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value or None


def _listing(entries: list[MetaEntry]) -> str:
    lines = [f"{e.where}: {e.file_path}" for e in entries[:_SHOWN]]
    if len(entries) > _SHOWN:
        lines.append(f"... and {len(entries) - _SHOWN} more")
    return "\n  ".join(lines)


# --------------------------------------------------------------------------------------------
# Public
# --------------------------------------------------------------------------------------------


def load_metadata(
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    require_control: bool = False,
    require: Mapping[str, str] | None = None,
) -> list[MetaEntry]:
    """Read a metadata file (``.json`` list, ``.jsonl`` or ``.csv``) into checked entries.

    Paths are resolved against ``data_dir`` (default: the metadata file's folder); absolute
    paths stay as they are. Files are not opened here: a missing or unreadable file is the
    dataset's business (skipped and counted). Fails with :class:`MetadataError` naming the
    file and line for a file that does not parse or an entry that is malformed, for an empty
    list, with ``require_control``, for entries without a ``control_file_path``, and for entries without
    a file field of ``require`` (field -> what the mode reads from it, for the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path} (set train_data_meta to a .json or .csv file)")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise MetadataError(f"{path}: unknown metadata format {path.suffix!r}; use .json (a list), .jsonl or .csv")
    folder = Path(data_dir) if data_dir is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet programs often write a BOM
    except UnicodeDecodeError as err:
        raise MetadataError(f"cannot parse {path}: it is not UTF-8 text ({err})") from err

    entries = [
        _entry(record, f"{path.name} entry {number} (line {line})", folder)
        for number, (record, line) in enumerate(reader(text, path), start=1)
    ]
    if not entries:
        raise MetadataError(
            f"{path} has no entries, so there is nothing to train on: add one entry per video or image, "
            f"e.g. [{EXAMPLE_ENTRY}]"
        )
    if require_control:
        lacking = [e for e in entries if e.control_path is None]
        if lacking:
            raise MetadataError(
                "control training needs a 'control_file_path' (a control video such as Canny edges, or a camera "
                f"trajectory .txt for control_camera_ref) in every entry of {path}; "
                f"{len(lacking)} of {len(entries)} have none:\n  {_listing(lacking)}\n"
                "Add the control videos, or train with train_mode 'normal' or 'inpaint'."
            )
    for name, what in (require or {}).items():
        lacking = [e for e in entries if e.path_of(name) is None]
        if lacking:
            raise MetadataError(
                f"this train_mode reads {what} from {name!r} in every entry of {path}; "
                f"{len(lacking)} of {len(entries)} have none:\n  {_listing(lacking)}"
            )
    return entries
