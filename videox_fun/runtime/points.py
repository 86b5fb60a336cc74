"""The one reader of the extension points a model class declares, for the runtime features.

A family's transformer says, as class attributes (as diffusers' ``_repeated_blocks`` /
``_no_split_modules`` do), where features may attach; offload, fp8 storage, compile, FSDP and
the step caches read those declarations here and never name a family's attributes themselves:

- ``_block_lists``: names (dotted paths allowed) of the ``nn.ModuleList`` s holding the block
  stack, in the order the blocks run (e.g. ``("blocks",)``; ``("transformer_blocks",)``). A name whose
  attribute is ``None`` on an instance is a list that release does not build (Z-Image 2.0 control's refiner).
- ``_repeated_blocks``: class names of the repeated block (regional compile compiles each).
- ``_cache_indicators``: TeaCache indicator name -> dotted path of the module whose output it
  compares across steps (e.g. ``{"time_embedding": "time_embedding"}``).
- ``_cache_block_indicators`` (optional, models without a ``_block_runner``): TeaCache indicator name -> the
  name of a model method ``method(block, arguments) -> tensor`` computing it from the first block's arguments
  (by parameter name) before that block runs: for sets fitted on what the first block computes (VideoX-Fun's
  Qwen-Image set, on its modulated image input).
- ``_cache_default_indicator`` (optional): the indicator ``--cache teacache`` and ``calibrate-cache`` use when
  none is asked for (default ``time_embedding``; ``time_projection`` for two experts): the one the published
  coefficients were fitted on.
- ``_fp8_skip_modules``: regular expressions (``re.search`` on the dotted module name) of the
  layers inside the blocks that fp8 storage leaves in high precision; ``()`` when none.
- ``_fp8_side_modules`` (optional): names (dotted paths allowed) of modules outside the block lists
  whose linears fp8 storage stores too, less ``_fp8_skip_modules`` (Wan2.2-Animate's face adapter,
  whose blocks run between the main ones; Z-Image's refiner blocks); ``()`` or undeclared: none (a name whose
  attribute is ``None`` on an instance: that module is not built).
- ``_runs_beside_transformer`` (optional, on a pipeline component that is not a transformer): ``True`` for a
  model the denoising step runs beside the transformer, reading its modules or inside its forward (a Fun control
  stream, which VideoX-Fun holds inside its control transformer): the memory modes keep it on the device with the
  transformer, and the qfloat8 modes store its block linears (its own ``_block_lists`` less its
  ``_fp8_skip_modules``) in fp8 as the transformer's.
- ``_block_runner`` (optional): the name of a method that runs the whole stack (or a slice of
  it), ``run(x, ..., blocks=slice)`` -> x. Step caches and sequence parallelism wrap it where
  present; without one, step caches hook the blocks of ``_block_lists`` themselves.
- ``_block_streams`` (optional): the names of the block arguments a block returns, in the order
  of its returned tuple (default: the first forward parameters, one per returned tensor); or, where the
  block lists differ, ``{block list name: names}`` (FLUX.2: double blocks return text and image, single blocks
  one joint stream). A later list's stream longer than the first list's stream of its name carries all the
  first list's streams joined along the tokens, in their declared order (FLUX.2: text, then image).
- ``_sequence_parallel_shards`` and ``_attention_seam`` (sequence parallelism without a block
  runner): the per-token block arguments to split over the ranks, and the dotted path, inside each
  block, of the object whose ``attend(q, k, v, text_len, key_mask=None)`` runs its joint attention
  (``key_mask``: an optional (B, L) bool, True = a key to attend to). A shard is
  ``dim`` (the tensor, a tuple's tensors each, is per token along ``dim``: of its own stream when the
  argument is one of the block streams, else of the split streams of the layout, concatenated in
  layout order), ``(dim, "stream")`` / ``(dim, ("stream", ...))`` (per token of those streams,
  concatenated: FLUX's rotary tables over text + image), or a list of those, one per element of a
  tuple argument (Qwen-Image's (image, text) rotary tables).
- ``_sequence_parallel_layout`` (optional): the block streams in the order the joint attention
  concatenates their tokens (FLUX: ``("encoder_hidden_states", "hidden_states")``). A stream that
  is not in the shards stays whole on every rank. Default: the whole streams first, then the split
  ones (CogVideoX's text + video).
- ``_sequence_parallel_gather`` (optional): ``{dotted module path: stream(s)}``, the module whose
  output carries the split tokens out of the stack (``proj_out``), gathered there; default: the
  last block's outputs. Needed where the model adds per-token tensors after the last block (Z-Image's
  control hints) or slices a joint stream by the whole text length (FLUX.2).
- ``_sequence_parallel_inputs`` (optional): ``{forward argument: dim}``, per-token tensors (a dict's
  or list's tensors each) the model's own forward adds to the split streams between blocks (Z-Image's
  ``controlnet_block_samples``), chunked on entry to the forward by the rule the streams follow.
- ``_sequence_side_streams`` (optional, with a block runner): the name of a method
  ``method(shard) -> context manager`` that, while the runner runs, swaps the per-token tensors the
  runner reads besides its arguments (VACE's context tokens) for ``shard(tensor, dim)``, this rank's
  chunk of them, split as the tokens are; sequence parallelism enters it around the runner.
- Side models: a model run by hooks inside a transformer's forward on its blocks' inputs (a Fun control side
  stream) runs split too when it declares ``_block_lists``, ``_attention_seam`` and
  ``_sequence_parallel_module_inputs`` (``{dotted module path: stream}``: modules whose first input is per token
  of that stream, ``control_img_in``). The hook that attaches it enters the transformer's
  :data:`SEQUENCE_SIDE_MODEL` context, which sequence parallelism sets on the transformer while attached.
- ``_cache_context_argument`` (optional): the block argument that tells guidance passes apart
  when no :func:`videox_fun.runtime.cache.cache_branch` is active (default
  ``encoder_hidden_states``, diffusers' name for the text stream).

Every reader fails with a message naming the model class, the missing attribute and the feature
that needed it, instead of an ``AttributeError`` deep inside a hook.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_CACHE_CONTEXT_ARGUMENT = "encoder_hidden_states"
# Set on a transformer by sequence parallelism while attached: ``method(side_model) -> context manager`` under which
# a side model run inside the transformer's forward (a Fun control side stream) runs on this rank's tokens too.
SEQUENCE_SIDE_MODEL = "_sequence_parallel_side_model"


class ExtensionPointError(ValueError):
    """A runtime feature cannot attach: the model does not declare (or mis-declares) what it needs."""


def _missing(model: nn.Module, attribute: str, feature: str, example: str) -> ExtensionPointError:
    return ExtensionPointError(
        f"model {type(model).__name__} declares no {attribute}: runtime feature {feature} cannot attach "
        f"(declare it on the model class, e.g. {attribute} = {example})"
    )


def _declared(model: nn.Module, attribute: str, feature: str, example: str, empty_ok: bool = False) -> object:
    value = getattr(model, attribute, None)
    # diffusers' ModelMixin defaults some of these to an empty list: that declares nothing either.
    if value is None or (not value and not empty_ok):
        raise _missing(model, attribute, feature, example)
    return value


def _submodule(model: nn.Module, path: str, attribute: str, feature: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ExtensionPointError(
            f"model {type(model).__name__} declares {path!r} in {attribute}, but has no such module: "
            f"runtime feature {feature} cannot attach"
        ) from None


def _attribute_is_none(model: nn.Module, path: str) -> bool:
    parent, _, name = path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    return name in vars(owner) and vars(owner)[name] is None


def block_lists(model: nn.Module, feature: str = "block hooks") -> list[nn.ModuleList]:
    """The ``nn.ModuleList`` s named by ``_block_lists``, in run order."""
    names = _declared(model, "_block_lists", feature, '("blocks",)')
    if isinstance(names, str):
        raise ExtensionPointError(f"model {type(model).__name__}: _block_lists must be a tuple of names, got {names!r}")
    lists = []
    for name in names:
        if _attribute_is_none(model, name):
            continue  # a list this instance does not build
        found = _submodule(model, name, "_block_lists", feature)
        if not isinstance(found, nn.ModuleList):
            raise ExtensionPointError(
                f"model {type(model).__name__}: _block_lists entry {name!r} is a {type(found).__name__}, "
                f"not an nn.ModuleList: runtime feature {feature} cannot attach"
            )
        lists.append(found)
    return lists


def blocks(model: nn.Module, feature: str = "block hooks") -> list[nn.Module]:
    """Every block of the declared lists, flattened in the order they run."""
    return [block for blocks_ in block_lists(model, feature) for block in blocks_]


def repeated_blocks(model: nn.Module, feature: str = "regional compile") -> list[nn.Module]:
    """The submodules whose class (or a base class: wrappers such as FSDP subclass it) is in ``_repeated_blocks``."""
    names = set(_declared(model, "_repeated_blocks", feature, '("MyBlock",)'))
    found = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not found:
        raise ExtensionPointError(
            f"model {type(model).__name__} declares _repeated_blocks {sorted(names)}, but has no such module: "
            f"runtime feature {feature} cannot attach"
        )
    return found


def cache_indicators(model: nn.Module, feature: str = "TeaCache") -> dict[str, str]:
    """TeaCache indicator name -> module path, as declared by ``_cache_indicators``."""
    declared = _declared(model, "_cache_indicators", feature, '{"time_embedding": "time_embedding"}')
    return dict(declared)


def cache_indicator_module(model: nn.Module, name: str, feature: str = "TeaCache") -> nn.Module:
    """The module whose output is the TeaCache indicator ``name``."""
    declared = cache_indicators(model, feature)
    if name not in declared:
        known = [*declared, *(getattr(model, "_cache_block_indicators", None) or {})]
        raise ExtensionPointError(
            f"model {type(model).__name__} declares no cache indicator {name!r} (it has: "
            f"{', '.join(known) or 'none'}): runtime feature {feature} cannot attach"
        )
    return _submodule(model, declared[name], "_cache_indicators", feature)


def cache_block_indicator(model: nn.Module, name: str, feature: str = "TeaCache") -> Callable | None:
    """The model's method computing indicator ``name`` from the first block's arguments
    (``_cache_block_indicators``), or ``None`` when ``name`` is not one of those."""
    method_name = dict(getattr(model, "_cache_block_indicators", None) or {}).get(name)
    if method_name is None:
        return None
    method = getattr(model, method_name, None)
    if not callable(method):
        raise ExtensionPointError(
            f"model {type(model).__name__} declares cache indicator {name!r} as method {method_name!r}, but has "
            f"no such method: runtime feature {feature} cannot attach"
        )
    if block_runner(model) is not None:
        raise ExtensionPointError(
            f"model {type(model).__name__}: cache indicator {name!r} is computed from the first block's arguments, "
            f"which a model with a _block_runner does not hand to {feature}"
        )
    return method


def default_cache_indicator(model: nn.Module) -> str | None:
    """The indicator the model's published coefficients were fitted on (``_cache_default_indicator``), or None."""
    return getattr(model, "_cache_default_indicator", None)


