"""Multi-process inference: sequence parallelism (Ulysses, Ring, USP), CFG parallelism and FSDP.

All three attach to a loaded pipeline and can be removed; the transformer's ``forward`` is untouched.

Rank layout (world = ulysses x ring x (2 with CFG parallelism)), global rank g:
``cfg = g // (U*R)`` picks the guidance branch (0 conditional, 1 unconditional), and inside a
branch ``s = g % (U*R)`` is the sequence chunk the rank holds, ``s = ring_rank * U + ulysses_rank``.
Ulysses groups are consecutive ranks (the all-to-all stays inside a node when U <= GPUs per
node); ring groups stride by U; the CFG pair (s, s + U*R) exchanges one prediction per step.

Sequence parallelism (:class:`SequenceParallel`) wraps the model's declared block runner (its
``_block_runner``, Wan's ``run_blocks``): the tokens (B, L, C),
the RoPE tables, per-token time projections and the model's per-token side streams (VACE's context
tokens, through ``_sequence_side_streams``) are padded to a multiple of U*R and split, so each
rank keeps its true positions; after the blocks the chunks are all-gathered and the padding cut.
Each block's self-attention is replaced by one that reuses its q/k/v/o weights:

* Ulysses: an all-to-all turns (B, L/U, H, D) into (B, L, H/U, D) (heads padded to a multiple of
  U), attention runs on whole sequences for a subset of heads, and a second all-to-all undoes it.
* Ring: K/V blocks travel around the ring while each rank attends to the block it holds; the
  partial results are merged exactly with their log-sum-exp (:func:`merge_attention`).
* USP: Ulysses inside each ring group, then the ring over the Ulysses-gathered segments.

Padded keys are never attended to: padding only sits at the end of the sequence, so the valid
length of each K/V segment is known and the segment is cut to it. Cross-attention to the text and
CLIP tokens stays local: every rank has the whole context.

Models whose block loop is diffusers' (CogVideoX, FLUX.1, FLUX.2, Qwen-Image, Z-Image) get
:class:`JointSequenceParallel`, hooks on their declared blocks: joint attention over several token
streams (text and image), each split over the ranks and padded on its own (or kept whole on every
rank), their per-token side inputs (rotary tables, key masks) split alike; keys of padding, of a
whole stream's copies and masked keys are cut out of each K/V segment.

xfuser / yunchang are not used: their attention needs their own process-group globals; the ring
here calls flash-attn's log-sum-exp kernel on GPUs, the kernel yunchang's ring uses too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ..models.attention import attention, attention_with_lse
from ..pipelines.guidance import ClassifierFreeGuidance, Denoiser
from . import points
from .cache import SHARDED_RELATIVE_L1, RunBlocks, cache_branch
from .distributed import DistInfo, check_world_size, dist_info_from_env, init_distributed

if TYPE_CHECKING:
    from ..families import Pipeline
    from .options import RuntimeOptions

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Process groups
# ----------------------------------------------------------------------------------------
@dataclass
class ParallelGroups:
    """This rank's place in the ulysses x ring x cfg layout and the process groups it talks in.

    A degree of 1 has no group (``None``): nothing is communicated along it.
    """

    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False
    rank: int = 0
    ulysses_group: dist.ProcessGroup | None = None
    ring_group: dist.ProcessGroup | None = None
    sp_group: dist.ProcessGroup | None = None
    cfg_group: dist.ProcessGroup | None = None
    ring_ranks: tuple[int, ...] = (0,)

    @property
    def sp_degree(self) -> int:
        """Ranks sharing one sequence (ulysses x ring)."""
        return self.ulysses_degree * self.ring_degree

    @property
    def sp_rank(self) -> int:
        """Index of the sequence chunk this rank holds."""
        return self.rank % self.sp_degree

    @property
    def ulysses_rank(self) -> int:
        """Rank inside the Ulysses group."""
        return self.sp_rank % self.ulysses_degree

    @property
    def ring_rank(self) -> int:
        """Rank inside the ring group (= index of the Ulysses-gathered segment it holds)."""
        return self.sp_rank // self.ulysses_degree

    @property
    def cfg_rank(self) -> int:
        """0 for the conditional branch, 1 for the unconditional one."""
        return self.rank // self.sp_degree


def layout_ranks(ulysses_degree: int, ring_degree: int, cfg_parallel: bool) -> dict[str, list[list[int]]]:
    """The global ranks of every sp / ulysses / ring / cfg group of a layout."""
    u, r, sp = ulysses_degree, ring_degree, ulysses_degree * ring_degree
    branches = range(2 if cfg_parallel else 1)
    return {
        "sp": [[c * sp + i for i in range(sp)] for c in branches],
        "ulysses": [[c * sp + j * u + i for i in range(u)] for c in branches for j in range(r)],
        "ring": [[c * sp + j * u + i for j in range(r)] for c in branches for i in range(u)],
        "cfg": [[c * sp + i for c in branches] for i in range(sp)],
    }


def build_groups(ulysses_degree: int = 1, ring_degree: int = 1, cfg_parallel: bool = False) -> ParallelGroups:
    """Create the process groups of a layout; a collective call, made once by every rank in the same order."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    check_world_size(ulysses_degree, ring_degree, cfg_parallel, world)
    rank = dist.get_rank() if dist.is_initialized() else 0
    groups = ParallelGroups(ulysses_degree, ring_degree, cfg_parallel, rank)
    if world == 1:
        return groups
    ranks = layout_ranks(ulysses_degree, ring_degree, cfg_parallel)
    sizes = {"sp": groups.sp_degree, "ulysses": ulysses_degree, "ring": ring_degree, "cfg": 2 if cfg_parallel else 1}
    for name, size in sizes.items():
        if size > 1:
            # Every rank creates every group (torch's rule); it keeps the one that holds it.
            mine, _ = dist.new_subgroups_by_enumeration(ranks[name])
            setattr(groups, f"{name}_group", mine)
    groups.ring_ranks = tuple(next(g for g in ranks["ring"] if rank in g))
    return groups


