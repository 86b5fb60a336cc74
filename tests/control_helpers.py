"""Control-image test helpers, importable as ``control_helpers`` (``tests/conftest.py`` puts this folder on
``sys.path``): the control images the Fun control tests of every image family use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def control_images(size: int) -> dict[str, np.ndarray]:
    """Control images as users give them (any RGB image, uint8 (size, size, 3)): canny-like edges, a depth-like
    ramp, a pose-like figure (drawn for size 32, the tests' size)."""
    canny = np.zeros((size, size, 3), np.uint8)
    canny[8, 4:28] = canny[24, 4:28] = canny[8:25, 4] = canny[8:25, 27] = 255
    depth = np.repeat(np.linspace(0, 255, size, dtype=np.uint8)[None, :, None], size, 0).repeat(3, 2)
    pose = np.zeros((size, size, 3), np.uint8)
    pose[4:28, 15:17] = (255, 0, 0)
    pose[10:12, 6:26] = (0, 255, 0)
    return {"canny": canny, "depth": np.ascontiguousarray(depth), "pose": pose}


def write_pngs(folder: Path, images: Mapping[str, np.ndarray]) -> dict[str, Path]:
    """Each image as ``folder/<name>.png``, by name."""
    files = {}
    for name, pixels in images.items():
        files[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(files[name])
    return files