def runs_beside_transformer(model: nn.Module) -> bool:
    """Whether a pipeline component runs within the denoising step beside the transformer
    (``_runs_beside_transformer``): memory modes keep it with the transformer, fp8 storage stores it too."""
    return bool(getattr(model, "_runs_beside_transformer", False))


def fp8_skip(model: nn.Module, feature: str = "fp8 storage") -> tuple[str, ...]:
    """Patterns of the block layers fp8 storage keeps in high precision (``()``: none)."""
    patterns = _declared(
        model, "_fp8_skip_modules", feature, "() when every block linear may be stored in fp8", empty_ok=True
    )
    if isinstance(patterns, str):
        raise ExtensionPointError(
            f"model {type(model).__name__}: _fp8_skip_modules must be a tuple of patterns, got {patterns!r}"
        )
    return tuple(patterns)


def fp8_side_modules(model: nn.Module, feature: str = "fp8 storage") -> list[nn.Module]:
    """The modules outside the block lists whose linears fp8 storage stores too (``_fp8_side_modules``)."""
    names = getattr(model, "_fp8_side_modules", None) or ()
    if isinstance(names, str):
        raise ExtensionPointError(
            f"model {type(model).__name__}: _fp8_side_modules must be a tuple of names, got {names!r}"
        )
    return [_submodule(model, name, "_fp8_side_modules", feature) for name in names
            if not _attribute_is_none(model, name)]  # fmt: skip


