"""Step caching as hooks on the transformer's block stack: TeaCache and first-block cache.

Both replace ``model.run_blocks`` on the instance (``remove()`` puts it back): on a step judged
close enough to the previous one, the block stack is skipped and its cached residual
(output - input) is added instead. Conditional and unconditional passes keep separate state
(keyed by a fingerprint of their text context), so batched and sequential CFG both work.

- :class:`TeaCache` accumulates ``poly(rel_L1(indicator_t, indicator_{t-1}))`` where the
  indicator is the time embedding (or time projection) and the polynomial is fitted per model
  (published for the Wan2.1 releases, fitted for any model by :func:`calibrate`), and recomputes
  when the sum passes the threshold.
- :class:`FirstBlockCache` always runs the first block and skips the rest when the first block's
  residual changed less than the threshold (relative L1) since the last full step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..config import read_json_mapping
from ..io.files import atomic_path
from ..models.wan.variants import PRESETS

if TYPE_CHECKING:
    from ..models.wan.transformer import RunBlocks

# Published TeaCache coefficients for Wan2.1 (highest power first), see ARCHITECTURE.md.
TEACACHE_COEFFICIENTS: dict[str, dict[str, list[float]]] = {
    "time_embedding": {
        "Wan2.1-T2V-1.3B": [2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01],
        "Wan2.1-T2V-14B": [-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404],
        "Wan2.1-I2V-14B-480P": [-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01],
        "Wan2.1-I2V-14B-720P": [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683],
    },
    "time_projection": {
        "Wan2.1-T2V-1.3B": [-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02],
        "Wan2.1-T2V-14B": [-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01],
        "Wan2.1-I2V-14B-480P": [2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01],
        "Wan2.1-I2V-14B-720P": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
    },
}
# Wan2.2 A14B: VideoX-Fun's one set for both experts, fitted on the modulated input. Its experts
# have Wan2.1-14B's architecture, so matching the config alone would hand them Wan2.1's set.
WAN22_A14B_COEFFICIENTS: dict[str, list[float]] = {
    "time_projection": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
}
CALIBRATION_FILE = "cache_calibration.json"
_ARCHITECTURE_FIELDS = ("model_type", "in_dim", "dim", "ffn_dim", "num_heads", "num_layers", "out_dim")


def preset_of(config: Mapping[str, Any]) -> str | None:
    """The released preset whose architecture equals ``config`` (matched on fields, not on a path)."""
    for name, preset in PRESETS.items():
        if all(preset.get(k) == config.get(k) for k in _ARCHITECTURE_FIELDS):
            return name
    return None


def published_coefficients(config: Mapping[str, Any], indicator: str = "time_embedding") -> list[float] | None:
    """TeaCache coefficients published for this architecture, if any.

    I2V-14B 480P and 720P share one architecture; the 480P fit is returned for both.
    """
    name = preset_of(config)
    return TEACACHE_COEFFICIENTS[indicator].get(name) if name else None


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |a - b| / mean |b|."""
    return ((current.float() - previous.float()).abs().mean() / previous.float().abs().mean().clamp(min=1e-12)).item()


def context_key(context: torch.Tensor) -> tuple:
    """A cheap fingerprint telling the conditional and unconditional passes apart."""
    sums = context[:, :, :8].float().sum(dim=(1, 2))
    return (tuple(context.shape), *[round(v, 3) for v in sums.tolist()])


@dataclass
class CacheState:
    """What one pass (cond or uncond) remembers between steps."""

    calls: int = 0
    accumulated: float = 0.0
    previous_indicator: torch.Tensor | None = None
    previous_first_residual: torch.Tensor | None = None
    residual: torch.Tensor | None = None


@dataclass
class CacheStats:
    """Block-stack evaluations done and skipped."""

    computed: int = 0
    skipped: int = 0
    decisions: list[bool] = field(default_factory=list)


