"""Typed configs: where a model folder keeps its components, and the generation defaults.

A YAML file (``config/wan2.1/*.yaml``, or ``videox_fun.yaml`` inside a model folder) fills
:class:`ModelConfig`; unknown fields are an error, so a typo never passes silently. VideoX-Fun's
own nested YAML files (``transformer_additional_kwargs``, ``vae_kwargs``...) are read as well.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

FOLDER_CONFIG_NAME = "videox_fun.yaml"
# The flow schedulers' timestep scale: timestep = sigma x NUM_TRAIN_TIMESTEPS, sigma in [0, 1].
NUM_TRAIN_TIMESTEPS = 1000


def timestep_problem(steps: Sequence[int]) -> str | None:
    """Why ``steps`` cannot be a few-step student's training timesteps (they decrease within (0, 1000]), else None."""
    if not steps:
        return "no timesteps"
    if any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in steps):
        return f"timesteps must lie within (0, {NUM_TRAIN_TIMESTEPS}]"
    if any(a <= b for a, b in itertools.pairwise(steps)):
        return "timesteps must decrease"
    return None


def parse_timesteps(text: str | Sequence[int]) -> tuple[int, ...]:
    """A student's training timesteps from ``"1000,700,400,100"`` (commas or spaces) or a sequence of integers."""
    if isinstance(text, str):
        try:
            steps = tuple(int(part) for part in text.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"distill timesteps {text!r}: integers such as 1000,750,500,250") from None
    else:
        steps = tuple(int(t) for t in text)
    problem = timestep_problem(steps)
    if problem:
        raise ValueError(f"distill timesteps {list(steps)}: {problem} (e.g. 1000,750,500,250)")
    return steps


@dataclass
class GenerationDefaults:
    """The settings a model was trained for; flags override them."""

    height: int = 480
    width: int = 832
    num_frames: int = 81
    fps: int = 16
    steps: int = 50
    guidance_scale: float = 6.0
    # Wan2.2 A14B: the low-noise expert's guidance (None: the same as guidance_scale).
    guidance_scale_2: float | None = None
    # VideoX-Fun's: the scheduler_kwargs shift of its Wan2.1 YAML, which its default sampler (Flow) runs at.
    shift: float = 5.0
    sampler: str = "Flow"
    negative_prompt: str = ""
    # A DMD student's training timesteps (--denoising_step_list), which Flow_Distill samples at as many steps
    # (None: the uniform grid, 1000 750 500 250 at 4 steps).
    distill_timesteps: list[int] | None = None