def fp8_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether the layer ``name`` matches one of the skip ``patterns`` (``re.search``, as diffusers does)."""
    return any(re.search(pattern, name) for pattern in patterns)


def block_runner(model: nn.Module) -> str | None:
    """The model's stack-running method's name (``_block_runner``), or ``None`` when the loop is in its forward."""
    name = getattr(model, "_block_runner", None)
    if name is not None and not callable(getattr(model, name, None)):
        raise ExtensionPointError(
            f"model {type(model).__name__} declares _block_runner {name!r}, but has no such method"
        )
    return name


def require_block_runner(model: nn.Module, feature: str) -> str:
    """``_block_runner``, for a feature that cannot work without one."""
    name = block_runner(model)
    if name is None:
        raise _missing(model, "_block_runner", feature, '"run_blocks"')
    return name


def sequence_side_streams(
    model: nn.Module, shard: Callable[[torch.Tensor, int], torch.Tensor]
) -> contextlib.AbstractContextManager:
    """The model's ``_sequence_side_streams`` context, entered with ``shard`` (a tensor and its token dimension ->
    this rank's chunk), or a context doing nothing when the model reads no per-token tensor besides its runner's
    arguments."""
    name = getattr(model, "_sequence_side_streams", None)
    if name is None:
        return contextlib.nullcontext()
    method = getattr(model, name, None)
    if not callable(method):
        raise ExtensionPointError(
            f"model {type(model).__name__} declares _sequence_side_streams {name!r}, but has no such method"
        )
    return method(shard)


def _declared_streams(model: nn.Module, block: nn.Module) -> tuple[str, ...] | None:
    """``_block_streams`` for ``block``: the one tuple, or the entry of the block list holding it; None: undeclared."""
    declared = getattr(model, "_block_streams", None)
    if not isinstance(declared, Mapping):
        return None if declared is None else tuple(declared)
    for name, streams in declared.items():
        found = _submodule(model, name, "_block_streams", "block hooks")
        if any(member is block for member in found):
            return tuple(streams)
    return None  # a block of no declared list (a side model's)


def block_streams(model: nn.Module, block: nn.Module, count: int) -> tuple[str, ...]:
    """The names of the ``count`` block arguments that ``block`` returns (in order): ``_block_streams``,
    or else the first ``count`` parameters of the block's ``forward``."""
    declared = _declared_streams(model, block)
    if declared is not None:
        if len(declared) != count:
            raise ExtensionPointError(
                f"model {type(model).__name__} declares _block_streams {declared} for its {type(block).__name__}, "
                f"but that block returns {count} tensor(s)"
            )
        return declared
    parameters = list(inspect.signature(block.forward).parameters)
    return tuple(parameters[:count])