class StepCache:
    """Base: replaces ``model.run_blocks``; subclasses decide per call (:meth:`_cached_run`) whether to compute."""

    def __init__(self, model: nn.Module, num_skip_start_steps: int = 1, offload_residuals: bool = False):
        self.model = model
        self.num_skip_start_steps = num_skip_start_steps
        self.offload_residuals = offload_residuals
        self.num_steps: int | None = None
        self.states: dict[tuple, CacheState] = {}
        self.stats = CacheStats()
        # Another hook (sequence parallelism) may already wrap run_blocks: keep it and restore it on remove.
        self._wrapped_instance_method = "run_blocks" in vars(model)
        self._compute_blocks: RunBlocks = model.run_blocks
        model.run_blocks = self._run_blocks
        hooks = getattr(model, "generation_hooks", [])
        model.generation_hooks = [*hooks, self]

    def begin(self, num_steps: int) -> None:
        """Forget everything: a new generation of ``num_steps`` steps starts."""
        self.num_steps = num_steps
        self.states.clear()

    def remove(self) -> None:
        """Detach: the model computes every step again (through any hook that was there before)."""
        if self._wrapped_instance_method:
            self.model.run_blocks = self._compute_blocks
        else:
            del self.model.run_blocks
        self.model.generation_hooks = [h for h in self.model.generation_hooks if h is not self]

    def must_compute(self, state: CacheState) -> bool:
        """The first steps, the last step and a missing residual always compute."""
        last = self.num_steps is not None and state.calls >= self.num_steps - 1
        return state.residual is None or state.calls < self.num_skip_start_steps or last

    def _store(self, residual: torch.Tensor) -> torch.Tensor:
        return residual.to("cpu", non_blocking=True) if self.offload_residuals else residual

    def _reuse(self, x: torch.Tensor, state: CacheState) -> torch.Tensor:
        return x + state.residual.to(x.device, x.dtype)

    def _record(self, computed: bool) -> None:
        self.stats.decisions.append(computed)
        if computed:
            self.stats.computed += 1
        else:
            self.stats.skipped += 1

    def _run_blocks(
        self,
        x: torch.Tensor,  # the input the cached residual is added to
        e0: torch.Tensor,  # passed on, as the rest
        context: torch.Tensor,  # tells the conditional and unconditional passes apart
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
        blocks: slice = slice(None),  # only the whole stack is cached
    ) -> torch.Tensor:
        """The hooked ``run_blocks`` (same signature): the whole stack goes through :meth:`_cached_run`;
        a part of it (another hook asking for a slice) is computed as asked, uncached."""

        def run(tokens: torch.Tensor, part: slice = slice(None)) -> torch.Tensor:
            return self._compute_blocks(tokens, e0, context, context_img, rope, context_bias, blocks=part)

        if blocks != slice(None):
            return run(x, blocks)
        return self._cached_run(x, context, run)

    def _cached_run(self, x: torch.Tensor, context: torch.Tensor, run: Callable[..., torch.Tensor]) -> torch.Tensor:
        """x (B, L, C) -> (B, L, C) through the whole stack, computed or taken from the cache.

        context (B, L_text, C) tells the passes apart; ``run(tokens, part=slice(None))`` runs the wrapped
        ``run_blocks`` (the ``part`` slice of the stack) with this call's other arguments.
        """
        raise NotImplementedError


class IndicatorProbe:
    """Keeps the latest output of the time embedding (or projection) that TeaCache compares across steps."""

    def __init__(self, model: nn.Module, indicator: str):
        if indicator not in ("time_embedding", "time_projection"):
            raise ValueError(f"TeaCache indicator must be time_embedding or time_projection, got {indicator!r}")
        self.value: torch.Tensor | None = None
        self._hook = getattr(model, indicator).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.value = output.detach()

    def remove(self) -> None:
        """Detach the forward hook."""
        self._hook.remove()


class TeaCache(StepCache):
    """Skip the block stack while the accumulated estimated change stays under ``threshold``."""

    def __init__(
        self,
        model: nn.Module,
        coefficients: list[float],
        threshold: float,
        indicator: str = "time_embedding",
        num_skip_start_steps: int = 1,
        offload_residuals: bool = False,
    ):
        self.probe = IndicatorProbe(model, indicator)
        super().__init__(model, num_skip_start_steps, offload_residuals)
        self.polynomial = np.poly1d(coefficients)
        self.threshold = threshold

    def remove(self) -> None:
        """Detach the indicator hook too."""
        self.probe.remove()
        super().remove()

    def _cached_run(self, x: torch.Tensor, context: torch.Tensor, run: Callable[..., torch.Tensor]) -> torch.Tensor:
        state = self.states.setdefault(context_key(context), CacheState())
        indicator = self.probe.value
        compute = self.must_compute(state) or state.previous_indicator is None
        if not compute:
            state.accumulated += float(self.polynomial(relative_l1(indicator, state.previous_indicator)))
            compute = state.accumulated >= self.threshold
        state.previous_indicator = indicator
        state.calls += 1
        self._record(compute)
        if not compute:
            return self._reuse(x, state)
        state.accumulated = 0.0
        out = run(x)
        state.residual = self._store(out - x)
        return out


