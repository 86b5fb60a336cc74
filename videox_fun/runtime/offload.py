"""Memory modes as removable hooks: whole-model offload, leaf-level streaming and block swap.

``apply_memory_mode(pipe, mode, device)`` gives the six modes users know from VideoX-Fun:

- ``model_full_load``: every component on the device.
- ``model_cpu_offload``: components live on the CPU; each moves to the device when it is
  called and the previous one moves back (one big model on the device at a time). A model declared to run
  beside the transformer (a Fun control stream: ``_runs_beside_transformer``) moves with it, as one unit.
- ``sequential_cpu_offload``: every module's own weights move in just before it runs and out
  right after (smallest footprint, slowest).
- ``model_group_offload``: block swap for the transformer: ``resident_blocks`` stay on the
  device, the others live in pinned CPU memory and the next one is prefetched on a side CUDA
  stream while the current block computes; the rest of the pipeline as in model_cpu_offload.
  The blocks are those of the model's declared ``_block_lists`` (:mod:`videox_fun.runtime.points`),
  so it serves any family.
- ``*_and_qfloat8``: the same with the transformer's block linears stored in float8
  (:mod:`videox_fun.runtime.fp8`), and those of the models beside it (a Fun control stream's copied blocks).

On a machine without an accelerator the execution device is the CPU and the moves are no-ops,
so every mode runs and gives the same output: the hooks' logic is tested on CPUs, the memory
figures are measured on GPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import points

if TYPE_CHECKING:
    from ..families import Pipeline

MEMORY_MODES = (
    "model_full_load",
    "model_full_load_and_qfloat8",
    "model_cpu_offload",
    "model_cpu_offload_and_qfloat8",
    "sequential_cpu_offload",
    "model_group_offload",
)
OFFLOAD_DEVICE = torch.device("cpu")


@dataclass
class MoveLog:
    """Counts of weight moves, so tests and benchmarks can see what a mode did."""

    onloads: int = 0
    offloads: int = 0
    prefetches: int = 0
    order: list[str] = field(default_factory=list)
    hooks: list = field(default_factory=list)  # what the mode attached, each with remove()

    def remove(self) -> None:
        """Detach every hook the mode attached (weights stay where they are)."""
        for hook in reversed(self.hooks):
            hook.remove()
        self.hooks.clear()


def _move_own_tensors(module: nn.Module, device: torch.device, non_blocking: bool = False) -> None:
    """Move only the parameters and buffers that ``module`` itself owns (not its children's)."""
    for param in module.parameters(recurse=False):
        if param.device != device:
            param.data = param.data.to(device, non_blocking=non_blocking)
    for name, buf in module.named_buffers(recurse=False):
        if buf.device != device:
            module._buffers[name] = buf.to(device, non_blocking=non_blocking)


def _pin(module: nn.Module) -> None:
    """Page-lock CPU weights so host-to-device copies can overlap compute (CUDA only)."""
    if not torch.cuda.is_available():
        return
    for param in module.parameters():
        if param.device.type == "cpu" and not param.data.is_pinned():
            param.data = param.data.pin_memory()


# ----------------------------------------------------------------------------------------
# model_cpu_offload: whole components take turns on the device
# ----------------------------------------------------------------------------------------
class ComponentOffload:
    """Moves components to the device when one of their entry methods is called, one unit at a time.

    A unit is a component and the models that must be on the device with it (a transformer and the Fun control
    stream that runs inside its forward or reads its modules): they move in and out together.
    """

    def __init__(self, device: torch.device, log: MoveLog | None = None):
        self.device = torch.device(device)
        self.active: tuple[nn.Module, ...] = ()
        self.log = log or MoveLog()
        self._units: dict[int, tuple[nn.Module, ...]] = {}
        self._restore: list[Callable[[], None]] = []

    def activate(self, module: nn.Module, name: str) -> None:
        """Put ``module``'s unit on the device and send the models of the previously active unit back to the CPU
        (those that are not in the new unit)."""
        unit = self._units.get(id(module), (module,))
        if module in self.active:
            return
        for previous in self.active:
            if previous not in unit:
                previous.to(OFFLOAD_DEVICE)
                self.log.offloads += 1
        for member in unit:
            member.to(self.device)
        self.active = unit
        self.log.onloads += 1
        self.log.order.append(name)

    def attach(
        self, module: nn.Module, name: str, methods: Iterable[str] = ("forward",), unit: Iterable[nn.Module] = ()
    ) -> None:
        """Wrap ``module``'s entry methods (e.g. ``encode`` / ``decode`` of a VAE) to activate it first; ``unit``:
        the models that go to the device with it."""
        module.to(OFFLOAD_DEVICE)
        self._units[id(module)] = (module, *[member for member in unit if member is not module])
        for method in methods:
            original = getattr(module, method)

            @functools.wraps(original)
            def wrapped(*args, _original=original, **kwargs):
                self.activate(module, name)
                return _original(*args, **kwargs)

            setattr(module, method, wrapped)
            self._restore.append(functools.partial(delattr, module, method))

    def remove(self) -> None:
        """Undo every wrap (the methods fall back to the class's)."""
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()


# ----------------------------------------------------------------------------------------
# sequential_cpu_offload: each module's own weights stream in and out around its forward
# ----------------------------------------------------------------------------------------
class SequentialOffload:
    """Forward hooks on every module that owns weights: load before, unload after."""

    def __init__(self, model: nn.Module, device: torch.device, log: MoveLog | None = None):
        self.device = torch.device(device)
        self.log = log or MoveLog()
        self.handles = []
        model.to(OFFLOAD_DEVICE)
        _pin(model)
        for module in model.modules():
            owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(False))
            if owns:
                self.handles.append(module.register_forward_pre_hook(self._load))
                self.handles.append(module.register_forward_hook(self._unload))

    def _load(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        _move_own_tensors(module, self.device, non_blocking=True)
        self.log.onloads += 1

    def _unload(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        _move_own_tensors(module, OFFLOAD_DEVICE)
        self.log.offloads += 1

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class LentTensors:
    """While ``model`` runs, the own tensors of ``owners`` (not their submodules': Z-Image's pad tokens, which its
    Fun control model links and reads outside the transformer's forward) are on the device, as during the owners'
    own forward; those it loaded go back after. (Their submodules load themselves, hooked by
    :class:`SequentialOffload`.)"""

    def __init__(self, model: nn.Module, owners: Iterable[nn.Module], device: torch.device, log: MoveLog):
        self.owners, self.device, self.log = list(owners), torch.device(device), log
        self._loaded: list[nn.Module] = []
        self.handles = [model.register_forward_pre_hook(self._load), model.register_forward_hook(self._unload)]

    def _load(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        for owner in self.owners:
            own = (*owner.parameters(recurse=False), *owner.buffers(recurse=False))
            if any(t.device != self.device for t in own):  # not loaded already (a run inside the owner's forward)
                _move_own_tensors(owner, self.device, non_blocking=True)
                self._loaded.append(owner)
                self.log.onloads += 1

    def _unload(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        for owner in self._loaded:
            _move_own_tensors(owner, OFFLOAD_DEVICE)
            self.log.offloads += 1
        self._loaded.clear()

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# ----------------------------------------------------------------------------------------
# model_group_offload: block swap with prefetch on a side stream
# ----------------------------------------------------------------------------------------
class BlockSwap:
    """Keep ``resident`` blocks on the device; stream the others in (prefetching the next) and out.

    Blocks run in order, so while block i computes, block i+1's weights are copied on a side
    CUDA stream from pinned memory; block i+1's pre-hook waits for that copy only.
    """

    def __init__(self, blocks: Iterable[nn.Module], device: torch.device, resident: int, log: MoveLog | None = None):
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.resident = max(0, min(resident, len(self.blocks)))
        self.log = log or MoveLog()
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        self.ready: dict[int, torch.cuda.Event | None] = {}
        self.handles = []
        for index, block in enumerate(self.blocks):
            if self.is_resident(index):
                block.to(self.device)
            else:
                block.to(OFFLOAD_DEVICE)
                _pin(block)
            self.handles.append(block.register_forward_pre_hook(functools.partial(self._before, index)))
            self.handles.append(block.register_forward_hook(functools.partial(self._after, index)))

    def is_resident(self, index: int) -> bool:
        """The first ``resident`` blocks never leave the device."""
        return index < self.resident

    def _copy_in(self, index: int) -> None:
        block = self.blocks[index]
        if self.stream is None:
            block.to(self.device)
            self.ready[index] = None
            return
        with torch.cuda.stream(self.stream):
            block.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[index] = event

    def _before(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self.is_resident(index):
            if index not in self.ready:
                self._copy_in(index)
                self.log.onloads += 1
                self.log.order.append(f"load {index}")
            event = self.ready.pop(index)
            if event is not None:
                torch.cuda.current_stream().wait_event(event)
        following = index + 1
        if following < len(self.blocks) and not self.is_resident(following) and following not in self.ready:
            self._copy_in(following)
            self.log.prefetches += 1
            self.log.order.append(f"prefetch {following}")

    def _after(self, index: int, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.is_resident(index):
            module.to(OFFLOAD_DEVICE)
            self.log.offloads += 1
            self.log.order.append(f"unload {index}")

    def remove(self) -> None:
        """Detach the hooks (blocks stay where they are)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# ----------------------------------------------------------------------------------------
# The modes
# ----------------------------------------------------------------------------------------
def swap_blocks(model: nn.Module, device: torch.device, resident: int, log: MoveLog | None = None) -> BlockSwap:
    """Block swap for a transformer: the blocks of its declared ``_block_lists`` swap (:class:`BlockSwap`),
    every weight outside them (embeddings, head, norms) goes to ``device`` and stays there."""
    blocks = points.blocks(model, "block swap (model_group_offload)")
    inside = {id(m) for block in blocks for m in block.modules()}
    for module in model.modules():
        if id(module) not in inside:
            _move_own_tensors(module, device)
    return BlockSwap(blocks, device, resident, log)


def apply_memory_mode(pipe: Pipeline, mode: str, device: torch.device | str, resident_blocks: int = 4) -> MoveLog:
    """Set a pipeline of any family up for one of :data:`MEMORY_MODES`; returns the log its hooks keep.

    The pipeline names its models and their entry methods (``components()``) and its denoising
    ``transformers``; block swap finds the blocks through each transformer's declared ``_block_lists``.
    """
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    device = torch.device(device)
    log = MoveLog()
    if mode.endswith("_and_qfloat8"):
        from .fp8 import fp8_stored_models, quantize_to_fp8

        for model in fp8_stored_models(pipe):
            quantize_to_fp8(model)
    pipe.device = device
    for module, _ in pipe.components().values():
        if hasattr(module, "execution_device"):
            module.execution_device = device  # inputs go to the device even while weights rest on the CPU
    # Models the denoising step runs beside the transformers (a Fun control stream) share their unit on the device.
    beside = [module for module, _ in pipe.components().values() if points.runs_beside_transformer(module)]
    if mode.startswith("model_full_load"):
        for module, _ in pipe.components().values():
            module.to(device)
    elif mode.startswith("model_cpu_offload"):
        offload = ComponentOffload(device, log)
        transformers = {id(module) for module in pipe.transformers}
        for name, (module, methods) in pipe.components().items():
            unit = beside if id(module) in transformers else pipe.transformers if module in beside else ()
            offload.attach(module, name, methods, unit)
        log.hooks.append(offload)
    elif mode == "sequential_cpu_offload":
        for module, _ in pipe.components().values():
            log.hooks.append(SequentialOffload(module, device, log))
        for model in beside:  # it may read the transformers' own tensors outside their forward
            log.hooks.append(LentTensors(model, pipe.transformers, device, log))
    else:  # model_group_offload
        offload = ComponentOffload(device, log)
        swapped = {id(transformer) for transformer in pipe.transformers}
        for name, (module, methods) in pipe.components().items():
            if id(module) not in swapped:  # the transformers swap blocks instead of moving whole
                # a model beside them (a control stream) reads only their resident part: a unit of its own
                offload.attach(module, name, methods)
        log.hooks.append(offload)
        for transformer in pipe.transformers:
            log.hooks.append(swap_blocks(transformer, device, resident_blocks, log))
    return log
