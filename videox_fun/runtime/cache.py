"""Step caching as hooks on the transformer's block stack: TeaCache and first-block cache.

On a step judged close enough to the previous one, the block stack is skipped and its cached
residual (output - input, one per stream the blocks carry) is added instead. Where the stack is
attached comes from the model's declared extension points (:mod:`videox_fun.runtime.points`):

- a model that declares a ``_block_runner`` (Wan's ``run_blocks``) has that method replaced on the
  instance (``remove()`` puts it back); hooks under it (sequence parallelism) keep applying;
- any other model (e.g. diffusers' CogVideoX, whose block loop is inside its ``forward``) has the
  ``forward`` of each block of its ``_block_lists`` replaced on the instance: the first block
  decides for the step; on a skipped step every block returns its inputs unchanged and the last
  one returns them plus the cached residuals (as diffusers' ``hooks/first_block_cache.py``).
  Sequence-parallel hooks around those blocks keep working: each rank caches the residuals of its
  own chunk, and the decision is the same on every rank (TeaCache's indicator is computed before
  the blocks, whole; the first-block cache measures through :func:`stack_relative_l1`).

Guidance passes keep separate state: the pass's branch when one is named with
:func:`cache_branch` (``ClassifierFreeGuidance`` names "cond" / "uncond" around sequential passes),
else a fingerprint of the pass's text context (a batched pass carrying both has one state).

- :class:`TeaCache` accumulates ``poly(rel_L1(indicator_t, indicator_{t-1}))`` where the
  indicator is a declared ``_cache_indicators`` module's output (Wan: time embedding or time
  projection) and the polynomial is fitted per model (published for the Wan2.1 releases, fitted
  for any model by ``videox-fun calibrate-cache``), and recomputes when the sum passes the threshold.
- :class:`FirstBlockCache` always runs the first block and skips the rest when the first block's
  residual changed less than the threshold (relative L1) since the last full step.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import read_json_mapping
from ..io.files import atomic_path
from . import points

# A model's declared block runner (``_block_runner``): runs the stack, or a slice of it, on the tokens.
RunBlocks = Callable[..., torch.Tensor]

Streams = tuple[torch.Tensor, ...]  # what the blocks carry from one to the next (hidden states, text states...)
RunPart = Callable[[Streams, slice], Streams]  # run a slice of the stack on the streams

CALIBRATION_FILE = "cache_calibration.json"


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |a - b| / mean |b|."""
    return ((current.float() - previous.float()).abs().mean() / previous.float().abs().mean().clamp(min=1e-12)).item()


# Set on a model by a sequence-parallel hook that splits the tokens inside the block stack (block hooks,
# CogVideoX): relative L1 of two per-rank chunks over the whole sequence, the same number on every rank,
# so a first-block cache decides alike on all of them.
SHARDED_RELATIVE_L1 = "_sharded_relative_l1"


def stack_relative_l1(model: nn.Module, current: torch.Tensor, previous: torch.Tensor) -> float:
    """:func:`relative_l1` of a stream inside ``model``'s block stack, over the whole sequence when it is split."""
    measure = getattr(model, SHARDED_RELATIVE_L1, None)
    return measure(current, previous) if measure is not None else relative_l1(current, previous)


def context_key(context: torch.Tensor) -> tuple:
    """A cheap fingerprint telling the conditional and unconditional passes apart: per sample, the sum of the first
    8 channels of every token of a (B, L, ...) tensor (complex ones as their real and imaginary parts; a (B, L) one,
    a key mask, whole)."""
    values = torch.view_as_real(context) if context.is_complex() else context
    tokens = values.flatten(2) if values.dim() > 2 else values.reshape(values.shape[0], -1, 1)  # (B, L, C)
    sums = tokens[:, :, :8].float().sum(dim=(1, 2))
    return (tuple(context.shape), *[round(v, 3) for v in sums.tolist()])


# A ContextVar, not a global: concurrent generations (server threads, asyncio) each see their own branch.
_BRANCH: ContextVar[str | None] = ContextVar("videox_fun_cache_branch", default=None)