class FirstBlockCache(StepCache):
    """Run block 0; skip the others while its residual moved less than ``threshold`` (relative L1)."""

    def __init__(
        self, model: nn.Module, threshold: float, num_skip_start_steps: int = 1, offload_residuals: bool = False
    ):
        super().__init__(model, num_skip_start_steps, offload_residuals)
        self.threshold = threshold

    def _cached_run(self, x: torch.Tensor, context: torch.Tensor, run: Callable[..., torch.Tensor]) -> torch.Tensor:
        state = self.states.setdefault(context_key(context), CacheState())
        # Both parts go through the wrapped run_blocks, so a hook under this one (sequence
        # parallelism) runs them too; its gather also gives every rank the same decision.
        first = run(x, slice(0, 1))
        first_residual = first - x
        compute = self.must_compute(state) or state.previous_first_residual is None
        if not compute:
            compute = relative_l1(first_residual, state.previous_first_residual) >= self.threshold
        state.calls += 1
        self._record(compute)
        if not compute:
            return self._reuse(first, state)
        state.previous_first_residual = first_residual
        out = run(first, slice(1, None))
        state.residual = self._store(out - first)
        return out


# ----------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------
class CacheRecorder(StepCache):
    """Computes every step and records (indicator change, residual change) pairs for fitting."""

    def __init__(self, model: nn.Module, indicator: str = "time_embedding"):
        self.probe = IndicatorProbe(model, indicator)
        super().__init__(model, num_skip_start_steps=0)
        self.samples: list[tuple[float, float]] = []

    def remove(self) -> None:
        """Detach the indicator hook too."""
        self.probe.remove()
        super().remove()

    def _cached_run(self, x: torch.Tensor, context: torch.Tensor, run: Callable[..., torch.Tensor]) -> torch.Tensor:
        state = self.states.setdefault(context_key(context), CacheState())
        out = run(x)
        residual = out - x
        if state.previous_indicator is not None:
            self.samples.append(
                (relative_l1(self.probe.value, state.previous_indicator), relative_l1(residual, state.residual))
            )
        state.previous_indicator, state.residual = self.probe.value, residual
        self._record(True)
        return out


def fit_coefficients(samples: list[tuple[float, float]], degree: int = 4) -> list[float]:
    """Least-squares polynomial from indicator change to residual change (highest power first)."""
    if len(samples) <= degree:
        raise ValueError(f"need more than {degree} step pairs to fit a degree-{degree} polynomial, got {len(samples)}")
    xs, ys = np.array(samples).T
    return [float(c) for c in np.polyfit(xs, ys, degree)]


def save_calibration(path: str | Path, coefficients: list[float], indicator: str, samples: int, note: str = "") -> None:
    """Write fitted coefficients beside a model (``cache_calibration.json``).

    The write is atomic: a failed one leaves the previous file (or none), never half a file. Missing
    folders are made; a folder as ``path`` is a ``ValueError``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the calibration needs a file name (e.g. {path / CALIBRATION_FILE})")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"indicator": indicator, "coefficients": coefficients, "samples": samples, "note": note}
    text = json.dumps(data, indent=2)
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def _read_calibration(path: str | Path) -> dict[str, Any]:
    """A ``cache_calibration.json``: its ``indicator`` (a name) and ``coefficients`` (numbers), checked.

    A broken or incomplete file raises a one-line ``ValueError`` naming it.
    """
    data = read_json_mapping(path, "cache calibration")
    indicator, coefficients = data.get("indicator"), data.get("coefficients")
    if not isinstance(indicator, str):
        raise ValueError(f"{path}: a cache calibration needs an 'indicator' name, got {indicator!r}")
    numbers = isinstance(coefficients, list) and all(type(c) in (int, float) for c in coefficients)
    if not (numbers and coefficients):
        raise ValueError(f"{path}: a cache calibration needs a non-empty list of 'coefficients', got {coefficients!r}")
    return data


def coefficients_for(
    model: nn.Module, folder: str | Path | None, indicator: str = "time_embedding", two_experts: bool = False
) -> list[float]:
    """The model folder's own calibration if present, else the published one of its architecture.

    two_experts: ``model`` is an expert of Wan2.2 A14B, whose set is published for time_projection only.
    """
    if folder is not None and (Path(folder) / CALIBRATION_FILE).is_file():
        data = _read_calibration(Path(folder) / CALIBRATION_FILE)
        if data["indicator"] == indicator:
            return data["coefficients"]
    if two_experts:
        published = WAN22_A14B_COEFFICIENTS.get(indicator)
        hint = "; Wan2.2 A14B's published set is for --teacache-indicator time_projection"
    else:
        published, hint = published_coefficients(model.config, indicator), ""
    if published is None:
        raise ValueError(
            f"no TeaCache coefficients for this model and indicator {indicator}: run `videox-fun calibrate-cache "
            f"--model ...` to fit them, or use the first-block cache{hint}"
        )
    return published
