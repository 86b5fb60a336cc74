"""What the wrappers around the field's models (VAE, text and image encoders) share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


class OffloadableComponent:
    """A model wrapper whose inputs go to an execution device that may differ from where its weights rest.

    Offload hooks (:mod:`videox_fun.runtime.offload`) keep weights on the CPU and move them in as
    modules run; they set ``execution_device`` so the wrapper still puts its inputs on the accelerator.
    """

    execution_device: torch.device | None = None
    model: torch.nn.Module  # the wrapped model of the field's library

    def weights_device(self) -> torch.device:
        """Where the weights are now (those of the wrapped ``model``)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the wrapped model's weights."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Where inputs are placed: the execution device when one is set, else the weights' device."""
        return self.execution_device or self.weights_device()


class DiffusersVAE(OffloadableComponent, nn.Module):
    """A family's wrapper around a diffusers VAE class, loaded strictly from a ``vae/`` folder.

    Subclasses name the diffusers class (``model_class``) and the family (``family``, for errors) and add
    their own ``encode`` / ``decode`` (normalisation, layout).
    """

    model_class: ClassVar[type[nn.Module]]
    family: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """A randomly initialised VAE of ``config``."""
        return cls(cls.model_class.from_config(dict(config)))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
        """Load a ``vae/`` folder strictly (every missing / unexpected / mis-shaped key is named)."""
        from ..config import read_json_mapping
        from .loading import cast_floating, load_into, read_folder_state_dict

        folder = Path(folder)
        config = read_json_mapping(folder / "config.json", "VAE config")
        name, expected = config.get("_class_name"), cls.model_class.__name__
        if name is not None and name != expected:
            raise ValueError(f"{folder}: a {name} VAE, not a {cls.family} one ({expected})")
        state = cast_floating(read_folder_state_dict(folder), dtype)
        with torch.device("meta"):
            model = cls.model_class.from_config(config)
        return cls(load_into(model, state, str(folder))).eval()

    @property
    def config(self) -> Any:
        """The diffusers config of the wrapped model."""
        return self.model.config


class TokenizedTextEncoder(OffloadableComponent, nn.Module):
    """A wrapper around a transformers text model and its tokenizer; subclasses add ``from_pretrained`` and
    ``encode``."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer


@dataclass(frozen=True)
class PublishedCacheSet:
    """TeaCache coefficients published for one released architecture (highest power first), fitted on the relative
    L1 change of ``indicator``; ``architecture`` holds the config values that architecture has."""

    label: str  # "FLUX.1": named in the hint when another indicator is asked for
    coefficients: tuple[float, ...]
    indicator: str
    architecture: Mapping[str, Any]

    def for_config(self, config: Mapping[str, Any], indicator: str) -> tuple[list[float] | None, str]:
        """The set for a model of ``config`` on ``indicator`` (None: another architecture or indicator), and a hint."""
        if any(config.get(key) != value for key, value in self.architecture.items()):
            return None, ""
        if indicator != self.indicator:
            return None, f"; the published {self.label} set is fitted on {self.indicator}, the default indicator"
        return list(self.coefficients), ""