@contextmanager
def cache_branch(name: str | None) -> Iterator[None]:
    """Name the guidance branch ("cond", "uncond", ...) the transformer calls inside compute.

    Step caches keep one state per branch, so the passes of sequential guidance never share a
    residual whatever their inputs look like. ``None`` (and no branch at all) falls back to the
    text-context fingerprint, which also keeps a batched pass that carries both branches apart.
    """
    token = _BRANCH.set(name)
    try:
        yield
    finally:
        _BRANCH.reset(token)


def current_branch() -> str | None:
    """The branch named by the innermost :func:`cache_branch`, or ``None``."""
    return _BRANCH.get()


def pass_key(context: torch.Tensor | None) -> tuple:
    """The state key of a pass: its named branch, else the fingerprint of its text ``context``."""
    branch = current_branch()
    if branch is not None:
        return ("branch", branch)
    if context is None:
        raise ValueError(
            "a step cache cannot tell this pass from the other guidance passes: no cache_branch(...) is active and "
            "the blocks receive no text context (declare _cache_context_argument on the model class)"
        )
    return context_key(context)


@dataclass
class CacheState:
    """What one pass (cond or uncond) remembers between steps."""

    calls: int = 0
    accumulated: float = 0.0
    previous_indicator: torch.Tensor | None = None
    previous_first_residual: torch.Tensor | None = None
    residual: Streams | None = None  # one per stream, measured from the input the skip adds it to


@dataclass
class CacheStats:
    """Block-stack evaluations done and skipped."""

    computed: int = 0
    skipped: int = 0
    decisions: list[bool] = field(default_factory=list)


class StepCache:
    """Base: attaches to the model's block stack; subclasses decide per pass (:meth:`_decide`) whether to compute.

    A pass runs through :meth:`_cached_pass`: the first block first when the policy decides on it
    (:attr:`decides_after_first_block`), then the decision, then the rest of the stack or the cached
    residuals; both attachment kinds (the model's block runner, or hooks on its blocks) drive it.
    """

    decides_after_first_block = False

    def __init__(self, model: nn.Module, num_skip_start_steps: int = 1, offload_residuals: bool = False):
        self.model = model
        self.num_skip_start_steps = num_skip_start_steps
        self.offload_residuals = offload_residuals
        self.num_steps: int | None = None
        self.states: dict[tuple, CacheState] = {}
        self.stats = CacheStats()
        runner = points.block_runner(model)
        self._seam: _RunnerSeam | _BlockHooks = _RunnerSeam(self, runner) if runner else _BlockHooks(self)
        hooks = getattr(model, "generation_hooks", [])
        model.generation_hooks = [*hooks, self]

    def begin(self, num_steps: int) -> None:
        """Forget everything: a new generation of ``num_steps`` steps starts."""
        self.num_steps = num_steps
        self.states.clear()

    def remove(self) -> None:
        """Detach: the model computes every step again (through any hook that was there before)."""
        self._seam.remove()
        self.model.generation_hooks = [h for h in self.model.generation_hooks if h is not self]

    def must_compute(self, state: CacheState) -> bool:
        """The first steps, the last step and a missing residual always compute."""
        last = self.num_steps is not None and state.calls >= self.num_steps - 1
        return state.residual is None or state.calls < self.num_skip_start_steps or last

    def _store(self, residuals: Streams) -> Streams:
        return tuple(r.to("cpu", non_blocking=True) for r in residuals) if self.offload_residuals else residuals

    def _reuse(self, streams: Streams, state: CacheState) -> Streams:
        return tuple(s + r.to(s.device, s.dtype) for s, r in zip(streams, state.residual, strict=True))

    def _record(self, computed: bool) -> None:
        self.stats.decisions.append(computed)
        if computed:
            self.stats.computed += 1
        else:
            self.stats.skipped += 1

    def _cached_pass(self, key: tuple, streams: Streams, run: RunPart) -> Streams:
        """The streams through the whole stack, computed or taken from the cache (the runner seam's driver).

        ``run(streams, part)`` runs the ``part`` slice of the stack. The block hooks follow the same
        steps spread over the blocks' calls (:class:`_BlockHooks`).
        """
        state = self.states.setdefault(key, CacheState())
        base, rest, first_residual = streams, slice(None), None
        if self.decides_after_first_block:
            base, rest = run(streams, slice(0, 1)), slice(1, None)
            first_residual = base[0] - streams[0]
        if not self._decide(state, first_residual):
            return self._reuse(base, state)
        out = run(base, rest)
        self._computed(state, tuple(o - b for o, b in zip(out, base, strict=True)))
        return out

    def _observe_first_block(self, block: nn.Module, arguments: dict[str, Any]) -> None:
        """The first block's arguments of a pass, before anything is decided (block hooks only; TeaCache reads
        indicators computed from them)."""

    def _decide(self, state: CacheState, first_residual: torch.Tensor | None) -> bool:
        """Whether this pass computes (the stack, or the part after the first block); counts the pass.

        first_residual: the first block's output - input of the leading stream, for policies that
        :attr:`decides_after_first_block`, else ``None``.
        """
        raise NotImplementedError

    def _computed(self, state: CacheState, residuals: Streams) -> None:
        """A computed pass's residuals (output - the input a skip would add them to), one per stream."""
        state.residual = self._store(residuals)