# ----------------------------------------------------------------------------------------
# Collectives on (B, L, H, D) tensors
# ----------------------------------------------------------------------------------------
def pad_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad ``t`` along ``dim`` up to ``size``."""
    missing = size - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def all_gather_cat(t: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """Concatenate every group member's ``t`` along ``dim``, in group-rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def sequence_to_heads(packed: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Ulysses all-to-all: (P, B, n, H, D) sequence-split -> (P, B, U*n, H/U, D) head-split.

    P packs tensors sent together (q, k, v). Rank u receives every rank's tokens for heads
    [u*H/U, (u+1)*H/U), in group-rank order (= sequence order).
    """
    u = dist.get_world_size(group)
    send = packed.unflatten(3, (u, -1)).permute(3, 0, 1, 2, 4, 5).contiguous()  # (U, P, B, n, H/U, D)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # (P, B, U*n, H/U, D)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse Ulysses all-to-all: (B, U*n, H/U, D) -> (B, n, H, D)."""
    u = dist.get_world_size(group)
    send = x.unflatten(1, (u, -1)).permute(1, 0, 2, 3, 4).contiguous()  # (U, B, n, H/U, D)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.permute(1, 2, 0, 3, 4).flatten(2, 3)  # (B, n, H, D)


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets: outs (B, L, H, D), lses (B, L, H) -> the union's, fp32.

    A query that had no key in either set (lse -inf in both) stays at zero with lse -inf.
    """
    lse = torch.logaddexp(lse_a, lse_b)  # (B, L, H)
    reference = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)  # no -inf - -inf = nan
    weight_a, weight_b = torch.exp(lse_a - reference)[..., None], torch.exp(lse_b - reference)[..., None]
    return out_a.float() * weight_a + out_b.float() * weight_b, lse


# Which keys of a K/V block to attend to: a slice, an index (Lk',) shared by every sample, or a bool (B, Lk) per
# sample (True = attend).
KeySelection = slice | torch.Tensor


def attention_over_keys(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: KeySelection, with_lse: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """Attention of q (B, Lq, H, D) to the selected keys of k / v (B, Lk, H, D): the output (with its log-sum-exp
    (B, Lq, H) when ``with_lse``), ``None`` when nothing is selected.

    Keys are cut out rather than masked, so the fused kernels serve; samples whose selections differ are attended
    one by one (a sample without keys gives zeros, lse -inf).
    """
    if isinstance(keys, torch.Tensor) and keys.dtype == torch.bool:
        if bool((keys == keys[:1]).all()):
            keys = keys[0].nonzero()[:, 0]
        else:
            rows = [attention_over_keys(q[b : b + 1], k[b : b + 1], v[b : b + 1], keys[b].nonzero()[:, 0], with_lse)
                    for b in range(q.shape[0])]  # fmt: skip
            return _stack_rows(rows, q, with_lse)
    if isinstance(keys, slice):
        k, v = k[:, keys], v[:, keys]
    else:
        k, v = k.index_select(1, keys), v.index_select(1, keys)
    if k.shape[1] == 0:
        return None
    return attention_with_lse(q, k, v) if with_lse else attention(q, k, v)


def _stack_rows(rows: list, q: torch.Tensor, with_lse: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """Per-sample results of :func:`attention_over_keys` as one batch."""
    if all(row is None for row in rows):
        return None
    if not with_lse:
        if any(row is None for row in rows):
            raise RuntimeError("a sample's queries have no key to attend to")
        return torch.cat(rows)
    empty = (q.new_zeros(1, *q.shape[1:]), torch.full((1, *q.shape[1:3]), -math.inf, device=q.device))
    rows = [empty if row is None else row for row in rows]
    return torch.cat([row[0] for row in rows]), torch.cat([row[1] for row in rows])


def ring_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: ParallelGroups,
    valid_length: Callable[[int], int] | None = None,
    keys: Callable[[int], KeySelection] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of local queries (B, S, H, D) to the keys of every ring member, K/V passed around the ring;
    the output (fp32) and its log-sum-exp (B, S, H), to merge with attention over other keys.

    At step i a rank holds the K/V of segment ``(ring_rank - i) % R``; the next block is in flight
    while the current one is attended to. ``valid_length(segment)`` cuts padded keys off a block's end;
    ``keys(segment)`` selects them instead (:data:`KeySelection`: padding inside a block, masked keys).
    """
    if keys is None and valid_length is not None:
        keys = lambda segment: slice(0, valid_length(segment))  # noqa: E731
    elif keys is None:
        keys = lambda _segment: slice(None)  # noqa: E731
    degree, me = groups.ring_degree, groups.ring_rank
    send_to, receive_from = groups.ring_ranks[(me + 1) % degree], groups.ring_ranks[(me - 1) % degree]
    kv = torch.stack([k, v]).contiguous()  # (2, B, S, H, D)
    out = lse = None
    for step in range(degree):
        pending = []
        if step < degree - 1:
            incoming = torch.empty_like(kv)
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, kv, send_to, group=groups.ring_group),
                    dist.P2POp(dist.irecv, incoming, receive_from, group=groups.ring_group),
                ]
            )
        block = attention_over_keys(q, kv[0], kv[1], keys((me - step) % degree), with_lse=True)
        if block is not None:  # a segment of padding only adds nothing
            out, lse = (block[0].float(), block[1]) if out is None else merge_attention(out, lse, *block)
        for request in pending:
            request.wait()
        if pending:
            kv = incoming
    if out is None:
        raise RuntimeError("ring attention: no segment holds a key")
    return out, lse


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: ParallelGroups,
    valid_length: Callable[[int], int] | None = None,
    keys: Callable[[int], KeySelection] | None = None,
) -> torch.Tensor:
    """:func:`ring_attention_with_lse`'s output alone, in q's dtype."""
    return ring_attention_with_lse(q, k, v, groups, valid_length, keys)[0].to(q.dtype)


