"""A job's family settings (``GenerationIn.extra``): the settings the model's family declares
(:class:`~videox_fun.families.Setting`), checked and parsed before the job is stored.

A value setting is parsed as the CLI parses its flag (its ``type``, its ``choices``). A file or folder setting
never names a path on the server: its file (or the folder's files, by name) arrive as the media do, as multipart
uploads under the setting's name or as base64 / allowed URLs in the JSON, and are written under the job's input
folder with the media's limits; each file of a folder must decode (its first frame), as a medium must. The setting's
value is then that stored path, and the family's own check (a folder missing a file the mode reads) runs with the
other checks of the job. Every refusal is a 422 naming ``extra.NAME`` in one line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..families import Family, Setting
from .jobs import Limits, RequestError, Upload, media_bytes, write_input_file

JSON_TYPES = {bool: "boolean", int: "integer", float: "number"}
PARSE_ERRORS = (ValueError, TypeError, argparse.ArgumentTypeError)
MAX_FOLDER_FILES = 32  # files of one folder setting (a folder that lists its names takes those only)


def field(setting: Setting | str) -> str:
    """The request field of a setting (``extra.NAME``), as refusals name it."""
    return f"extra.{setting if isinstance(setting, str) else setting.name}"


def json_type(setting: Setting) -> str:
    """The JSON type a value setting takes: what its parser makes of ``"1"`` (integer, number), else string."""
    try:
        parsed = setting.type("1")
    except PARSE_ERRORS:  # a parser that refuses 1 reads something else: text
        return "string"
    return JSON_TYPES.get(type(parsed), "string")


def article(word: str) -> str:
    """``a`` or ``an`` before ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


def describe(setting: Setting) -> dict[str, Any]:
    """A setting as ``GET /v1/models`` lists it (what a client needs to offer it)."""
    return {
        "name": setting.name,
        "kind": setting.kind,
        "type": json_type(setting) if setting.kind == "value" else setting.kind,
        "choices": list(setting.choices) if setting.choices is not None else None,
        "files": list(setting.files),
        "modes": list(setting.modes),
        "needed_by": list(setting.needed_by),
        "help": setting.help,
    }


def split_uploads(uploads: Iterable[Upload], family: Family) -> tuple[list[Upload], dict[str, list[Upload]]]:
    """The uploads of media, and those named by the family's settings, by setting name (a value setting's is refused
    when stored, naming the setting)."""
    named = {setting.name for setting in family.settings}
    media: list[Upload] = []
    settings: dict[str, list[Upload]] = {}
    for upload in uploads:
        if upload.field in named:
            settings.setdefault(upload.field, []).append(upload)
        else:
            media.append(upload)
    return media, settings


def store_settings(
    given: Mapping[str, Any], uploads: Mapping[str, list[Upload]], folder: Path, limits: Limits, family: Family
) -> dict[str, Any]:
    """The job's settings by name, parsed; files written under ``folder`` (their settings' values are the paths).

    Names the family does not declare, values of the wrong type and unusable files are refused (422).
    """
    declared = {setting.name: setting for setting in family.settings}
    for name in (*given, *uploads):
        if name not in declared:
            reads = ", ".join(declared) or "none"
            raise RequestError(field(name), f"setting {name!r} is not one the {family.name} family reads ({reads})")
    values = {}
    for name, setting in declared.items():
        value, files = given.get(name), uploads.get(name, [])
        if value is not None or files:
            values[name] = store_setting(setting, value, files, folder, limits)
    return values


def store_setting(setting: Setting, value: Any, files: list[Upload], folder: Path, limits: Limits) -> Any:
    """One setting's value: parsed, or its file(s) stored."""
    if setting.kind == "folder":
        return store_folder(setting, value, files, folder / setting.name, limits)
    if setting.kind == "file":
        return store_file(setting, value, files, folder, limits)
    if files:
        raise RequestError(
            field(setting),
            f"{setting.name} takes {article(json_type(setting))} {json_type(setting)} value, not an upload",
        )
    return parse_value(setting, value)