class _RunnerSeam:
    """Replaces the model's declared block runner (Wan: ``run_blocks``) on the instance."""

    lead = 0  # the index of the video stream among the residuals: the runner carries one

    def __init__(self, cache: StepCache, runner: str):
        self.cache, self.model, self.runner = cache, cache.model, runner
        # Another hook (sequence parallelism) may already wrap the runner: keep it and restore it on remove.
        self._wrapped_instance_method = runner in vars(self.model)
        self._compute_blocks: RunBlocks = getattr(self.model, runner)
        setattr(self.model, runner, self._run_blocks)

    def remove(self) -> None:
        """Put back the runner that was there before."""
        if self._wrapped_instance_method:
            setattr(self.model, self.runner, self._compute_blocks)
        else:
            delattr(self.model, self.runner)

    def _run_blocks(
        self,
        x: torch.Tensor,  # the input the cached residual is added to
        e0: torch.Tensor,  # passed on, as the rest
        context: torch.Tensor,  # tells the conditional and unconditional passes apart (without a branch)
        context_img: torch.Tensor | None,
        rope: torch.Tensor,
        context_bias: torch.Tensor | None = None,
        blocks: slice = slice(None),  # only the whole stack is cached
    ) -> torch.Tensor:
        """The hooked runner (same signature): the whole stack goes through :meth:`StepCache._cached_pass`;
        a part of it (another hook asking for a slice) is computed as asked, uncached."""

        def run(tokens: torch.Tensor, part: slice = slice(None)) -> torch.Tensor:
            return self._compute_blocks(tokens, e0, context, context_img, rope, context_bias, blocks=part)

        if blocks != slice(None):
            return run(x, blocks)
        (out,) = self.cache._cached_pass(pass_key(context), (x,), lambda streams, part: (run(streams[0], part),))
        return out


@dataclass
class _Pass:
    """One pass through hooked blocks: its state, the decision, and what a skip adds the residuals to."""

    state: CacheState
    compute: bool
    base: Streams


@dataclass(frozen=True)
class _BlockStreams:
    """The streams one block returns: their names, and whether it returns a tuple (else one tensor)."""

    names: tuple[str, ...]
    tuple_output: bool


