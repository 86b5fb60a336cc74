"""Fixtures of the trainer tests: tiny model folders, a small video dataset, a config factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from training_helpers import FAST

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import write_test_dataset


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny model folders by variant (t2v, inp, control, control_ref), built once per session."""
    built: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in built:
            built[variant] = build_tiny_model_folder(tmp_path_factory.mktemp(f"model_{variant}") / variant, variant)
        return built[variant]

    return get


@pytest.fixture(scope="session")
def video_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Metadata of three 32x32 moving-square videos (9 frames) with control videos."""
    return write_test_dataset(
        tmp_path_factory.mktemp("videos"), n_videos=3, sizes=((32, 32),), lengths=(9,), with_control=True
    )


@pytest.fixture
def make_config(model_folders, video_data, tmp_path) -> Callable[..., TrainConfig]:
    """TrainConfig factory: a tiny model of ``variant``, the small dataset, FAST settings, overrides."""

    def make(variant: str = "inp", **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            **FAST,
            "pretrained_model_name_or_path": str(model_folders(variant)),
            "train_data_meta": str(video_data),
            "output_dir": str(tmp_path / "out"),
            **overrides,
        }
        return TrainConfig(**values)

    return make
