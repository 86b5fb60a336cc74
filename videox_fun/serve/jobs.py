"""What a job is: the request schema of ``POST /v1/generations``, its checks, and its translation to the
programmatic entry (:class:`~videox_fun.api.RuntimeOptions` + :class:`~videox_fun.api.GenerationRequest`).

Field names are the CLI's (``frames``, ``steps``, ``guidance``...). Input media arrive as uploads,
base64 (plain or ``data:`` URIs) or URLs of allowed hosts; each is written under the job's input
folder before the job is stored, and the stored spec names the files. ``ref_image`` may be several
pictures (VACE subjects, an edit's pictures after ``image``): a list in the JSON or repeated uploads,
stored and passed on in their order. Models and LoRAs are named,
never given as paths: names resolve inside the model folders only.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from ..api import SEED_RANGE, GenerationRequest, RuntimeOptions, check_request
from ..families import INPUT_NAMES, Recognised, recognise
from ..runtime.offload import MEMORY_MODES
from ..runtime.options import CACHES, TEACACHE_INDICATORS

# Suffixes for stored inputs: the decoders pick formats from content, but a suffix keeps the files readable.
INPUT_SUFFIX = {"camera": ".txt", "image": ".png", "end_image": ".png", "ref_image": ".png"}
# The inputs that take several files, and how many one job may give: VACE reads any number of subject images,
# FLUX.2's edit 10 pictures with --image (each model's own check refuses more than it reads).
LISTED_INPUTS = {"ref_image": 10}


class RequestError(ValueError):
    """A request the service refuses: answered 4xx with the field it names."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class LoraIn(BaseModel):
    """One LoRA of a job: a file name in the LoRA folder, its strength, and the expert it goes to."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255, description="file name under models/Personalized_Model")
    weight: float = Field(1.0, ge=-100, le=100, allow_inf_nan=False)
    expert: Literal["low", "high"] = Field("low", description="Wan2.2 A14B: the expert it goes to")


def listed_value(value: Any) -> str | list[str] | None:
    """A listed input's JSON value (``ref_image``): one medium as text, or a list of them (an empty list is none).

    Checked here rather than by a union type, so a wrong value is one error, not one per member of the union.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value or None
    raise ValueError("takes one picture (base64 or an http(s) URL) or a list of them")


# ``ref_image``: one picture, or several in order. How many is checked with the uploads (store_inputs), where a
# multipart job's parts are counted too, so both ways answer the same one-line 422.
RefImages = Annotated[
    Any,
    AfterValidator(listed_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": LISTED_INPUTS["ref_image"]},
                {"type": "null"},
            ],
            "description": "one picture, or a list of them in order (VACE subjects; an edit's pictures after "
            f"image): each base64 or an allowed URL; at most {LISTED_INPUTS['ref_image']}",
        }
    ),
]


def _float(default: float | None = None, **limits: float) -> Any:
    return Field(default, allow_inf_nan=False, **limits)


SettingName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A family setting's value: a number or text (a value setting), base64 / a URL (a file setting), or a folder
# setting's files by name. Any JSON passes the schema: serve.settings checks it against the model's family when the
# job is submitted, so a wrong one is one line naming the setting (a union here would list every member it missed).
SettingValue = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string"},
                {"type": "boolean"},
                {"type": "object", "additionalProperties": {"type": "string"}},
                {"type": "null"},
            ]
        }
    ),
]