class _BlockHooks:
    """Replaces ``forward`` of every block of the declared block lists on the instance, for a model whose
    block loop is not ours (diffusers' CogVideoX, FLUX, Qwen-Image, Z-Image): :meth:`StepCache._cached_pass`'s
    steps spread over the blocks' calls. Forward hooks could not skip a block's compute; a replaced forward can.

    The streams a block carries are the arguments it returns, in the order it returns them
    (:func:`videox_fun.runtime.points.block_streams`, per block list where the lists differ); a skip returns each
    block's stream inputs unchanged from every block but the last, which returns the first block's streams (the
    base) plus the cached residuals. Where the last block carries the base's streams joined into one (FLUX.2's single
    blocks: text then image), the residual is measured from the base joined alike.
    """

    def __init__(self, cache: StepCache):
        self.cache, self.model = cache, cache.model
        self.blocks = points.blocks(self.model, feature=type(cache).__name__)
        self.context_argument = points.cache_context_argument(self.model)
        self.streams: dict[int, _BlockStreams] = {}  # per block, learnt from its first output
        self.tail: tuple[tuple[int, ...], ...] | None = None  # per last-block stream: the base streams it carries
        self.current: _Pass | None = None
        self._previous: list[tuple[nn.Module, Any]] = []
        for index, block in enumerate(self.blocks):
            original = block.forward
            signature = inspect.signature(original)

            @functools.wraps(original)
            def forward(*args, _index=index, _original=original, _signature=signature, **kwargs):
                return self._forward(_index, _original, _signature, args, kwargs)

            self._previous.append((block, block.__dict__.get("forward")))
            block.forward = forward

    def remove(self) -> None:
        """Give every block back the forward it had before."""
        for block, previous in reversed(self._previous):
            if previous is None:
                del block.forward
            else:
                block.forward = previous
        self._previous.clear()

    # -- the streams ----------------------------------------------------------------------
    def _outputs(self, index: int, out: Any) -> Streams:
        """Block ``index``'s output as streams (learning their names the first time)."""
        if index not in self.streams:
            tuple_output = isinstance(out, tuple)
            names = points.block_streams(self.model, self.blocks[index], len(out) if tuple_output else 1)
            self.streams[index] = _BlockStreams(names, tuple_output)
        return tuple(out) if self.streams[index].tuple_output else (out,)

    def _inputs(self, index: int, bound: inspect.BoundArguments) -> Streams:
        return tuple(bound.arguments[name] for name in self.streams[index].names)

    def _format(self, index: int, streams: Streams) -> Any:
        return streams if self.streams[index].tuple_output else streams[0]

    @property
    def lead(self) -> int:
        """The index of the image (``hidden_states``) stream among the last block's streams, else 0."""
        names = self.streams[len(self.blocks) - 1].names
        return names.index("hidden_states") if "hidden_states" in names else 0

    def _lead(self, streams: Streams) -> torch.Tensor:
        """The stream the first-block decision measures: ``hidden_states`` if the blocks carry it, else the first."""
        names = self.streams[0].names
        return streams[names.index("hidden_states")] if "hidden_states" in names else streams[0]

    def _joined(self, base: Streams) -> Streams:
        """The base streams laid out as the last block returns them (:attr:`tail`)."""
        assert self.tail is not None
        return tuple(base[parts[0]] if len(parts) == 1 else torch.cat([base[i] for i in parts], dim=1)
                     for parts in self.tail)  # fmt: skip

    def _learn_tail(self, base: Streams, outputs: Streams) -> None:
        """Which base streams each of the last block's streams carries: the one of its name and length, or (a longer
        stream: FLUX.2's single blocks) all of them joined along the tokens, in the first block's order."""
        if self.tail is not None:
            return
        first, last = self.streams[0].names, self.streams[len(self.blocks) - 1].names
        tail = []
        for name, out in zip(last, outputs, strict=True):
            if name in first and base[first.index(name)].shape[1] == out.shape[1]:
                tail.append((first.index(name),))
            elif out.shape[1] == sum(stream.shape[1] for stream in base):
                tail.append(tuple(range(len(base))))
            else:
                raise points.ExtensionPointError(
                    f"model {type(self.model).__name__}: the last block's {name!r} ({out.shape[1]} tokens) is neither "
                    f"a stream of the first block ({', '.join(first)}) nor all of them joined: "
                    f"{type(self.cache).__name__} cannot add a cached residual to it (declare _block_streams)"
                )
        self.tail = tuple(tail)

    # -- one block call -------------------------------------------------------------------
    def _forward(self, index: int, original: Callable, signature: inspect.Signature, args: tuple, kwargs: dict) -> Any:
        """Block ``index`` in a pass: computed, passed through (a skipped step), or (the last) finishing the pass."""
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if index == 0:
            out = self._start(original, bound, args, kwargs)
        elif self.current is None:  # called outside a pass of the model (a block used on its own)
            return original(*args, **kwargs)
        elif self.current.compute:
            out = original(*args, **kwargs)
            self._outputs(index, out)  # learn its streams, for the passes that skip it
        else:
            out = self._format(index, self._inputs(index, bound))  # a skipped pass has computed once: names known
        if index == len(self.blocks) - 1:
            out = self._finish(out)
        return out

    def _start(self, original: Callable, bound: inspect.BoundArguments, args: tuple, kwargs: dict) -> Any:
        """The first block: key the pass, decide (after running it, for the first-block cache)."""
        cache = self.cache
        self.current = None  # a pass cut short (an exception) leaves nothing behind
        state = cache.states.setdefault(pass_key(bound.arguments.get(self.context_argument)), CacheState())
        cache._observe_first_block(self.blocks[0], bound.arguments)
        if cache.decides_after_first_block:
            out = original(*args, **kwargs)
            first = self._outputs(0, out)
            inputs = self._inputs(0, bound)
            compute = cache._decide(state, self._lead(first) - self._lead(inputs))
            self.current = _Pass(state, compute, first)
            return out
        compute = cache._decide(state, None)
        out = original(*args, **kwargs) if compute else None
        if compute:
            self._outputs(0, out)
        # a skip is only decided once a computed pass stored residuals, so the streams are known by then
        base = self._inputs(0, bound)
        self.current = _Pass(state, compute, base)
        return out if compute else self._format(0, base)

    def _finish(self, out: Any) -> Any:
        """The last block: store the residuals of a computed pass, or return the skip's result."""
        current, self.current = self.current, None
        last = len(self.blocks) - 1
        if current is None:
            return out
        if not current.compute:
            return self._format(last, self.cache._reuse(self._joined(current.base), current.state))
        outputs = self._outputs(last, out)
        self._learn_tail(current.base, outputs)
        residuals = tuple(o - b for o, b in zip(outputs, self._joined(current.base), strict=True))
        self.cache._computed(current.state, residuals)
        return out


