"""Family specs: what the generic trainer needs to know about one model family.

The trainer never branches on a model name. A :class:`FamilySpec` says how to load the
models of a family, which modes a loaded model can serve, which modules LoRA adapts, how a
batch (decoded pixels or cached latents) becomes the transformer's inputs, how samples are
encoded for the latent cache, and which objective trains it. Specs register by name in
:data:`SPECS`; ``--family`` picks one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ...pipelines.schedulers import NUM_TRAIN_TIMESTEPS
from ..config import TrainConfig

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
        """The transformer's prediction for noisy latents at ``timesteps`` (B,) in [0, NUM_TRAIN_TIMESTEPS]."""
        ...

    def default_shift(self, models: FamilyModels) -> float:
        """The flow shift the family samples with (training applies the same one)."""
        ...

    def save_full(self, transformer: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Write a fully trained transformer in the family's release layout."""
        ...

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


# ----------------------------------------------------------------------------------------
# The flow-matching objective (Wan, and every other rectified-flow family)
# ----------------------------------------------------------------------------------------
def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow shift of the samplers: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


@dataclass
class FlowMatching:
    """x_t = (1 - s) x0 + s noise, target = noise - x0, timestep = NUM_TRAIN_TIMESTEPS s (1000 s).

    Sigmas come from a logit-normal (SD3), uniform or "mode" density, then the flow shift is
    applied exactly as the inference schedulers apply it; the loss can be weighted over sigma
    (none / sigma_sqrt / cosmap). The densities and weights are diffusers' SD3 functions.
    """

    sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    weighting: str = "none"
    shift: float = 1.0
    # The share of the noise range trained (Wan2.2 experts: [boundary, 1] high, [0, boundary) low):
    # the shifted density is mapped onto it, so each expert sees the same shape over its own range.
    sigma_range: tuple[float, float] = (0.0, 1.0)

    def sample_sigmas(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One sigma per sample, each drawn from that sample's generator: (B,) in (0, 1)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = {"uniform": "none"}.get(self.sampling, self.sampling)
        u = torch.cat(
            [
                compute_density_for_timestep_sampling(
                    scheme, 1, self.logit_mean, self.logit_std, self.mode_scale, generator=g
                )
                for g in generators
            ]
        )
        low, high = self.sigma_range
        return low + (high - low) * shift_sigmas(u.clamp(1e-5, 1.0 - 1e-5), self.shift)

    @staticmethod
    def noise_like(latents: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Gaussian noise (B, ...) drawn per sample from its generator (on the CPU, so any device agrees)."""
        shape = latents.shape[1:]
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(latents.device)

    @staticmethod
    def noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - s) x0 + s noise."""
        s = sigmas.view(-1, *([1] * (latents.dim() - 1))).to(latents)
        return (1.0 - s) * latents + s * noise

    def loss(
        self, prediction: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
    ) -> torch.Tensor:
        """Weighted MSE to the velocity target noise - x0, averaged over samples (fp32)."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        target = (noise - latents).float()
        per_sample = (prediction.float() - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        weights = compute_loss_weighting_for_sd3(self.weighting, sigmas.float().to(per_sample.device))
        return (weights * per_sample).mean()


def flow_matching_loss(
    spec: FamilySpec,
    models: FamilyModels,
    transformer: nn.Module,
    objective: FlowMatching,
    batch: dict,
    mode: str,
    generators: Sequence[torch.Generator],
    device: Device,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """The flow-matching loss (a scalar) of one (micro-)batch, as every training step computes it.

    ``spec`` builds the inputs (clean latents x0 (B, z, F', h, w) and conditions), then per sample:
    sigma (B,), noise, x_t = (1 - sigma) x0 + sigma noise, the prediction of ``transformer`` at
    timesteps sigma x NUM_TRAIN_TIMESTEPS (inside ``autocast()``, e.g. ``accelerator.autocast``), and
    the objective's weighted MSE to noise - x0. All draws come from ``generators`` (one per sample).
    """
    inputs = spec.build_inputs(models, batch, mode, generators, device)
    sigmas = objective.sample_sigmas(generators).to(device)  # (B,)
    noise = objective.noise_like(inputs.latents, generators)
    noisy = objective.noisy(inputs.latents, noise, sigmas)
    with autocast():
        prediction = spec.predict(transformer, noisy, sigmas * NUM_TRAIN_TIMESTEPS, inputs)
    return objective.loss(prediction, inputs.latents, noise, sigmas)


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


def get_spec(config: TrainConfig) -> FamilySpec:
    """The spec of ``config.family``, set up with the config."""
    from . import wan  # noqa: F401  (registers the Wan family)

    if config.family not in SPECS:
        raise ValueError(f"unknown model family {config.family!r} (--family); known: {', '.join(sorted(SPECS))}")
    return SPECS[config.family](config)
