"""torch.compile of the repeated transformer blocks, and RIFLEx (offered by the model) for videos longer than trained.

Compiling each block (regional compilation) instead of the whole model compiles one graph that
all blocks share: start-up stays short and shape changes recompile one block, not the model.
"""

from __future__ import annotations

from torch import nn

from . import points


def compile_blocks(
    model: nn.Module, backend: str = "inductor", mode: str | None = None, dynamic: bool = False
) -> nn.Module:
    """Compile, in place, every block whose class the model declares in ``_repeated_blocks``; returns the model.

    Raises :class:`~videox_fun.runtime.points.ExtensionPointError` for a model that declares none.
    """
    for block in points.repeated_blocks(model, "compile (--compile)"):
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    return model


def apply_riflex(model: nn.Module, k: int) -> None:
    """RIFLEx (Zhao et al., 2025): lower the model's k-th frame frequency so a video longer than
    trained does not wrap around it. The model class offers it (``enable_riflex``), as its RoPE is its own."""
    enable = getattr(model, "enable_riflex", None)
    if enable is None:
        raise points.ExtensionPointError(
            f"model {type(model).__name__} offers no enable_riflex: --riflex-k cannot apply to it"
        )
    enable(k)


def remove_riflex(model: nn.Module) -> None:
    """Back to the trained RoPE (nothing to do for a model without RIFLEx)."""
    disable = getattr(model, "disable_riflex", None)
    if disable is not None:
        disable()