class GenerationIn(BaseModel):
    """A generation job: the model, LoRAs, mode, inputs and every generation setting the CLI has.

    Settings left out take the model's defaults; ``mode`` left out is inferred from the inputs.
    Media fields take base64 (or a ``data:`` URI), an ``http(s)`` URL of an allowed host, or, in a
    multipart request, the file uploaded under the field's name. ``camera`` also takes a built-in
    trajectory name (``pan_left``, ``zoom_in``...). ``extra`` holds the settings of the model's family by name
    (``GET /v1/models`` lists them): numbers or text, and file / folder settings as their files (multipart uploads
    under the setting's name, or base64 / URLs: one for a file, ``{file name: ...}`` for a folder).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    model: str | None = Field(None, max_length=255, description="a name from GET /v1/models (default: the server's)")
    mode: str | None = Field(None, max_length=32, description="a mode of the model's family (default: inferred)")
    loras: list[LoraIn] = Field(default_factory=list, max_length=16)
    base_model: str | None = Field(
        None,
        max_length=255,
        description="transformer weights to load instead of the model's: a file name under "
        "models/Personalized_Model (VideoX-Fun's base_model_path)",
    )
    image: str | None = None
    end_image: str | None = None
    video: str | None = None
    mask: str | None = None
    control_video: str | None = None
    ref_image: RefImages = None
    camera: str | None = None
    height: int | None = Field(None, ge=16, le=16_384)
    width: int | None = Field(None, ge=16, le=16_384)
    frames: int | None = Field(None, ge=1, le=100_000)
    fps: int | None = Field(None, ge=1, le=240)
    steps: int | None = Field(None, ge=1, le=1_000)
    guidance: float | None = _float(ge=0, le=100)
    guidance_2: float | None = _float(ge=0, le=100)
    shift: float | None = _float(gt=0, le=1_000)
    sampler: str | None = Field(None, max_length=64)
    seed: int = Field(43, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    strength: float = _float(0.7, gt=0, le=1)
    partial_video_length: int | None = Field(None, ge=2, le=100_000)
    overlap_video_length: int = Field(4, ge=0, le=100_000)
    cache: Literal[CACHES] = "none"  # type: ignore[valid-type]
    cache_threshold: float | None = _float(ge=0, le=100)
    teacache_indicator: Literal[TEACACHE_INDICATORS] | None = None  # type: ignore[valid-type]
    num_skip_start_steps: int | None = Field(None, ge=0, le=1_000)
    cache_offload_residuals: bool = False
    cfg_skip_ratio: float = _float(0.0, ge=0, le=1)
    cfg_sequential: bool = Field(False, description="cond and uncond passes one after the other (less memory)")
    riflex_k: int | None = Field(None, ge=1, le=64)
    gpu_memory_mode: Literal[MEMORY_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="default: the server's; another one reloads the model"
    )
    compile: bool | None = Field(None, description="torch.compile the blocks (default: the server's)")
    extra: dict[SettingName, SettingValue] = Field(
        default_factory=dict,
        max_length=32,
        description="settings of the model's family by name (GET /v1/models lists them), e.g. Wan2.2-Animate's "
        "src_root_path (its files), refert_num, clip_len; VACE's vace_context_scale",
    )


@dataclass
class Limits:
    """What one job may ask for: upload bytes and the work (width x height x frames x steps)."""

    max_upload_bytes: int = 200 * 2**20
    max_work: int = 1280 * 720 * 81 * 50  # a 720p, 81-frame, 50-step video
    allowed_url_hosts: tuple[str, ...] = ()
    url_timeout_s: float = 30.0


@dataclass
class Catalog:
    """The models and LoRAs a server may load, by name: built-ins, and folders under ``root``."""

    root: Path  # holds Diffusion_Transformer/ and Personalized_Model/, as VideoX-Fun's models/
    default_model: str | None = None
    recognised: dict[Path, Recognised] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        """Where model folders are found by name."""
        return self.root / "Diffusion_Transformer"

    @property
    def lora_dir(self) -> Path:
        """Where LoRA files are found by name."""
        return self.root / "Personalized_Model"

    def model_names(self) -> list[str]:
        """The names a job may give as ``model``."""
        from ..registry import BUILTIN_MODELS, shipped_models

        local = sorted(p.name for p in _entries(self.model_dir) if p.is_dir() and not p.name.startswith("."))
        return [*local, *shipped_models(), *BUILTIN_MODELS]

    def lora_names(self) -> list[str]:
        """The names a job may give as a LoRA."""
        return sorted(p.name for p in _entries(self.lora_dir) if p.is_file() and p.suffix == ".safetensors")

    def model_folder(self, name: str | None, field_name: str = "model") -> Path:
        """The folder of a model name (confined to the model folder, or a built-in)."""
        from ..registry import BUILTIN_MODELS, DEFAULT_MODEL, packaged_model, resolve_model

        name = name or self.default_model or DEFAULT_MODEL
        local = confined(self.model_dir, name, field_name)
        if local is not None and local.is_dir():
            return local
        if packaged_model(name) or name in BUILTIN_MODELS:
            return resolve_model(name)
        raise RequestError(field_name, f"no model named {name!r}: GET /v1/models lists them", status=404)

    def lora_file(self, name: str, field_name: str = "loras") -> Path:
        """The file of a LoRA name (confined to the LoRA folder)."""
        path = confined(self.lora_dir, name, field_name)
        if path is None or not path.is_file():
            raise RequestError(field_name, f"no LoRA named {name!r}: GET /v1/models lists them", status=404)
        return path

    def recognise(self, folder: Path) -> Recognised:
        """A model folder as its family reads it (remembered: the folder's config does not change under us)."""
        if folder not in self.recognised:
            self.recognised[folder] = recognise(folder)
        return self.recognised[folder]


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


_NAME = re.compile(r"^[\w][\w.\- +()]*$")


def confined(folder: Path, name: str, field_name: str) -> Path | None:
    """``folder / name`` when ``name`` is a plain name whose target (symlinks followed) stays inside ``folder``.

    Refuses separators, ``..``, absolute paths and links that lead out; None when no such entry exists.
    """
    if not _NAME.match(name) or name in (".", ".."):
        raise RequestError(field_name, f"{field_name} must be a plain name from GET /v1/models, got {name!r}")
    candidate = folder / name
    if not candidate.exists():
        return None
    if not candidate.resolve().is_relative_to(folder.resolve()):
        raise RequestError(field_name, f"{field_name} {name!r} leads outside the model folders", status=403)
    return candidate


@dataclass
class Upload:
    """An uploaded file of a multipart request: its field name, bytes and the file name it was sent with."""

    field: str
    data: bytes
    filename: str | None = None


def store_inputs(spec: GenerationIn, uploads: list[Upload], folder: Path, limits: Limits) -> dict[str, str | list[str]]:
    """Write every input medium of a job under ``folder``; returns the spec's media as file paths (or names).

    A listed input (``ref_image``) gives one path for one file, as before, and a list of paths, in the order
    given, for several.
    """
    parts: dict[str, list[Upload]] = {}
    for upload in uploads:
        if upload.field not in INPUT_NAMES:
            raise RequestError(
                upload.field, f"unknown upload field {upload.field!r}: use one of {', '.join(INPUT_NAMES)}"
            )
        parts.setdefault(upload.field, []).append(upload)
    given: dict[str, str | list[str]] = {}
    for name in INPUT_NAMES:
        files, value = parts.get(name, []), getattr(spec, name)
        if files and value is not None:
            raise RequestError(name, f"{name} given twice (as an upload and in the JSON)")
        if name in LISTED_INPUTS:
            stored = store_listed(name, files, value, folder, limits)
            if stored is not None:
                given[name] = stored
        elif len(files) > 1:
            raise RequestError(name, f"{name} takes one file, got {len(files)} uploads")
        elif files:
            given[name] = _write_input(folder, name, files[0].data, limits)
        elif value is not None and name == "camera" and is_camera_preset(value):
            given[name] = value
        elif value is not None:
            given[name] = _write_input(folder, name, media_bytes(name, value, limits), limits)
    return given


def store_listed(
    name: str, files: list[Upload], value: str | list[str] | None, folder: Path, limits: Limits
) -> str | list[str] | None:
    """A listed input's files (uploads, or the JSON's base64 / URLs), counted against its limit before any is
    fetched, then stored in order: one as ``NAME.png`` (a single picture, as before), several as ``NAME_0.png``,
    ``NAME_1.png``... Returns the path, the paths, or None when none was given."""
    texts = [value] if isinstance(value, str) else list(value or [])
    count, most = len(files) or len(texts), LISTED_INPUTS[name]
    if count > most:
        raise RequestError(name, f"{name} takes at most {most} pictures, got {count}")
    if count == 1:
        data = files[0].data if files else media_bytes(name, texts[0], limits)
        return _write_input(folder, name, data, limits)
    paths = []
    for index in range(count):
        label = f"{name}[{index}]"  # names the picture in a refusal (its position in the list or among the parts)
        data = files[index].data if files else media_bytes(label, texts[index], limits)
        paths.append(write_input_file(folder / f"{name}_{index}{INPUT_SUFFIX[name]}", label, data, limits))
    return paths or None


def media_bytes(name: str, value: str, limits: Limits) -> bytes:
    """The bytes of a medium given in the JSON: fetched from an allowed ``http(s)`` URL, else base64."""
    if value.startswith(("http://", "https://")):
        return fetch_url(name, value, limits)
    return decode_base64(name, value)


def is_camera_preset(value: str) -> bool:
    """Whether a ``camera`` value names a built-in trajectory (never a file path on the server)."""
    from ..io.camera import TRAJECTORIES, trajectory_key

    return len(value) <= 64 and trajectory_key(value) in TRAJECTORIES


def _write_input(folder: Path, name: str, data: bytes, limits: Limits) -> str:
    return write_input_file(folder / f"{name}{INPUT_SUFFIX.get(name, '.mp4')}", name, data, limits)


def write_input_file(path: Path, name: str, data: bytes, limits: Limits) -> str:
    """Write one input's bytes at ``path`` (refused when empty or above the upload limit); its absolute path."""
    from ..io.files import atomic_path

    if len(data) > limits.max_upload_bytes:
        raise RequestError(name, f"{name}: {len(data)} bytes, above the limit of {limits.max_upload_bytes}", 413)
    if not data:
        raise RequestError(name, f"{name} is empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return str(path.resolve())


def decode_base64(name: str, value: str) -> bytes:
    """Bytes of a base64 field (a ``data:...;base64,`` prefix allowed)."""
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(name, f"{name} is neither base64 nor an http(s) URL (nor a built-in camera path)") from None


def fetch_url(name: str, url: str, limits: Limits) -> bytes:
    """The bytes at ``url``, only when its host is on the allow-list (no fetching by default)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host.lower() not in {h.lower() for h in limits.allowed_url_hosts}:
        raise RequestError(
            name, f"{name}: fetching {host or url!r} is not allowed (the server's --allow-url-host)", 403
        )
    try:
        with urllib.request.urlopen(url, timeout=limits.url_timeout_s) as response:
            data = response.read(limits.max_upload_bytes + 1)
    except OSError as err:
        raise RequestError(name, f"{name}: could not fetch {url}: {err}", 422) from None
    return data


def runtime_options(spec: GenerationIn, base: RuntimeOptions, catalog: Catalog) -> RuntimeOptions:
    """The server's options with the job's base weights and per-job features (LoRAs, cache, RIFLEx, CFG skip)."""
    low = [lora for lora in spec.loras if lora.expert == "low"]
    high = [lora for lora in spec.loras if lora.expert == "high"]
    load = {"gpu_memory_mode": spec.gpu_memory_mode, "compile": spec.compile}
    return dataclasses.replace(
        base,
        **{name: value for name, value in load.items() if value is not None},
        transformer_path=catalog.lora_file(spec.base_model, "base_model") if spec.base_model else None,
        lora_path=[str(catalog.lora_file(lora.name)) for lora in low],
        lora_weight=[lora.weight for lora in low] or None,
        lora_high_path=[str(catalog.lora_file(lora.name)) for lora in high],
        lora_high_weight=[lora.weight for lora in high] or None,
        cache=spec.cache,
        cache_threshold=spec.cache_threshold,
        teacache_indicator=spec.teacache_indicator,
        num_skip_start_steps=spec.num_skip_start_steps,
        cache_offload_residuals=spec.cache_offload_residuals,
        cfg_skip_ratio=spec.cfg_skip_ratio,
        cfg_sequential=spec.cfg_sequential,
        riflex_k=spec.riflex_k,
    )


def generation_request(
    spec: GenerationIn, inputs: dict[str, str | list[str]], extra: dict[str, Any] | None = None
) -> GenerationRequest:
    """The :class:`~videox_fun.api.GenerationRequest` of a job whose media are stored at ``inputs`` (several
    ``ref_image`` pictures as a list, in order), with its family settings ``extra`` as
    :func:`~videox_fun.serve.settings.store_settings` made them (files as stored paths)."""
    return GenerationRequest(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        mode=spec.mode,
        height=spec.height,
        width=spec.width,
        num_frames=spec.frames,
        steps=spec.steps,
        guidance_scale=spec.guidance,
        guidance_scale_2=spec.guidance_2,
        shift=spec.shift,
        sampler=spec.sampler,
        seed=spec.seed,
        strength=spec.strength,
        fps=spec.fps,
        partial_video_length=spec.partial_video_length,
        overlap_video_length=spec.overlap_video_length,
        extra=dict(extra or {}),
        **inputs,
    )


# CLI flag -> request field, to name the field of a check's message ("--frames 200: ..." -> frames).
_FLAG_FIELDS = {"guidance-scale": "guidance", "guidance-2": "guidance_2", "lora-path": "loras", "lora-weight": "loras"}


def field_of(message: str) -> str:
    """The request field a check's message is about (its first ``--flag``; ``extra.NAME`` for a family setting's),
    else ``body``."""
    from ..families import all_settings

    match = re.search(r"--([a-z0-9-]+)", message)
    if match is None:
        return "mode" if message.startswith("mode ") else "body"
    flag = match.group(1)
    name = _FLAG_FIELDS.get(flag, flag.replace("-", "_"))
    return f"extra.{name}" if name in all_settings() else name


def check_job(
    spec: GenerationIn,
    inputs: dict[str, str | list[str]],
    catalog: Catalog,
    base: RuntimeOptions,
    limits: Limits,
    extra: dict[str, Any] | None = None,
) -> tuple[Recognised, str]:
    """Every check a job can have before it is queued (no weights loaded); returns the model and the mode."""
    folder = catalog.model_folder(spec.model)
    recognised = catalog.recognise(folder)
    options = runtime_options(spec, base, catalog)
    request = generation_request(spec, inputs, extra)
    try:
        options.check()
        mode = check_request(recognised, request)
    except (ValueError, FileNotFoundError) as err:
        raise RequestError(field_of(str(err)), str(err)) from None
    if spec.sampler is not None and spec.sampler not in recognised.family.samplers:
        raise RequestError("sampler", f"sampler {spec.sampler!r} is not one of {', '.join(recognised.family.samplers)}")
    check_work(spec, recognised, limits)
    return recognised, mode


def check_work(spec: GenerationIn, recognised: Recognised, limits: Limits) -> None:
    """Refuse a job whose width x height x frames x steps is above the server's limit."""
    defaults = recognised.defaults
    height, width = spec.height or defaults.height, spec.width or defaults.width
    frames, steps = spec.frames or defaults.num_frames, spec.steps or defaults.steps
    work = height * width * frames * steps
    if work > limits.max_work:
        raise RequestError(
            "body",
            f"width x height x frames x steps = {width}x{height}x{frames}x{steps} = {work:,} is above this "
            f"server's limit of {limits.max_work:,} (its --max-work)",
        )


def size_from_reference(path: str | Path, base_resolution: int) -> tuple[int, int]:
    """VideoX-Fun's "Resize according to Reference": the (height, width) of about ``base_resolution``^2
    pixels whose aspect ratio is nearest to the reference's (its first frame)."""
    from ..io.video import read_video
    from ..training.data.buckets import bucket_sizes, closest_size

    frame = read_video(path, num_frames=1)  # (1, H, W, 3)
    return closest_size(frame.shape[1], frame.shape[2], bucket_sizes(base_resolution))