# ----------------------------------------------------------------------------------------
# Sequence parallelism hook
# ----------------------------------------------------------------------------------------
@dataclass
class _Shard:
    """The sequence being processed: true length and tokens per rank (set while the blocks run)."""

    total: int
    chunk: int


class SequenceParallel:
    """Ulysses / Ring / USP sequence parallelism attached to a model with a block runner (Wan's ``run_blocks``).

    ``attach(model)`` wraps the model's declared ``_block_runner`` and the self-attention of every block of
    its ``_block_lists``; ``remove()`` restores them. The blocks must route self-attention through a
    ``self_attn.attend(q, k, v)`` seam (Wan's do). Inference only (the collectives carry no gradients).
    Hooks that also wrap the runner must be removed in the reverse order of attaching.
    """

    def __init__(self, groups: ParallelGroups):
        self.groups = groups
        self.model: nn.Module | None = None
        self._previous_run_blocks: RunBlocks | None = None
        self._runner = "run_blocks"
        self._blocks: list[nn.Module] = []
        self._shard: _Shard | None = None

    # -- attaching ----------------------------------------------------------------------
    def attach(self, model: nn.Module) -> SequenceParallel:
        """Hook ``model``; returns self."""
        if self.model is not None:
            raise RuntimeError("this SequenceParallel hook is already attached")
        runner = points.require_block_runner(model, "sequence parallelism")
        blocks = points.blocks(model, "sequence parallelism")
        if not all(callable(getattr(getattr(block, "self_attn", None), "attend", None)) for block in blocks):
            raise points.ExtensionPointError(
                f"model {type(model).__name__}: sequence parallelism needs blocks whose self-attention goes "
                "through self_attn.attend(q, k, v); these blocks have none"
            )
        if any("attend" in block.self_attn.__dict__ for block in blocks):
            raise RuntimeError("the model's self-attention is already replaced (sequence parallelism attached twice?)")
        self.model, self._runner, self._blocks = model, runner, blocks
        self._previous_run_blocks = model.__dict__.get(runner)
        setattr(model, runner, functools.partial(self._run_blocks, getattr(model, runner)))
        for block in blocks:
            block.self_attn.attend = self.attend  # the projections and RoPE stay the model's own
        return self

    def remove(self) -> None:
        """Restore the model's own ``run_blocks`` and self-attention."""
        if self.model is None:
            return
        for block in self._blocks:
            del block.self_attn.attend
        delattr(self.model, self._runner)
        if self._previous_run_blocks is not None:
            setattr(self.model, self._runner, self._previous_run_blocks)
        self.model = self._previous_run_blocks = None
        self._blocks = []

    # -- the wrapped pieces -------------------------------------------------------------
    def _run_blocks(
        self,
        run_blocks: RunBlocks,
        x: torch.Tensor,  # sharded
        e0: torch.Tensor,  # sharded when per token
        context: torch.Tensor,  # whole
        context_img: torch.Tensor | None,  # whole
        rope: torch.Tensor,  # sharded
        context_bias: torch.Tensor | None = None,  # whole
        blocks: slice = slice(None),  # passed through
    ) -> torch.Tensor:
        """Shard tokens (B, L, C), e0 and RoPE over the sequence group, run ``run_blocks`` (the wrapped one), gather.

        Bound to ``run_blocks`` it has the :class:`RunBlocks` signature. The context and the text-key bias are per
        sample, not per token: kept whole; ``blocks`` passes through.
        """
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("sequence parallelism is for inference: run under torch.no_grad()")
        total, degree = x.shape[1], self.groups.sp_degree
        chunk = math.ceil(total / degree)
        mine = slice(self.groups.sp_rank * chunk, (self.groups.sp_rank + 1) * chunk)
        x_local = local_chunk(x, 1, chunk, degree, self.groups.sp_rank)  # (B, chunk, C)
        # e0 is (B, 1, 6, C) for one timestep per sample, or per token (B, L, 6, C): then shard it too.
        e0_local = e0 if e0.shape[1] == 1 else pad_dim(e0, 1, chunk * degree)[:, mine]
        rope_local = pad_dim(rope, 0, chunk * degree)[mine]  # (chunk, D/2): the tokens' true positions
        # Per-token tensors the runner reads besides its arguments (VACE's context) split like the tokens.
        shard = functools.partial(_side_stream_chunk, total=total, chunk=chunk, degree=degree, rank=self.groups.sp_rank)
        self._shard = _Shard(total=total, chunk=chunk)
        try:
            with points.sequence_side_streams(self.model, shard):
                # this rank's chunk of the output: (B, chunk, C)
                out = run_blocks(x_local, e0_local, context, context_img, rope_local, context_bias, blocks=blocks)
        finally:
            self._shard = None
        return all_gather_cat(out, self.groups.sp_group, dim=1)[:, :total]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Local chunks (B, chunk, H, D) -> attention over the whole sequence for the local queries."""
        if self._shard is None:
            raise RuntimeError("parallel self-attention called outside the hooked run_blocks")
        groups, heads = self.groups, q.shape[2]
        if groups.ulysses_degree > 1:
            padded_heads = math.ceil(heads / groups.ulysses_degree) * groups.ulysses_degree
            packed = pad_dim(torch.stack([q, k, v]), 3, padded_heads)  # (3, B, chunk, H', D); zero heads
            q, k, v = sequence_to_heads(packed, groups.ulysses_group).unbind(0)  # (B, U*chunk, H'/U, D)
        segment = q.shape[1]  # tokens of one ring segment
        valid = functools.partial(_valid_length, total=self._shard.total, segment=segment)
        if groups.ring_degree > 1:
            out = ring_attention(q, k, v, groups, valid)
        else:
            keep = valid(0)
            out = attention(q, k[:, :keep], v[:, :keep])  # (B, L_padded, H'/U, D)
        if groups.ulysses_degree > 1:
            out = heads_to_sequence(out, groups.ulysses_group)[:, :, :heads]  # (B, chunk, H, D)
        return out


def local_chunk(t: torch.Tensor, dim: int, chunk: int, degree: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s ``chunk`` tokens of ``t`` along ``dim``, zero-padded at the end to ``chunk * degree``."""
    return pad_dim(t, dim, chunk * degree).narrow(dim, rank * chunk, chunk)


