"""The shared PSNR: peak and cap conventions of its three users."""

from __future__ import annotations

import math

import numpy as np
import torch

from videox_fun.metrics import psnr


def test_psnr_of_uint8_frames_with_a_fixed_peak_and_cap():
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 10  # mse = 100 / 96
    assert math.isclose(psnr(b, a, peak=255.0), 10 * math.log10(255.0**2 * 96 / 100))
    assert psnr(a, a, peak=255.0, cap=100.0) == 100.0 and psnr(a, a, peak=255.0) == math.inf


def test_psnr_of_tensors_defaults_to_the_reference_peak():
    reference = torch.tensor([2.0, -4.0])
    assert math.isclose(psnr(reference + 0.1, reference), 10 * math.log10(16 / 0.01), rel_tol=1e-6)  # 0.1 in float32
    assert psnr(np.asarray(reference + 0.1), reference) == psnr(reference + 0.1, reference)