class StrictDiffusersModel:
    """Strict loading for a family's subclass of a diffusers model class (put it first among the bases).

    ``released_class_name`` is the diffusers class the released ``config.json`` names (``_class_name``), which a
    folder's config must name when it names one, and which :meth:`save_as_released` writes (so diffusers loads the
    folder too). Loading builds on the meta device and assigns the checkpoint's tensors, failing with every
    missing, unexpected or mis-shaped key named (diffusers' own loader only warns about unexpected keys).
    Subclasses need no constructor of their own: they inherit the diffusers class's, whose signature diffusers reads
    the config fields off.
    """

    released_class_name: ClassVar[str]
    # The step caches' published TeaCache set for the released architecture, if one is published.
    _published_cache_set: ClassVar[PublishedCacheSet | None] = None

    def published_cache_coefficients(self, indicator: str, two_experts: bool) -> tuple[list[float] | None, str]:
        """The published TeaCache set when this model has the released architecture and ``indicator`` is the one the
        set is fitted on (None otherwise), and a hint for the error."""
        if self._published_cache_set is None:
            return None, ""
        return self._published_cache_set.for_config(self.config, indicator)  # type: ignore[attr-defined]

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]):
        """A randomly initialised model of a config mapping (private entries allowed)."""
        from .loading import public_config

        return cls.from_config(public_config(config))  # type: ignore[attr-defined]

    @classmethod
    def read_model_config(cls, folder: str | os.PathLike) -> dict[str, Any]:
        """The config.json of a folder, checked to name this model's released class."""
        from ..config import read_json_mapping

        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        config = read_json_mapping(path, "transformer config")
        name = config.get("_class_name")
        if name is not None and name != cls.released_class_name:
            raise ValueError(f"{path}: a {name} config, not a {cls.released_class_name}")
        return config

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ):
        """Load a released folder (config.json + single or sharded weights) strictly."""
        from .loading import read_folder_state_dict

        folder = Path(folder)
        state = read_folder_state_dict(folder)
        return cls.from_state(cls.read_model_config(folder), state, str(folder), torch_dtype, device)

    @classmethod
    def from_state(
        cls,
        config: Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
        source: str,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ):
        """Build ``config`` on the meta device and assign ``state`` to it, every key and shape checked."""
        from .loading import assert_materialised, cast_floating, load_into

        with torch.device("meta"):  # no wasted random init: load_into assigns the checkpoint tensors
            model = cls.from_model_config(config)
        load_into(model, cast_floating(state, torch_dtype), source=source)
        assert_materialised(model, source)
        return model.to(device).eval()

    @staticmethod
    def config_from_weights(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The model config read off a (diffusers-named) state's shapes, for single files without a config."""
        raise NotImplementedError

    @classmethod
    def from_single_file(  # type: ignore[override]
        cls,
        path: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ):
        """Load a single file in any layout ``read_weights`` takes (the family's original one converted); ``config``
        None reads it off the shapes (:meth:`config_from_weights`)."""
        state = cls.read_weights(path)  # type: ignore[attr-defined]
        return cls.from_state(config or cls.config_from_weights(state), state, str(path), torch_dtype, device)

    def save_as_released(self, target: str | os.PathLike) -> Path:
        """``target``: config.json naming the released class (which diffusers loads too) and the weights."""
        import json

        target = Path(target)
        self.save_pretrained(str(target))  # type: ignore[attr-defined]
        config_path = target / "config.json"
        config = json.loads(config_path.read_text())
        config["_class_name"] = self.released_class_name
        config_path.write_text(json.dumps(config, indent=2))
        return target


def quiet_transformers_load(
    model_class: type, folder: Path | None, dtype: torch.dtype, **kwargs: Any
) -> tuple[nn.Module, dict]:
    """``model_class.from_pretrained`` of ``folder`` (None: of the ``config`` and ``state_dict`` in ``kwargs``) with
    its loading info, without transformers' progress bar (a bar on stderr would break the one-line errors that
    follow a load)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        source = None if folder is None else str(folder)
        return model_class.from_pretrained(source, dtype=dtype, output_loading_info=True, **kwargs)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def strictly_loaded(model_class: type, loaded: tuple[nn.Module, dict], source: str) -> nn.Module:
    """The model of a :func:`quiet_transformers_load`, in eval mode, refused when any key was missing, unexpected
    or mis-shaped (transformers only warns); ``source`` names what was read, in the error."""
    from .loading import CheckpointMismatchError

    model, info = loaded
    problems = [f"{kind.replace('_', ' ')}: {sorted(map(str, keys))[:12]}" for kind, keys in info.items()
                if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys]  # fmt: skip
    if problems:
        raise CheckpointMismatchError(f"{source} does not match {model_class.__name__}: {'; '.join(problems)}")
    return model.eval()


def load_transformers_strict(model_class: type, folder: str | os.PathLike, dtype: torch.dtype, name: str) -> nn.Module:
    """A transformers model folder through transformers' own loader (which maps the checkpoint names of every
    transformers version), refused when any key is missing, unexpected or mis-shaped (transformers only warns).
    ``name`` says what the folder should hold, in errors."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no {name} in {folder}: expected config.json and weights")
    return strictly_loaded(model_class, quiet_transformers_load(model_class, folder, dtype), f"checkpoint {folder}")
