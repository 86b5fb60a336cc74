"""Quality measures shared by the benchmarks, the toy-world report and the tests."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def psnr(x: ArrayLike, reference: ArrayLike, peak: float | None = None, cap: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``x`` against ``reference`` (same shape) in dB.

    peak: the signal's peak (255 for uint8 frames); by default the reference's max |value|, for
    tensors with no fixed range (latents, transformer outputs). cap: the value reported for
    identical inputs and the most ever reported (JSON has no infinity); without one, identical
    inputs give ``inf``.
    """
    x64, ref64 = torch.as_tensor(x).double(), torch.as_tensor(reference).double()
    mse = (x64 - ref64).pow(2).mean().item()
    peak = peak if peak is not None else ref64.abs().max().item()
    value = float("inf") if mse == 0 else 10.0 * float(np.log10(peak**2 / mse))
    return value if cap is None else min(cap, value)