def cache_context_argument(model: nn.Module) -> str:
    """The block argument whose fingerprint tells guidance passes apart when no branch is named."""
    return getattr(model, "_cache_context_argument", DEFAULT_CACHE_CONTEXT_ARGUMENT)


@dataclass(frozen=True)
class TokenSplit:
    """How one tensor is split over the ranks: along ``dim``, per token of ``streams`` concatenated in that order
    (``None``: the argument's own stream, or else the split streams of the layout)."""

    dim: int
    streams: tuple[str, ...] | None = None


Shard = TokenSplit | tuple[TokenSplit, ...]  # a tuple: one split per element of a tuple argument


def _token_split(model: nn.Module, name: str, value: object) -> Shard:
    if isinstance(value, int) and not isinstance(value, bool):
        return TokenSplit(value)
    if isinstance(value, list):
        return tuple(_token_split(model, name, item) for item in value)  # type: ignore[misc]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        streams = (value[1],) if isinstance(value[1], str) else value[1]
        if isinstance(streams, tuple) and streams and all(isinstance(s, str) for s in streams):
            return TokenSplit(value[0], tuple(streams))
    raise ExtensionPointError(
        f"model {type(model).__name__}: _sequence_parallel_shards[{name!r}] = {value!r} is not a dim, (dim, stream(s)) "
        "or a list of those"
    )


