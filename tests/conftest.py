"""The test suite's root.

With pytest's default ``prepend`` import mode, loading this file puts ``tests/`` on ``sys.path``, so every test
module (in any folder) can ``import helpers``, the helpers shared across folders.
"""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from videox_fun.io.video import write_video
from videox_fun.registry import CACHE_ENV


@pytest.fixture(autouse=True)
def seeded_random_generators() -> None:
    """Every test starts from the same state of torch's, numpy's and Python's global generators.

    A test's unseeded random inputs are then the same on every run and machine, so a numeric
    tolerance is met or missed for good, never by the draw of the day.
    """
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A start image, a video of a red square moving right, a mask video and a control video, 64x64, 17 frames."""
    folder = tmp_path_factory.mktemp("media")
    frames = np.zeros((17, 64, 64, 3), np.uint8)
    for i in range(17):
        frames[i, 24:40, 4 + 2 * i : 20 + 2 * i] = (220, 40, 40)
    mask = np.zeros_like(frames)
    mask[:, 16:48, 16:48] = 255
    edges = np.zeros_like(frames)
    edges[:, ::8] = 255
    return {
        "image": write_video(frames[:1], folder / "start.png"),
        "video": write_video(frames, folder / "video.mp4"),
        "mask": write_video(mask, folder / "mask.mp4"),
        "control_video": write_video(edges, folder / "control.mp4"),
    }


@pytest.fixture(scope="module")
def builtin_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of built-in tiny models shared by one test module (it builds each model it uses once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def builtin_cache(builtin_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The built-in models resolved into the module's :func:`builtin_cache_dir` (``CACHE_ENV``) during the test;
    a module takes it with ``pytestmark = pytest.mark.usefixtures("builtin_cache")``."""
    monkeypatch.setenv(CACHE_ENV, str(builtin_cache_dir))
    return builtin_cache_dir
