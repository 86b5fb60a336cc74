"""What the wrappers around the field's models (VAE, text and image encoders) share."""

from __future__ import annotations

import os
from collections.abc import Mapping
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