class IndicatorProbe:
    """Keeps the latest value of the indicator TeaCache compares across steps: the output of a declared
    ``_cache_indicators`` module, or what a declared ``_cache_block_indicators`` method computes from the first
    block's arguments (:meth:`observe_first_block`)."""

    def __init__(self, model: nn.Module, indicator: str):
        self.value: torch.Tensor | None = None
        self._compute = points.cache_block_indicator(model, indicator, feature="TeaCache")
        self._hook = None
        if self._compute is None:
            module = points.cache_indicator_module(model, indicator, feature="TeaCache")
            self._hook = module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.value = output.detach()

    def observe_first_block(self, block: nn.Module, arguments: dict[str, Any]) -> None:
        """Compute a first-block indicator from the pass's first block and its arguments (by name)."""
        if self._compute is not None:
            self.value = self._compute(block, arguments).detach()

    def change(self, model: nn.Module, previous: torch.Tensor) -> float:
        """Relative L1 change of the indicator since ``previous``; a first-block indicator is per token of the
        stack's lead stream, so it is measured over the whole sequence when sequence parallelism splits it."""
        assert self.value is not None
        if self._compute is not None:
            return stack_relative_l1(model, self.value, previous)
        return relative_l1(self.value, previous)

    def remove(self) -> None:
        """Detach the forward hook."""
        if self._hook is not None:
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
        try:
            super().__init__(model, num_skip_start_steps, offload_residuals)
        except Exception:
            self.probe.remove()  # a model that cannot be cached keeps no stray hook
            raise
        self.polynomial = np.poly1d(coefficients)
        self.threshold = threshold

    def remove(self) -> None:
        """Detach the indicator hook too."""
        self.probe.remove()
        super().remove()

    def _observe_first_block(self, block: nn.Module, arguments: dict[str, Any]) -> None:
        self.probe.observe_first_block(block, arguments)

    def _decide(self, state: CacheState, first_residual: torch.Tensor | None) -> bool:
        indicator = self.probe.value
        compute = self.must_compute(state) or state.previous_indicator is None
        if not compute:
            state.accumulated += float(self.polynomial(self.probe.change(self.model, state.previous_indicator)))
            compute = state.accumulated >= self.threshold
        state.previous_indicator = indicator
        state.calls += 1
        self._record(compute)
        if compute:
            state.accumulated = 0.0
        return compute