def passed_on(setting: Setting) -> bool:
    """Whether the service takes the setting from its clients: any but free text, which reaches the family's code
    as it is (a path there would read the server's files; a file setting says ``kind="file"``)."""
    return setting.kind != "value" or setting.type is not str or setting.choices is not None


def parse_value(setting: Setting, value: Any) -> Any:
    """A value setting's JSON value, as its flag would parse it (numbers as their text), within its choices."""
    if not passed_on(setting):
        raise RequestError(
            field(setting),
            f"{setting.name} is a text setting this service does not pass on (its family declares no file, folder "
            "or choices for it): the API takes no paths on the server",
        )
    kind = json_type(setting)
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and kind != "boolean"):
        raise RequestError(field(setting), f"{setting.name} takes one {kind}, got {json.dumps(value)}")
    try:
        parsed = setting.type(str(value))
    except PARSE_ERRORS:
        raise RequestError(field(setting), f"{setting.name} takes {article(kind)} {kind}, got {value!r}") from None
    if setting.choices is not None and parsed not in setting.choices:
        choices = ", ".join(str(choice) for choice in setting.choices)
        raise RequestError(field(setting), f"{setting.name} must be one of {choices}, got {value!r}")
    return parsed


def store_file(setting: Setting, value: Any, files: list[Upload], folder: Path, limits: Limits) -> str:
    """A file setting's one file (an upload, or base64 / a URL), stored as ``folder/NAME[.suffix]``."""
    if isinstance(value, dict) or len(files) + (value is not None) != 1:
        raise RequestError(field(setting), f"{setting.name} takes one file: one upload, or base64 / a URL")
    if value is not None and not isinstance(value, str):
        raise RequestError(field(setting), f"{setting.name} takes a file as base64 or a URL, got {value!r}")
    data = files[0].data if files else media_bytes(field(setting), value, limits)
    suffix = Path(files[0].filename or "").suffix if files else ""
    return write_input_file(folder / f"{setting.name}{suffix}", field(setting), data, limits)


def store_folder(setting: Setting, value: Any, files: list[Upload], target: Path, limits: Limits) -> str:
    """A folder setting's files by name (uploads named by their file names, or ``{name: base64 or URL}``), written
    into ``target``; each must decode (its first frame). The folder's path."""
    from ..io.inputs import check_input_file

    if value is not None and not isinstance(value, dict):
        raise RequestError(
            field(setting),
            f"{setting.name} takes the folder's files ({', '.join(setting.files) or 'by name'}): uploads named "
            f"{setting.name}, or {{file name: base64 or URL}}; not a path on the server",
        )
    given = value or {}
    if len(files) + len(given) > MAX_FOLDER_FILES:
        raise RequestError(field(setting), f"{setting.name}: at most {MAX_FOLDER_FILES} files")
    if not all(isinstance(text, str) for text in given.values()):
        raise RequestError(field(setting), f"{setting.name}: each file is given as base64 or a URL (text)")
    contents = [(upload.filename or "", upload.data) for upload in files]
    contents += [(name, media_bytes(field(setting), text, limits)) for name, text in given.items()]
    names = [name for name, _ in contents]
    for name in names:
        check_file_name(setting, name, names.count(name))
    for name, data in contents:
        path = write_input_file(target / name, field(setting), data, limits)
        try:
            check_input_file(setting.name, path)
        except (ValueError, FileNotFoundError) as err:
            # The check's message names the flag first: the field names the setting instead.
            raise RequestError(field(setting), f"{setting.name}: {str(err).split(': ', 1)[-1]}") from None
    target.mkdir(parents=True, exist_ok=True)  # an empty folder: the family's check names what it lacks
    return str(target.resolve())


def check_file_name(setting: Setting, name: str, count: int) -> None:
    """A folder's file name: one the setting lists (any plain name when it lists none), given once."""
    if setting.files and name not in setting.files:
        raise RequestError(
            field(setting), f"{setting.name}: {name!r} is not one of its files ({', '.join(setting.files)})"
        )
    if not setting.files and (not name or Path(name).name != name or name in (".", "..")):
        raise RequestError(field(setting), f"{setting.name}: {name!r} is not a plain file name")
    if count > 1:
        raise RequestError(field(setting), f"{setting.name}: {name!r} given twice")
