"""Family specs: what the generic trainer needs to know about one model family.

The trainer never branches on a model name. A :class:`FamilySpec` says how to load the
models of a family, which modes a loaded model can serve, which modules LoRA adapts, how a
batch (decoded pixels or cached latents) becomes the transformer's inputs, how samples are
encoded for the latent cache, and which objective trains it (the prediction target and the
loss: :mod:`videox_fun.training.objectives`). Specs register by name in :data:`SPECS`; the
model folder's family (``videox_fun.families``) names its spec, and ``--family`` overrides it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..config import TrainConfig
from ..objectives import FlowMatching, Objective, VPrediction, objective_loss, shift_sigmas

__all__ = [
    "SPECS",
    "Device",
    "FamilyModels",
    "FamilySpec",
    "FlowMatching",
    "Objective",
    "TrainInputs",
    "VPrediction",
    "choose",
    "flow_matching_loss",
    "get_spec",
    "objective_loss",
    "on_device",
    "register_spec",
    "sample_generators",
    "shift_sigmas",
    "spec_name",
    "uniform",
]

Device = torch.device | str  # a device or its name ("cpu", "cuda:0")


@dataclass
class FamilyModels:
    """The loaded models of one family: the trained transformer and the frozen helpers."""

    transformer: nn.Module
    frozen: dict[str, nn.Module]
    folder: Path
    settings: Any = None  # the family's own model config (e.g. videox_fun.config.ModelConfig)
    low_vram: bool = False  # frozen helpers live on the CPU and visit the accelerator only when used
    sigma_range: tuple[float, float] = (0.0, 1.0)  # noise levels this transformer denoises (an expert's share)


@dataclass
class TrainInputs:
    """One micro-batch ready for the objective: clean latents x0 and the transformer's other inputs."""

    latents: torch.Tensor  # (B, z, F, h, w)
    conditions: dict[str, torch.Tensor] = field(default_factory=dict)
    # (B, F) bool: latent frames given clean (not noised, not in the loss). None: every frame is noised.
    known_frames: torch.Tensor | None = None
    # (B, F, h, w): per-latent-pixel scale of the timestep, for specs that give tokens their own timesteps
    # (0 on held frames). None: one timestep per sample.
    timestep_scale: torch.Tensor | None = None


class FamilySpec(Protocol):
    """What a model family provides to the generic trainer."""

    name: str
    lora_target_modules: tuple[str, ...]

    def load_models(self, config: TrainConfig, dtype: torch.dtype) -> FamilyModels:
        """Load transformer (trainable) and frozen helpers on the CPU; fail clearly if the mode cannot be served."""
        ...

    def check_mode(self, models: FamilyModels, mode: str) -> None:
        """Raise ValueError, saying what to change, when the loaded model cannot train ``mode``."""
        ...

    def build_inputs(
        self, models: FamilyModels, batch: dict, mode: str, generators: Sequence[torch.Generator], device: Device
    ) -> TrainInputs:
        """A collated batch (pixels or cached latents) -> TrainInputs, with per-sample randomness."""
        ...

    def encode_for_cache(
        self, models: FamilyModels, batch: dict, mode: str, device: Device
    ) -> list[dict[str, torch.Tensor]]:
        """Per-sample tensors written to the latent cache."""
        ...

    def predict(
        self, transformer: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: TrainInputs
    ) -> torch.Tensor:
        """The transformer's prediction (B, z, F', h, w) for noisy latents at ``timesteps`` (B,), the
        objective's ``model_timesteps`` (in [0, 1000])."""
        ...

    def objective(self, models: FamilyModels, config: TrainConfig) -> Objective:
        """The training objective (prediction target, noise levels, loss) of this family's models.

        Refuses (ValueError, one line) settings of another objective that it would ignore.
        """
        ...

    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Write a fully trained transformer in the family's release layout."""
        ...

    # Optional: ``save_lora(state, path, rank, alpha) -> Path`` writes the LoRA file in the layout the
    # family's tools read; without it the trainer writes training.lora.save_lora_file's (Wan keys).

    def sample(
        self, models: FamilyModels, transformer: nn.Module, prompt: str, seed: int, device: Device
    ) -> tuple[torch.Tensor, float]:
        """A validation video (F, H, W, 3) uint8 and its fps, sampled with the transformer being trained."""
        ...


@contextmanager
def on_device(module: nn.Module, device: torch.device, low_vram: bool) -> Iterator[nn.Module]:
    """Run ``module`` on ``device``; in low-VRAM mode it lives on the CPU and visits only for this use."""
    if low_vram:
        module.to(device)
    try:
        yield module
    finally:
        if low_vram:
            module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# The objectives moved to training/objectives.py; these names stay importable from here.
flow_matching_loss = objective_loss  # the generic loss of one micro-batch (any objective)


def sample_generators(seed: int, step: int, micro: int, positions: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, step, micro-step, position in the global batch).

    Noise, sigmas, masks and text dropout of a sample then depend only on where it sits in the
    global batch, not on the process that holds it: two processes with batch B draw exactly what
    one process with batch 2B draws, and a resumed run draws what the uninterrupted one drew.
    """
    generators = []
    for position in positions:
        digest = hashlib.sha256(f"{seed}/{step}/{micro}/{position}".encode()).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return generators


def uniform(generator: torch.Generator) -> float:
    """A draw in [0, 1) from ``generator``."""
    return float(torch.rand((), generator=generator))


def choose(generator: torch.Generator, count: int) -> int:
    """A uniform index in [0, count) from ``generator``."""
    return min(count - 1, math.floor(uniform(generator) * count))


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------
SPECS: dict[str, Callable[[TrainConfig], FamilySpec]] = {}


def register_spec(name: str) -> Callable:
    """Class decorator: make a spec available as ``--family name``."""

    def wrap(cls):
        SPECS[name] = cls
        return cls

    return wrap


# The modules of the built-in specs: each registers its spec on import.
SPEC_MODULES = (
    "videox_fun.training.specs.wan",
    "videox_fun.training.specs.cogvideox",
    "videox_fun.training.specs.image",
)


def _load_specs() -> None:
    import importlib

    for module in SPEC_MODULES:
        importlib.import_module(module)


def spec_name(config: TrainConfig) -> str:
    """The spec that trains ``config``'s model: ``--family`` when given, else the one its family names.

    The family is recognised from the model folder's config files (no weights are read).
    """
    if config.family:
        return config.family
    from ...families import recognise
    from ...registry import resolve_model

    folder = resolve_model(config.pretrained_model_name_or_path)
    family = recognise(folder, config.config_path).family
    if not family.training_spec:
        raise ValueError(f"{folder} is a {family.name} model, and that family declares no training spec")
    return family.training_spec


def get_spec(config: TrainConfig) -> FamilySpec:
    """The spec of ``config``'s model (:func:`spec_name`), set up with the config."""
    _load_specs()
    name = spec_name(config)
    if name not in SPECS:
        raise ValueError(f"unknown model family {name!r} (--family); known: {', '.join(sorted(SPECS))}")
    return SPECS[name](config)