@dataclass
class ModelConfig:
    """Where each component lives inside a model folder, and how to run it.

    ``format`` is ``civitai`` (the original Wan-AI / alibaba-pai layout: transformer files at the
    top, ``Wan2.1_VAE.pth``, ``models_t5_*.pth``...) or ``diffusers`` (one subfolder each).
    """

    format: str = "civitai"
    pipeline: str = "Wan"
    transformer_subpath: str = "./"
    # Wan2.2 A14B: the low-noise expert (transformer_subpath is then the high-noise one), switched
    # in below boundary * 1000 (None: 0.875 for T2V, 0.900 for I2V, the released values).
    transformer_2_subpath: str | None = None
    boundary: float | None = None
    vae_subpath: str = "Wan2.1_VAE.pth"
    text_encoder_subpath: str = "models_t5_umt5-xxl-enc-bf16.pth"
    tokenizer_subpath: str = "google/umt5-xxl"
    image_encoder_subpath: str | None = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    # Fill value of unknown pixels in the masked video: -1 for Fun InP releases, 0 for Wan-AI I2V.
    masked_fill: float = -1.0
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    note: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a mapping, refusing unknown fields; VideoX-Fun's nested YAML is read too."""
        if any(key in data for key in VIDEOX_FUN_SECTIONS):
            data = flatten_videox_fun_config(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        data = dict(data)
        defaults = data.pop("defaults", {}) or {}
        default_fields = {f.name for f in dataclasses.fields(GenerationDefaults)}
        bad = sorted(set(defaults) - default_fields)
        if bad:
            raise ValueError(f"unknown generation defaults {bad}; known: {sorted(default_fields)}")
        return cls(**data, defaults=GenerationDefaults(**defaults))

    def to_dict(self) -> dict:
        """A plain mapping, as written to YAML."""
        return dataclasses.asdict(self)


# VideoX-Fun's own YAML (config/wan2.1/wan_civitai.yaml there) nests the component paths in these
# sections; the rest of each section (dims, layer counts, scheduler constants) describes what the
# checkpoints already say, and is not read, except the scheduler's shift (the default shift).
VIDEOX_FUN_SECTIONS = (
    "transformer_additional_kwargs",
    "vae_kwargs",
    "text_encoder_kwargs",
    "image_encoder_kwargs",
    "scheduler_kwargs",
)
_SUBPATHS = ("transformer_subpath", "vae_subpath", "text_encoder_subpath", "tokenizer_subpath", "image_encoder_subpath")
# VideoX-Fun's names for the Wan2.2 A14B experts (transformer_combination_type "moe") -> ours.
_EXPERT_KEYS = {
    "transformer_high_noise_model_subpath": "transformer_subpath",
    "transformer_low_noise_model_subpath": "transformer_2_subpath",
    "boundary": "boundary",
}


def flatten_videox_fun_config(data: dict) -> dict:
    """A VideoX-Fun YAML mapping -> our flat fields (component paths, Wan2.2 experts and boundary,
    the scheduler's shift as the default shift; ``format`` and ``pipeline`` kept). Unknown top-level
    keys stay, so they fail as typos.

    ``transformer_combination_type`` is VideoX-Fun's: ``moe`` (two experts; ours lists the high-noise
    one first) or ``single`` (one transformer, at ``transformer_low_noise_model_subpath``: its 5B,
    animate and s2v YAMLs). Without the field, a high-noise subpath makes it two experts.
    """
    flat = {key: value for key, value in data.items() if key not in VIDEOX_FUN_SECTIONS}
    for section in VIDEOX_FUN_SECTIONS:
        values = data.get(section) or {}
        flat.update({key: value for key, value in values.items() if key in _SUBPATHS})
    transformer = data.get("transformer_additional_kwargs") or {}
    combination = transformer.get("transformer_combination_type")
    if combination is None:
        combination = "moe" if "transformer_high_noise_model_subpath" in transformer else "single"
    if combination not in ("moe", "single"):
        raise ValueError(f"transformer_combination_type must be moe or single, got {combination!r}")
    if combination == "moe":
        flat.update({_EXPERT_KEYS[key]: value for key, value in transformer.items() if key in _EXPERT_KEYS})
    elif "transformer_low_noise_model_subpath" in transformer:
        flat["transformer_subpath"] = transformer["transformer_low_noise_model_subpath"]
    shift = (data.get("scheduler_kwargs") or {}).get("shift")
    if shift is not None:
        flat["defaults"] = {"shift": float(shift), **(flat.get("defaults") or {})}
    return flat


DIFFUSERS_LAYOUT = {
    "format": "diffusers",
    "transformer_subpath": "transformer",
    "vae_subpath": "vae",
    "text_encoder_subpath": "text_encoder",
    "tokenizer_subpath": "tokenizer",
    "image_encoder_subpath": "image_encoder",
}


def _parse_error(path: Path, what: str, err: Exception) -> ValueError:
    """One line naming the file (and where in it) for a YAML / JSON / UTF-8 decoding failure."""
    if isinstance(err, UnicodeDecodeError):
        return ValueError(f"{path}: a {what} must be UTF-8 text ({err.reason} at byte {err.start})")
    if isinstance(err, json.JSONDecodeError):
        return ValueError(f"{path}:{err.lineno}:{err.colno}: {what} is not valid JSON: {err.msg}")
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        line, column = err.problem_mark.line + 1, err.problem_mark.column + 1
        return ValueError(f"{path}:{line}:{column}: {what} is not valid YAML: {err.problem}")
    return ValueError(f"{path}: {what} is not valid YAML: {' '.join(str(err).split())}")


def _read_mapping(path: str | Path, what: str, parse: Callable[[IO[str]], Any]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = parse(f)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _parse_error(path, what, err) from err
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} is a mapping of field: value, not a {type(data).__name__}")
    return data


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty for an empty file); ``what`` names the file in errors.

    A file that is not YAML (or not UTF-8) raises a one-line ``ValueError`` naming it and the line.
    """
    return _read_mapping(path, what, yaml.safe_load)


def read_json_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The object a JSON file holds; ``what`` names the file in errors, as for :func:`read_yaml_mapping`."""
    return _read_mapping(path, what, json.load)


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a YAML model config."""
    data = read_yaml_mapping(path, "model config")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


# Wan2.2 A14B in the original layout: one subfolder per expert, and the released sampling settings
# (wan/configs/wan_{t2v,i2v}_A14B.py; guidance_scale is the high-noise expert's).
TWO_EXPERT_LAYOUT = {"transformer_subpath": "high_noise_model", "transformer_2_subpath": "low_noise_model"}
WAN22_A14B_DEFAULTS = {
    "t2v": {"steps": 40, "shift": 12.0, "guidance_scale": 4.0, "guidance_scale_2": 3.0, "boundary": 0.875},
    "i2v": {"steps": 40, "shift": 5.0, "guidance_scale": 3.5, "guidance_scale_2": 3.5, "boundary": 0.900},
}


# Wan2.2-TI2V-5B in the original layout: its own VAE, no CLIP, and the released sampling settings
# (wan/configs/wan_ti2v_5B.py: 1280x704, 121 frames at 24 fps, 50 steps, shift 5, guidance 5).
WAN22_TI2V_5B = {
    "vae_subpath": "Wan2.2_VAE.pth",
    "image_encoder_subpath": None,
    "masked_fill": 0.0,
    "defaults": {
        "height": 704,
        "width": 1280,
        "num_frames": 121,
        "fps": 24,
        "steps": 50,
        "guidance_scale": 5.0,
        "shift": 5.0,
        "sampler": "Flow_Unipc",
    },
}


def two_expert_config(folder: Path) -> ModelConfig:
    """The config of a Wan2.2 A14B folder in the original layout (T2V or I2V, read off its config.json)."""
    model_type = read_json_mapping(folder / TWO_EXPERT_LAYOUT["transformer_subpath"] / "config.json", "model config")
    settings = dict(WAN22_A14B_DEFAULTS["i2v" if model_type.get("model_type") == "i2v" else "t2v"])
    boundary = settings.pop("boundary")
    defaults = {"height": 720, "width": 1280, "sampler": "Flow_Unipc", **settings}
    return ModelConfig.from_dict({**TWO_EXPERT_LAYOUT, "boundary": boundary, "masked_fill": 0.0, "defaults": defaults})


def config_for_folder(folder: str | Path, override: str | Path | None = None) -> ModelConfig:
    """The config of a model folder: an explicit YAML, the folder's own one, or its layout's defaults.

    Layouts: diffusers (``model_index.json``; a ``transformer_2`` entry and its ``boundary_ratio``
    make it two-expert), Wan2.2 A14B (``high_noise_model/`` + ``low_noise_model/``), Wan2.2-TI2V-5B
    (``Wan2.2_VAE.pth``), else the original Wan2.1 layout.
    """
    folder = Path(folder)
    if override is not None:
        return load_model_config(override)
    if (folder / FOLDER_CONFIG_NAME).is_file():
        return load_model_config(folder / FOLDER_CONFIG_NAME)
    if (folder / "model_index.json").is_file():
        index = read_json_mapping(folder / "model_index.json", "diffusers model index")
        experts = {"transformer_2_subpath": "transformer_2", "boundary": index.get("boundary_ratio")}
        # The index names transformer_2 ([null, null]) even when there is none: look for the folder.
        two_experts = (folder / "transformer_2" / "config.json").is_file()
        return ModelConfig.from_dict({**DIFFUSERS_LAYOUT, **(experts if two_experts else {})})
    if all((folder / sub / "config.json").is_file() for sub in TWO_EXPERT_LAYOUT.values()):
        return two_expert_config(folder)
    if (folder / "Wan2.2_VAE.pth").is_file() and not (folder / "Wan2.1_VAE.pth").is_file():
        return ModelConfig.from_dict(WAN22_TI2V_5B)
    return ModelConfig()


def save_model_config(config: ModelConfig, path: str | Path) -> None:
    """Write a model config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def load_folder_config(path: str | Path | None, config_class: type, base: GenerationDefaults, pipeline: str) -> Any:
    """A diffusers-layout folder's typed config (``config_class``, a dataclass with ``pipeline`` and ``defaults``
    fields) from its YAML (None: the layout's defaults); its ``defaults`` entries override ``base``.

    Unknown fields, unknown generation defaults and another family's ``pipeline`` are one-line errors.
    """
    data = dict(read_yaml_mapping(path, f"{pipeline} config")) if path is not None else {}
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown or data.get("pipeline", pipeline) != pipeline:
        raise ValueError(f"{path}: not a {pipeline} config (unknown fields {unknown}, pipeline {data.get('pipeline')})")
    try:
        defaults = dataclasses.replace(base, **(data.pop("defaults", None) or {}))
    except TypeError as err:
        raise ValueError(f"{path}: unknown generation defaults ({err})") from None
    return config_class(**data, defaults=defaults)


def write_folder_config(folder: Path, pipeline: str, defaults: GenerationDefaults, note: str, **extra: Any) -> Path:
    """A diffusers-layout folder's ``videox_fun.yaml``: its ``pipeline``, ``extra`` fields of the family's config,
    generation ``defaults`` and a ``note`` (shown when it loads), as the tiny built-in folders carry them."""
    path = Path(folder) / FOLDER_CONFIG_NAME
    fields = {k: v for k, v in dataclasses.asdict(defaults).items() if v is not None}
    data = {"format": "diffusers", "pipeline": pipeline, **extra, "defaults": fields, "note": note}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
