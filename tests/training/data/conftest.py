"""Small datasets written once per module: moving squares of mixed sizes and lengths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from videox_fun.training.data import DataConfig, write_test_dataset

# Four aspect ratios x four lengths: 32x32 / 32x64 / 64x32 / 48x48 videos of 5, 9, 13 and 17 frames.
MIXED_SIZES = [(32, 32), (32, 64), (64, 32), (48, 48)]
MIXED_LENGTHS = [9, 13, 5, 17, 17]


@pytest.fixture(scope="module")
def mixed_meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 videos (mixed aspect ratios and lengths) and 4 images, each with a control file."""
    folder = tmp_path_factory.mktemp("mixed")
    return write_test_dataset(
        folder, n_videos=14, sizes=MIXED_SIZES, lengths=MIXED_LENGTHS, with_control=True, n_images=4
    )


@pytest.fixture
def mixed_config(mixed_meta: Path) -> Callable[..., DataConfig]:
    """A factory of configs for ``mixed_meta``: buckets on, 48 px video sides, up to 9 frames at stride 1."""

    def make(random_sizes: bool = False, **overrides: Any) -> DataConfig:
        """``random_sizes``: random_hw_adapt with a token budget, so batches take 48 or 64 px sides."""
        settings: dict[str, Any] = dict(
            train_data_meta=mixed_meta,
            video_sample_size=48,  # buckets 32x64, 48x48, 64x32
            image_sample_size=32,
            video_sample_n_frames=9,
            video_sample_stride=1,
            enable_bucket=True,
            seed=7,
        )
        if random_sizes:
            settings.update(
                random_hw_adapt=True, training_with_video_token_length=True, image_sample_size=64, token_sample_size=48
            )
        settings.update(overrides)
        return DataConfig(**settings)

    return make