def _side_stream_chunk(t: torch.Tensor, dim: int, total: int, chunk: int, degree: int, rank: int) -> torch.Tensor:
    """A side stream's chunk; it must be per token, as long as the sequence being split."""
    if t.shape[dim] != total:
        raise ValueError(f"a per-token side stream has {t.shape[dim]} tokens on dim {dim}, the sequence {total}")
    return local_chunk(t, dim, chunk, degree, rank)


def _valid_length(index: int, total: int, segment: int) -> int:
    """Real (unpadded) tokens in ring segment ``index`` of ``segment`` tokens, padding at the end."""
    return max(0, min(segment, total - index * segment))


@dataclass
class _Stream:
    """One token stream of the joint sequence while the blocks run: its real tokens and the tokens each rank holds
    (the padded chunk when split, every token when the stream stays whole on every rank)."""

    name: str
    total: int
    local: int
    split: bool

    def keys(self, rank: int) -> int:
        """How many of rank ``rank``'s tokens of this stream are keys: its real ones when split; a whole stream's
        only on rank 0 (the others hold copies)."""
        if self.split:
            return _valid_length(rank, self.total, self.local)
        return self.total if rank == 0 else 0


class JointSequenceParallel(SequenceParallel):
    """Sequence parallelism for a model whose block loop is not ours (diffusers' CogVideoX, FLUX.1, FLUX.2,
    Qwen-Image, Z-Image), through hooks.

    The first declared block splits the ``_sequence_parallel_shards`` arguments over the ranks (the
    per-token streams and side inputs: tokens, RoPE tables, key masks); later blocks split the side inputs
    they are handed whole; the last block's output streams (or the declared ``_sequence_parallel_gather``
    module's output) are gathered back, padding cut. A stream that is not declared (CogVideoX's text) stays
    whole on every rank. Each block's ``_attention_seam`` runs the joint attention over this rank's tokens of
    every stream, in ``_sequence_parallel_layout`` order: Ulysses swaps tokens for heads, Ring passes K/V
    blocks around, and the keys of padding (and of the copies of a whole stream, and masked keys) are left
    out, so the result is the one-process attention.
    """

    def __init__(self, groups: ParallelGroups):
        super().__init__(groups)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seams: list[object] = []
        self._shards: dict[str, points.Shard] = {}
        self._layout: tuple[str, ...] | None = None
        self._streams: list[_Stream] = []  # set by the first block, in attention order

    def attach(self, model: nn.Module) -> JointSequenceParallel:
        """Hook ``model``'s declared blocks, attention seams and gather points; returns self."""
        if self.model is not None:
            raise RuntimeError("this SequenceParallel hook is already attached")
        shards = points.sequence_parallel_shards(model)
        seams = points.attention_seams(model)
        blocks = points.blocks(model, "sequence parallelism")
        gathers = points.sequence_parallel_gather(model)
        inputs = points.sequence_parallel_inputs(model)
        if any("attend" in vars(seam) for seam in seams):
            raise RuntimeError("the model's attention is already replaced (sequence parallelism attached twice?)")
        self.model, self._blocks, self._seams = model, blocks, seams
        self._shards, self._layout = shards, points.sequence_parallel_layout(model)
        for index, block in enumerate(blocks):
            split = functools.partial(self._split_inputs, index == 0)
            self._handles.append(block.register_forward_pre_hook(split, with_kwargs=True))
        if gathers:
            for module, streams in gathers.items():
                self._handles.append(module.register_forward_hook(functools.partial(self._gather_module, streams)))
        else:
            self._handles.append(blocks[-1].register_forward_hook(self._gather_outputs))
        if inputs:
            split = functools.partial(self._split_model_inputs, inputs)
            self._handles.append(model.register_forward_pre_hook(split, with_kwargs=True))
        for seam in seams:
            seam.attend = self.attend_joint  # type: ignore[attr-defined]
        setattr(model, SHARDED_RELATIVE_L1, self.relative_l1)  # step caches measure chunks through it
        setattr(model, points.SEQUENCE_SIDE_MODEL, self.side_model)  # side streams run split through it
        return self

    def remove(self) -> None:
        """Detach every hook and give the blocks their own attention back."""
        for handle in self._handles:
            handle.remove()
        for seam in self._seams:
            del seam.attend  # type: ignore[attr-defined]
        if self.model is not None:
            self.model.__dict__.pop(SHARDED_RELATIVE_L1, None)
            self.model.__dict__.pop(points.SEQUENCE_SIDE_MODEL, None)
        self._handles, self._seams, self._blocks, self.model, self._streams = [], [], [], None, []

    @contextlib.contextmanager
    def side_model(self, side: nn.Module) -> Iterator[None]:
        """While the context lasts, ``side`` (a model run by hooks inside this model's forward on its blocks' split
        inputs: a Fun control side stream) runs on this rank's tokens too: its blocks attend over every rank, and
        its declared per-token inputs (the control context) are split as the stream they follow."""
        feature = "sequence parallelism (a side stream)"
        seams = points.attention_seams(side, feature)
        if any("attend" in vars(seam) for seam in seams):
            raise RuntimeError("the side model's attention is already replaced")
        handles = [module.register_forward_pre_hook(functools.partial(self._split_module_input, stream))
                   for module, stream in points.sequence_parallel_module_inputs(side, feature).items()]  # fmt: skip
        for seam in seams:
            seam.attend = self.attend_joint  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for seam in seams:
                del seam.attend  # type: ignore[attr-defined]

    def _split_module_input(self, stream: str, module: nn.Module, args: tuple) -> tuple | None:
        """Before a side model's declared module: this rank's tokens of its first input (per token of ``stream``)."""
        if not self._streams:
            return None  # run outside the transformer's split blocks: as it is
        return (self._split(args[0], points.TokenSplit(1, (stream,)), type(module).__name__), *args[1:])

    # -- splitting ------------------------------------------------------------------------
    def _split_inputs(self, first: bool, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Before a block: this rank's part of each per-token input (the streams only at the first block)."""
        if torch.is_grad_enabled():
            raise RuntimeError("sequence parallelism is for inference: run under torch.no_grad()")
        bound = inspect.signature(block.forward).bind_partial(*args, **kwargs).arguments
        streams = points.split_streams(self.model, block)
        if first:
            self._start(bound, streams)
        for name, shard in self._shards.items():
            if bound.get(name) is not None and (first or name not in streams):
                bound[name] = self._split(bound[name], shard, name)
        return (), bound

    def _start(self, bound: dict, streams: tuple[str, ...]) -> None:
        """Record every stream of the layout: its length, and how many tokens each rank keeps."""
        layout = self._layout or tuple(
            [name for name in streams if name not in self._shards] + [name for name in streams if name in self._shards]
        )
        degree, found = self.groups.sp_degree, []
        for name in layout:
            tensor = bound.get(name)
            if tensor is None:
                raise ValueError(f"sequence parallelism: the first block got no {name!r}, a stream of the layout")
            shard = self._shards.get(name)
            if shard is None:
                found.append(_Stream(name, tensor.shape[1], tensor.shape[1], split=False))
            else:
                total = tensor.shape[shard.dim]  # type: ignore[union-attr]
                found.append(_Stream(name, total, math.ceil(total / degree), split=True))
        self._streams = found
        lead = self._lead()
        self._shard = _Shard(total=lead.total, chunk=lead.local)

    def _stream(self, name: str) -> _Stream:
        for stream in self._streams:
            if stream.name == name:
                return stream
        raise ValueError(
            f"sequence parallelism: {name!r} is not a stream of the layout {[s.name for s in self._streams]}"
        )

    def _lead(self) -> _Stream:
        """The stream a step cache measures: ``hidden_states`` if split, else the first split one."""
        split = [stream for stream in self._streams if stream.split]
        return next((stream for stream in split if stream.name == "hidden_states"), split[0])

    def _split(self, value: torch.Tensor | tuple, shard: points.Shard, name: str) -> torch.Tensor | tuple:
        """This rank's part of a per-token argument: each stream it spans chunked, zero-padded at the end."""
        if isinstance(shard, tuple):  # one split per element of a tuple argument
            return type(value)(self._split(part, each, name) for part, each in zip(value, shard, strict=True))
        if isinstance(value, (tuple, list)):
            return type(value)(self._split(part, shard, name) for part in value)
        if shard.streams is not None:
            spans = [self._stream(stream) for stream in shard.streams]
        elif any(stream.name == name for stream in self._streams):
            spans = [self._stream(name)]
        else:
            spans = [stream for stream in self._streams if stream.split]
        sizes = [stream.total for stream in spans]
        if value.shape[shard.dim] != sum(sizes):
            raise ValueError(f"sequence parallelism: {name} has {value.shape[shard.dim]} tokens on dim {shard.dim}, "
                             f"the streams {[s.name for s in spans]} {sum(sizes)}")  # fmt: skip
        parts = [
            self._local_part(part, shard.dim, stream)
            for part, stream in zip(value.split(sizes, shard.dim), spans, strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=shard.dim)

    def _local_part(self, t: torch.Tensor, dim: int, stream: _Stream) -> torch.Tensor:
        if not stream.split:
            return t
        return local_chunk(t, dim, stream.local, self.groups.sp_degree, self.groups.sp_rank)

    def _split_model_inputs(self, names: dict[str, int], model: nn.Module, args: tuple, kwargs: dict) -> tuple:
        """Before the model's forward: this rank's chunk of each declared per-token input (chunked by its own
        length, as the stream it is added to will be)."""
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
        for name, dim in names.items():
            if bound.arguments.get(name) is not None:
                bound.arguments[name] = self._own_chunk(bound.arguments[name], dim)
        return bound.args, bound.kwargs

    def _own_chunk(self, value: object, dim: int) -> object:
        if isinstance(value, dict):
            return {key: self._own_chunk(item, dim) for key, item in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(self._own_chunk(item, dim) for item in value)
        degree = self.groups.sp_degree
        return local_chunk(value, dim, math.ceil(value.shape[dim] / degree), degree, self.groups.sp_rank)

    # -- gathering ------------------------------------------------------------------------
    def _unsplit(self, t: torch.Tensor, spans: list[_Stream]) -> torch.Tensor:
        """The whole sequence of a (B, local, ...) tensor spanning ``spans``: every rank's part, padding cut."""
        sizes = [stream.local for stream in spans]
        if t.shape[1] != sum(sizes):
            raise ValueError(f"sequence parallelism: an output of {t.shape[1]} tokens, this rank holds {sum(sizes)}")
        if not any(stream.split for stream in spans):
            return t
        parts = [part.split(sizes, 1) for part in all_gather_cat(t, self.groups.sp_group, dim=1).split(sum(sizes), 1)]
        mine = t.split(sizes, 1)
        pieces = [torch.cat([part[i] for part in parts], 1)[:, : stream.total] if stream.split else mine[i]
                  for i, stream in enumerate(spans)]  # fmt: skip
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)

    def _spans_of(self, name: str, t: torch.Tensor) -> list[_Stream]:
        """The streams an output named ``name`` carries: its own, or all of them (a joint stream, FLUX.2's single
        blocks), told by its length."""
        own = next((stream for stream in self._streams if stream.name == name), None)
        if own is not None and t.shape[1] == own.local:
            return [own]
        return self._streams

    def _gather_outputs(self, block: nn.Module, args: tuple, output: tuple | torch.Tensor) -> tuple | torch.Tensor:
        """After the last block: the whole sequence of every split stream, padding cut off."""
        names = points.split_streams(self.model, block)
        outputs = list(output) if isinstance(output, tuple) else [output]
        gathered = [self._unsplit(t, self._spans_of(name, t)) for name, t in zip(names, outputs, strict=False)]
        self._finish()
        return tuple(gathered) if isinstance(output, tuple) else gathered[0]

    def _gather_module(
        self, streams: tuple[str, ...], module: nn.Module, args: tuple, output: torch.Tensor
    ) -> torch.Tensor:
        """After a declared gather module: its output over the whole sequence."""
        if not self._streams:
            return output  # the module ran outside a hooked pass
        gathered = self._unsplit(output, [self._stream(name) for name in streams])
        self._finish()
        return gathered

    def _finish(self) -> None:
        self._streams, self._shard = [], None

    def relative_l1(self, current: torch.Tensor, previous: torch.Tensor) -> float:
        """mean |a - b| / mean |b| of two chunks ``(B, chunk, ...)`` of a split stream, over the whole sequence.

        Each rank sums its real tokens (the padding at the end is left out) and the group adds the
        sums, so every rank gets the one-process number (up to summation order).
        """
        if self._shard is None:
            raise RuntimeError("a split stream measured outside the hooked blocks")
        keep = _valid_length(self.groups.sp_rank, self._shard.total, self._shard.chunk)
        a, b = current[:, :keep].float(), previous[:, :keep].float()
        sums = torch.stack([(a - b).abs().sum(), b.abs().sum()])  # (2,)
        dist.all_reduce(sums, group=self.groups.sp_group)
        return (sums[0] / sums[1].clamp(min=1e-12)).item()

    # -- attention ------------------------------------------------------------------------
    def attend_joint(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        text_len: int | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This rank's (B, L_local, H, D) q / k / v, its tokens of every stream in layout order -> their attention
        over the whole sequence. ``key_mask`` (B, L_local) bool: keys to attend to (True); ``text_len`` is the
        model's (the layout says where each stream's tokens sit).

        Split streams go through the Ulysses all-to-all and the ring; a whole stream (on every rank) is not sent:
        each rank takes its heads of it (Ulysses), attends to its keys once and merges them by log-sum-exp (Ring).
        """
        if not self._streams:
            raise RuntimeError("parallel attention called outside the hooked blocks")
        groups, heads, streams = self.groups, q.shape[2], self._streams
        sizes = [stream.local for stream in streams]
        if q.shape[1] != sum(sizes):
            raise RuntimeError(f"the joint attention got {q.shape[1]} tokens; this rank holds {sum(sizes)} of the "
                               f"layout {[s.name for s in streams]}")  # fmt: skip
        whole, split = self._by_kind([q, k, v])  # q, k, v of the whole streams (None: none) and of the split ones
        whole_keys = split_masks = None
        if key_mask is not None:
            whole_mask, split_mask = self._by_kind([key_mask.bool()])
            whole_keys = None if whole_mask is None else whole_mask[0]  # (B, L_whole)
            split_masks = all_gather_cat(split_mask[0].to(torch.uint8), groups.sp_group, dim=1).bool()  # (B, sp*Ls)
        if groups.ulysses_degree > 1:
            padded_heads = math.ceil(heads / groups.ulysses_degree) * groups.ulysses_degree
            packed = pad_dim(torch.stack(split), 3, padded_heads)  # (3, B, L_split, H', D); zero heads
            split = list(sequence_to_heads(packed, groups.ulysses_group).unbind(0))  # (B, U * L_split, H'/U, D)
            if whole is not None:  # every rank holds them: it takes its heads
                mine = padded_heads // groups.ulysses_degree
                heads_of_mine = slice(groups.ulysses_rank * mine, (groups.ulysses_rank + 1) * mine)
                whole = [pad_dim(t, 2, padded_heads)[:, :, heads_of_mine] for t in whole]
        whole_len = 0 if whole is None else whole[0].shape[1]
        queries = split[0] if whole is None else torch.cat([whole[0], split[0]], dim=1)
        split_keys = functools.partial(self._segment_keys, masks=split_masks, device=q.device)
        if groups.ring_degree > 1:
            out, lse = ring_attention_with_lse(
                queries, split[1], split[2], groups, keys=lambda segment: _selection(split_keys(segment))
            )
            if whole is not None:
                block = attention_over_keys(queries, whole[1], whole[2], _selection(whole_keys), with_lse=True)
                if block is not None:
                    out, lse = merge_attention(out, lse, *block)
            out = out.to(q.dtype)
        elif whole is None:
            out = attention_over_keys(queries, split[1], split[2], _selection(split_keys(0)))
        else:
            keep = _joined_keys(whole_keys, whole_len, split_keys(0), split[1].shape[1])
            keys, values = torch.cat([whole[1], split[1]], dim=1), torch.cat([whole[2], split[2]], dim=1)
            out = attention_over_keys(queries, keys, values, _selection(keep))
        out_whole, out_split = out[:, :whole_len], out[:, whole_len:]
        if groups.ulysses_degree > 1:
            out_split = heads_to_sequence(out_split, groups.ulysses_group)[:, :, :heads]  # (B, L_split, H, D)
            if whole is not None:
                out_whole = all_gather_cat(out_whole.contiguous(), groups.ulysses_group, dim=2)[:, :, :heads]
        pieces = {True: iter(out_split.split([s.local for s in streams if s.split], 1)),
                  False: iter(out_whole.split([s.local for s in streams if not s.split], 1))}  # fmt: skip
        return torch.cat([next(pieces[stream.split]) for stream in streams], dim=1)  # layout order

    def _by_kind(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor] | None, list[torch.Tensor]]:
        """Each (B, L_local, ...) tensor's tokens of the whole streams (``None`` when there are none) and of the
        split streams, each kind in layout order."""
        sizes = [stream.local for stream in self._streams]
        parts = [t.split(sizes, 1) for t in tensors]

        def kind(split: bool) -> list[torch.Tensor]:
            return [
                torch.cat([p for p, s in zip(ps, self._streams, strict=True) if s.split == split], 1) for ps in parts
            ]

        return (kind(False) if any(not s.split for s in self._streams) else None), kind(True)

    def _segment_keys(self, segment: int, masks: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Which split-stream keys of ring segment ``segment`` (its Ulysses group's ranks' tokens, in rank order)
        are attended to: a bool (L,) or, with key masks, (B, L); ``None``: all of them."""
        u = self.groups.ulysses_degree
        split = [stream for stream in self._streams if stream.split]
        counts = [
            (stream.keys(rank), stream.local) for rank in range(segment * u, (segment + 1) * u) for stream in split
        ]
        keep = None
        if any(count < local for count, local in counts):
            keep = torch.cat([torch.arange(local) < count for count, local in counts]).to(device)  # (U * L_split,)
        if masks is None:
            return keep
        length = sum(local for _, local in counts)
        segment_masks = masks[:, segment * length : (segment + 1) * length]  # (B, U * L_split)
        return segment_masks if keep is None else segment_masks & keep


def _joined_keys(a: torch.Tensor | None, a_len: int, b: torch.Tensor | None, b_len: int) -> torch.Tensor | None:
    """Two key selections (bool (L,) / (B, L) / ``None``: all) of consecutive key blocks as one."""
    if a is None and b is None:
        return None
    device = (a if a is not None else b).device
    a = torch.ones(a_len, dtype=torch.bool, device=device) if a is None else a
    b = torch.ones(b_len, dtype=torch.bool, device=device) if b is None else b
    if a.dim() != b.dim():  # one per sample, one shared: share it per sample
        rows = max(a.shape[0] if a.dim() == 2 else 1, b.shape[0] if b.dim() == 2 else 1)
        a, b = (t.expand(rows, -1) if t.dim() == 1 else t for t in (a, b))
    return torch.cat([a, b], dim=-1)


def _selection(keep: torch.Tensor | None) -> KeySelection:
    """A bool key selection as :func:`attention_over_keys` takes it: every key, their index, or per sample."""
    if keep is None:
        return slice(None)
    return keep.nonzero()[:, 0] if keep.dim() == 1 else keep


def enable_sequence_parallel(model: nn.Module, groups: ParallelGroups) -> SequenceParallel | None:
    """Attach sequence parallelism when the layout splits the sequence (else ``None``): through the model's
    block runner when it declares one (:class:`SequenceParallel`), else through block hooks and its
    attention seams (:class:`JointSequenceParallel`)."""
    if groups.sp_degree == 1:
        return None
    if points.block_runner(model) is None:
        return JointSequenceParallel(groups).attach(model)
    return SequenceParallel(groups).attach(model)


# ----------------------------------------------------------------------------------------
# CFG parallelism
# ----------------------------------------------------------------------------------------
@dataclass
class CfgParallelGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance with the two passes on two groups of ranks.

    Branch 0 runs the conditional pass, branch 1 the unconditional one; the pair exchanges its
    predictions (all-gather) and every rank combines them identically, so the scheduler steps
    stay in lock-step. Steps without the unconditional pass (CFG skip) run cond on every rank.
    """

    group: dist.ProcessGroup | None = None
    branch: int = 0

    def predict_both(
        self, denoise: Denoiser, latents: torch.Tensor, t: torch.Tensor, cond: dict, uncond: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's branch runs its pass; the pair all-gathers: (cond, uncond) on both branches."""
        with cache_branch("uncond" if self.branch else "cond"):
            mine = denoise(latents, t, uncond if self.branch else cond)  # (B, C, F, H, W)
        pred_cond, pred_uncond = all_gather_cat(mine[None], self.group, dim=0)  # branch order: cond, uncond
        return pred_cond, pred_uncond


# ----------------------------------------------------------------------------------------
# FSDP for inference
# ----------------------------------------------------------------------------------------
def fsdp_shard(root: nn.Module, units: Iterable[nn.Module], device: torch.device) -> nn.Module:
    """Shard ``root``'s weights over every rank with FSDP2 (``fully_shard``): each of ``units`` is gathered
    just before it runs and freed after, the rest of ``root`` (embeddings, head) with the root.

    The shards are moved to ``device`` (load the model on the CPU first so no rank holds it whole there).
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise RuntimeError("FSDP inference needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from None
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


def shard_transformer(transformer: nn.Module, device: torch.device) -> nn.Module:
    """FSDP over the DiT blocks: one unit per block of the model's declared ``_block_lists``."""
    return fsdp_shard(transformer, points.blocks(transformer, "FSDP (--fsdp-dit)"), device)


def shard_text_encoder(text_encoder: nn.Module, device: torch.device) -> nn.Module:
    """FSDP over the T5-family encoder blocks (``model.encoder.block``) of a pipeline's text encoder wrapper."""
    fsdp_shard(text_encoder.model, text_encoder.model.encoder.block, device)
    return text_encoder


# ----------------------------------------------------------------------------------------
# Entry points for scripts
# ----------------------------------------------------------------------------------------
@dataclass
class ParallelRuntime:
    """What a script needs after set-up: this rank's place, its groups, and the attached hooks."""

    info: DistInfo
    groups: ParallelGroups
    fsdp_dit: bool = False
    fsdp_text_encoder: bool = False
    hooks: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints progress."""
        return self.info.is_main

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.info.distributed

    @property
    def device(self) -> torch.device:
        """This rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
        return self.info.device

    @property
    def shards_weights(self) -> bool:
        """Whether FSDP shards a model (load it on the CPU, then :func:`setup_parallel` moves the shards)."""
        return self.distributed and (self.fsdp_dit or self.fsdp_text_encoder)

    def guidance(self, scale: float, skip_ratio: float = 0.0, batched: bool = True) -> ClassifierFreeGuidance:
        """The guidance for this layout: CFG-parallel across the two branches, else ordinary CFG."""
        if self.groups.cfg_parallel:
            return CfgParallelGuidance(
                scale=scale, skip_ratio=skip_ratio, group=self.groups.cfg_group, branch=self.groups.cfg_rank
            )
        return ClassifierFreeGuidance(scale=scale, batched=batched, skip_ratio=skip_ratio)

    def remove_hooks(self) -> None:
        """Detach the sequence-parallel hooks (FSDP sharding stays)."""
        for hook in reversed(self.hooks):
            hook.remove()
        self.hooks.clear()


def default_degrees(ulysses: int | None, ring: int | None, cfg_parallel: bool, world_size: int) -> tuple[int, int]:
    """The (ulysses, ring) degrees to use: unset ones are 1, except that with neither given every
    process (over the CFG split) goes to Ulysses, so a bare ``torchrun --nproc-per-node=N`` works."""
    if ulysses is None and ring is None and world_size > 1:
        branches = 2 if cfg_parallel else 1
        if world_size % branches == 0:
            logger.info("no --ulysses-degree / --ring-degree given: Ulysses degree %d", world_size // branches)
            return world_size // branches, 1
    return ulysses or 1, ring or 1


def init_parallel(options: RuntimeOptions) -> ParallelRuntime:
    """Check the degrees against the world size (every rank, before anything loads), start the groups.

    Raises ``ValueError`` stating the required product on a mismatch. On ranks other than 0 the
    package's INFO logging is silenced so only rank 0 reports progress.
    """
    cfg_parallel = getattr(options, "cfg_parallel", False)
    info_device = getattr(options, "device", "auto")
    world_size = dist_info_from_env(info_device).world_size
    ulysses, ring = default_degrees(
        getattr(options, "ulysses_degree", None), getattr(options, "ring_degree", None), cfg_parallel, world_size
    )
    check_world_size(ulysses, ring, cfg_parallel, world_size)
    info = init_distributed(info_device)
    if not info.is_main:
        logging.getLogger("videox_fun").setLevel(logging.WARNING)
    fsdp_dit, fsdp_text = getattr(options, "fsdp_dit", False), getattr(options, "fsdp_text_encoder", False)
    if (fsdp_dit or fsdp_text) and not info.distributed:
        logger.warning("--fsdp-dit / --fsdp-text-encoder need several processes (torchrun); ignored")
    groups = build_groups(ulysses, ring, cfg_parallel)
    return ParallelRuntime(info, groups, fsdp_dit=fsdp_dit, fsdp_text_encoder=fsdp_text)


def setup_parallel(options: RuntimeOptions, pipe: Pipeline, runtime: ParallelRuntime | None = None) -> ParallelRuntime:
    """Attach the requested parallelism to a loaded pipeline of any family; returns the runtime.

    Sequence parallelism hooks each of ``pipe.transformers``; FSDP shards the transformer / text encoder and
    moves the pipeline to this rank's device. Pass the runtime from :func:`init_parallel` when the
    world size was checked before loading.
    """
    runtime = runtime or init_parallel(options)
    if runtime.distributed and runtime.fsdp_dit:
        for transformer in pipe.transformers:
            shard_transformer(transformer, runtime.device)
    if runtime.distributed and runtime.fsdp_text_encoder:
        shard_text_encoder(pipe.components()["text_encoder"][0], runtime.device)
    if runtime.shards_weights:
        # FSDP already placed its shards; move the other components without touching them.
        sharded = {id(t) for t in pipe.transformers} if runtime.fsdp_dit else set()
        sharded |= {id(pipe.components()["text_encoder"][0])} if runtime.fsdp_text_encoder else set()
        for module, _ in pipe.components().values():
            if id(module) not in sharded:
                module.to(runtime.device)
        pipe.device = runtime.device
    for transformer in pipe.transformers:
        hook = enable_sequence_parallel(transformer, runtime.groups)
        if hook is not None:
            runtime.hooks.append(hook)
    return runtime
