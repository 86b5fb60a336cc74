"""An exponential moving average of the trained weights (``--use_ema``).

VideoX-Fun's training scripts keep one with diffusers' ``EMAModel`` (decay 0.9999, no warm-up
power: see :func:`ema_decay`), and
DMD students (DMD2) are evaluated from one. Here the average is over the parameters the run trains
(the LoRA adapters, or the fine-tuned modules), kept in fp32 beside them, updated after each
optimizer step of the model (for ``--distill``: each step of the student, not of the critic).

A checkpoint holds it as ``ema.safetensors`` (the trained parameters' names, as
``trainable_0.safetensors``, so either file loads with ``--transformer_path``; the update count in
the file's metadata), so a resume continues the same average. The run's final LoRA file or model
folder, and its validation samples, are the average; the last checkpoint keeps the raw weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..io.files import save_safetensors
from .checkpoint import check_trainable_state

EMA_FILE = "ema.safetensors"
DEFAULT_EMA_DECAY = 0.9999  # diffusers' EMAModel, as VideoX-Fun's scripts use it
_UPDATES_KEY = "ema_updates"


def ema_decay(update: int, decay: float) -> float:
    """The decay of the ``update``-th average (1-based), diffusers' ``EMAModel`` schedule without warm-up power:
    0 for the first (the average starts at the first step's weights), then ``min(decay, (1 + n) / (10 + n))`` with
    ``n = update - 1``, so the early average follows the weights closely."""
    n = update - 1
    return 0.0 if n <= 0 else min(decay, (1 + n) / (10 + n))


class EMAWeights:
    """The fp32 moving average of ``params`` (trained parameters by name, as the model names them)."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.params, self.decay, self.updates = params, decay, 0
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @classmethod
    def of_trained(cls, model: nn.Module, decay: float) -> EMAWeights:
        """The average of ``model``'s parameters that require grad, starting at their values."""
        return cls({name: p for name, p in model.named_parameters() if p.requires_grad}, decay)

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the parameters as they are now (after an optimizer step)."""
        self.updates += 1
        weight = 1.0 - ema_decay(self.updates, self.decay)
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the parameters while the block runs (export, validation); the weights back after it."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(saved[name])

    def save(self, path: Path) -> Path:
        """Write the average (a checkpoint's :data:`EMA_FILE`), the update count in the metadata."""
        state = {name: t.cpu().contiguous() for name, t in self.shadow.items()}
        return save_safetensors(state, path, metadata={_UPDATES_KEY: str(self.updates)})

    def load(self, path: Path) -> None:
        """Restore an average :meth:`save` wrote, strictly: the same trained parameters, the same shapes."""
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} holds no {EMA_FILE}: it was not written by a --use_ema run")
        state = load_file(str(path))
        check_trainable_state(self.shadow, state, str(path))
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)
        with safe_open(str(path), framework="pt") as handle:
            self.updates = int((handle.metadata() or {}).get(_UPDATES_KEY, "0"))
