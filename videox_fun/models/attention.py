"""The one attention dispatch of the package.

Every model calls :func:`attention` with (B, L, heads, head_dim) tensors. SDPA is the
default; flash-attn 2/3 and SageAttention are used when installed, on a GPU, and asked for
(or chosen by ``"auto"``). They are imported lazily so the package imports on a CPU-only torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash_attn", "flash_attn3", "sage")
_active_backend = "sdpa"


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA wants (B, heads, L, D).
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)


def _flash_attn3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD")


_KERNELS: dict[str, tuple[str | None, Callable[..., torch.Tensor]]] = {
    "sdpa": (None, _sdpa),
    "flash_attn": ("flash_attn", _flash_attn),
    "flash_attn3": ("flash_attn_interface", _flash_attn3),
    "sage": ("sageattention", _sage),
}

# What a user runs to get each optional kernel; flash-attn 3 ships no wheel, only the repo's hopper/ build.
_INSTALL_HINTS = {
    "flash_attn": "pip install flash-attn",
    "flash_attn3": "build it from the hopper/ folder of the flash-attention repo",
    "sage": "pip install sageattention",
}


def available_backends() -> list[str]:
    """Backends whose package is installed (GPU kernels only count when CUDA is present)."""
    found = ["sdpa"]
    if torch.cuda.is_available():
        for name, (module, _) in _KERNELS.items():
            if module is not None and importlib.util.find_spec(module) is not None:
                found.append(name)
    return found


def resolve_backend(name: str) -> str:
    """Turn a requested backend (or ``auto``) into one that can run here.

    Raises ValueError, naming the package to install, when the backend cannot run here.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    found = available_backends()
    if name == "auto":
        for preferred in ("flash_attn3", "flash_attn", "sage", "sdpa"):
            if preferred in found:
                return preferred
    if name not in found:
        raise ValueError(_unavailable_message(name, found))
    return name


def _unavailable_message(name: str, found: list[str]) -> str:
    # A ValueError with a one-line fix: the CLI reports it as "error: ..." rather than a traceback.
    module = _KERNELS[name][0]
    if module is not None and importlib.util.find_spec(module) is not None:
        reason = "needs a CUDA GPU and none is visible"
    else:
        reason = f"needs the {module!r} package, which is not installed ({_INSTALL_HINTS[name]})"
    return f"attention backend {name!r} {reason}; available here: {', '.join(found)}"


def set_attention_backend(name: str) -> str:
    """Select the backend used by every later :func:`attention` call; returns the resolved name."""
    global _active_backend
    _active_backend = resolve_backend(name)
    return _active_backend


def get_attention_backend() -> str:
    """The backend :func:`attention` currently uses."""
    return _active_backend


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Use a backend inside a ``with`` block only."""
    previous = _active_backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention. q: (B, Lq, H, D), k / v: (B, Lk, H, D) -> (B, Lq, H, D).

    bias: optional additive logits per key (B, Lk), e.g. log-multiplicities of merged keys or -inf.
    The half-precision kernels need fp16/bf16 inputs and take no bias; such calls use SDPA.
    """
    if bias is not None:
        mask = bias[:, None, None, :].to(q.dtype)  # (B, 1, 1, Lk), broadcast over heads and queries
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)
    backend = _active_backend
    if backend != "sdpa" and q.dtype not in (torch.float16, torch.bfloat16):
        backend = "sdpa"
    return _KERNELS[backend][1](q, k, v)


def key_mask_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A key mask (B, Lk) bool, True = attend, as :func:`attention`'s additive bias: 0 or -inf per key."""
    return torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill(~key_mask.bool(), -math.inf)


class AttentionSeam:
    """Base of the attention processors whose softmax attention is one replaceable method, :meth:`attend`.

    The processor does the model's math around it (projections, norms, rotary embeddings, output projections);
    sequence parallelism replaces ``attend`` on the instance (the model's ``_attention_seam``) to attend over the
    tokens of every rank.
    """

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        text_len: int | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joint attention of (B, L, H, D) tensors -> (B, L, H, D); ``key_mask`` (B, L) bool leaves out the keys
        marked False; ``text_len`` (the text tokens in front, when the model has them) is for a replacement."""
        bias = None if key_mask is None else key_mask_bias(key_mask, q.dtype)
        return attention(q, k, v, bias)


# ----------------------------------------------------------------------------------------
# Attention that also returns the log-sum-exp (ring attention merges partial results with it)
# ----------------------------------------------------------------------------------------
# Scores computed at once per chunk of queries are capped at about this many fp32 values, so the
# pure-torch path stays within a few hundred MB whatever the sequence length.
_LSE_CHUNK_ELEMENTS = 2**26


def _flash_attn_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)  # lse: (B, H, Lq) fp32
    return out, lse.transpose(1, 2).float()


def _torch_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Plain fp32 softmax attention, chunked over queries; no fused torch kernel hands back the LSE publicly.
    scale = q.shape[-1] ** -0.5
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, L, D)
    b, h, lq, _ = qf.shape
    chunk = max(1, _LSE_CHUNK_ELEMENTS // max(1, b * h * kf.shape[2]))
    outs, lses = [], []
    for start in range(0, lq, chunk):
        scores = qf[:, :, start : start + chunk] @ kf.transpose(-1, -2) * scale  # (B, H, c, Lk)
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, c)
        outs.append(torch.exp(scores - lse[..., None]) @ vf)  # (B, H, c, D)
        lses.append(lse)
    out = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)  # (B, Lq, H, D)
    return out, torch.cat(lses, dim=2).transpose(1, 2)  # (B, Lq, H)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the natural log-sum-exp of each query's scores.

    q: (B, Lq, H, D), k / v: (B, Lk, H, D) -> out (B, Lq, H, D) in q's dtype, lse (B, Lq, H) fp32.
    Two results over disjoint key sets combine exactly into the attention over their union
    (ring attention). flash-attn's kernel is used for fp16/bf16 CUDA tensors when it is installed;
    otherwise a pure-torch fp32 path (any device, memory bounded by chunking the queries).
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn") is not None:
        return _flash_attn_with_lse(q, k, v)
    return _torch_attention_with_lse(q, k, v)