def sequence_parallel_shards(model: nn.Module, feature: str = "sequence parallelism") -> dict[str, Shard]:
    """The per-token block arguments sequence parallelism splits, with how each is split."""
    declared = _declared(model, "_sequence_parallel_shards", feature, '{"hidden_states": 1}')
    return {name: _token_split(model, name, value) for name, value in dict(declared).items()}  # type: ignore[call-overload]


def sequence_parallel_layout(model: nn.Module) -> tuple[str, ...] | None:
    """The block streams in the joint attention's token order (``_sequence_parallel_layout``), or ``None``."""
    layout = getattr(model, "_sequence_parallel_layout", None)
    if layout is not None and (isinstance(layout, str) or not all(isinstance(name, str) for name in layout)):
        raise ExtensionPointError(
            f"model {type(model).__name__}: _sequence_parallel_layout must be a tuple of stream names, got {layout!r}"
        )
    return None if layout is None else tuple(layout)


def sequence_parallel_gather(
    model: nn.Module, feature: str = "sequence parallelism"
) -> dict[nn.Module, tuple[str, ...]]:
    """The modules whose output is gathered (``_sequence_parallel_gather``), each with the streams it carries;
    empty: the last block's outputs are."""
    declared = getattr(model, "_sequence_parallel_gather", None) or {}
    found = {}
    for path, streams in dict(declared).items():
        module = _submodule(model, path, "_sequence_parallel_gather", feature)
        found[module] = (streams,) if isinstance(streams, str) else tuple(streams)
    return found


def sequence_parallel_inputs(model: nn.Module) -> dict[str, int]:
    """The model's forward arguments chunked on entry (``_sequence_parallel_inputs``), with their token dim."""
    return dict(getattr(model, "_sequence_parallel_inputs", None) or {})


def sequence_parallel_module_inputs(model: nn.Module, feature: str = "sequence parallelism") -> dict[nn.Module, str]:
    """The modules whose first input is per token of a stream (``_sequence_parallel_module_inputs``), with it."""
    declared = getattr(model, "_sequence_parallel_module_inputs", None) or {}
    return {_submodule(model, path, "_sequence_parallel_module_inputs", feature): stream
            for path, stream in dict(declared).items()}  # fmt: skip


def split_streams(model: nn.Module, block: nn.Module) -> tuple[str, ...]:
    """The block arguments that carry token streams from block to block: ``_block_streams`` (``block``'s list's),
    else the first two parameters of the block's ``forward`` (a joint block's text and video)."""
    declared = _declared_streams(model, block)
    if declared is not None:
        return declared
    return tuple(list(inspect.signature(block.forward).parameters)[:2])


def attention_seams(model: nn.Module, feature: str = "sequence parallelism") -> list[object]:
    """Each block's attention seam (an object with ``attend(q, k, v, text_len, key_mask=None)``), in block order."""
    path = _declared(model, "_attention_seam", feature, '"attn1.processor"')
    seams = []
    for block in blocks(model, feature):
        seam: object = block
        for part in str(path).split("."):
            seam = getattr(seam, part, None)
        if not callable(getattr(seam, "attend", None)):
            raise ExtensionPointError(
                f"model {type(model).__name__}: {path} of its blocks has no attend(q, k, v, text_len) for {feature}"
            )
        seams.append(seam)
    return seams