class FirstBlockCache(StepCache):
    """Run block 0; skip the others while its residual moved less than ``threshold`` (relative L1).

    On the runner seam both parts go through the wrapped runner, so a hook under this one
    (sequence parallelism) runs them too; its gather also gives every rank the same decision. Under
    block hooks the first block's residual is this rank's chunk: :func:`stack_relative_l1` measures
    it over the whole sequence, so every rank decides alike there too.
    """

    decides_after_first_block = True

    def __init__(
        self, model: nn.Module, threshold: float, num_skip_start_steps: int = 1, offload_residuals: bool = False
    ):
        super().__init__(model, num_skip_start_steps, offload_residuals)
        self.threshold = threshold

    def _decide(self, state: CacheState, first_residual: torch.Tensor | None) -> bool:
        compute = self.must_compute(state) or state.previous_first_residual is None
        if not compute:
            compute = stack_relative_l1(self.model, first_residual, state.previous_first_residual) >= self.threshold
        state.calls += 1
        self._record(compute)
        if compute:
            state.previous_first_residual = first_residual
        return compute


# ----------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------
class CacheRecorder(StepCache):
    """Computes every step and records (indicator change, residual change) pairs for fitting.

    The residual change is measured on the leading stream (the video or image tokens: ``hidden_states`` where the
    blocks carry text too).
    """

    def __init__(self, model: nn.Module, indicator: str = "time_embedding"):
        self.probe = IndicatorProbe(model, indicator)
        try:
            super().__init__(model, num_skip_start_steps=0)
        except Exception:
            self.probe.remove()
            raise
        self.samples: list[tuple[float, float]] = []

    def remove(self) -> None:
        """Detach the indicator hook too."""
        self.probe.remove()
        super().remove()

    def _observe_first_block(self, block: nn.Module, arguments: dict[str, Any]) -> None:
        self.probe.observe_first_block(block, arguments)

    def _decide(self, state: CacheState, first_residual: torch.Tensor | None) -> bool:
        return True

    def _computed(self, state: CacheState, residuals: Streams) -> None:
        lead, previous = self._seam.lead, state.residual
        if state.previous_indicator is not None:
            self.samples.append(
                (self.probe.change(self.model, state.previous_indicator), relative_l1(residuals[lead], previous[lead]))
            )
        state.previous_indicator, state.residual = self.probe.value, residuals
        self._record(True)


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

    two_experts: ``model`` is one expert of a two-expert model (its family may publish one set for both).
    """
    if folder is not None and (Path(folder) / CALIBRATION_FILE).is_file():
        data = _read_calibration(Path(folder) / CALIBRATION_FILE)
        if data["indicator"] == indicator:
            return data["coefficients"]
    # The family's published set for this architecture, declared on the model class (None: none published).
    publish = getattr(model, "published_cache_coefficients", None)
    published, hint = publish(indicator, two_experts) if publish is not None else (None, "")
    if published is None:
        where = f" and no {CALIBRATION_FILE} in {folder}" if folder is not None else ""
        raise ValueError(
            f"no TeaCache coefficients for this model ({type(model).__name__}) and indicator {indicator}{where}: "
            f"run `videox-fun calibrate-cache --model ...` to fit them, or use the first-block cache{hint}"
        )
    return published
