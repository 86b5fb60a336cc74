"""The typed settings of the training data layer (field names are VideoX-Fun's flag names)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TRAIN_MODES

SIZE_MULTIPLE = 16  # VAE 8x spatial compression x patch 2: every trained side is a multiple of 16
CONTROL_MODES = ("control", "control_ref")  # modes that need a control video per entry


def _as_size(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``512``, ``[512]`` or ``[480, 832]`` -> ``(height, width)``, rounded down to multiples of 16 with a note."""
    values = [value] if isinstance(value, int) else list(value)
    if len(values) not in (1, 2) or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be one int or [height, width], got {value!r}")
    height, width = (values[0], values[0]) if len(values) == 1 else values
    if min(height, width) < SIZE_MULTIPLE:
        raise ValueError(f"{name} {value!r} is too small: each side must be at least {SIZE_MULTIPLE}")
    snapped = (height // SIZE_MULTIPLE * SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE)
    if snapped != (height, width):
        warnings.warn(
            f"{name} {height}x{width} is not a multiple of {SIZE_MULTIPLE}: using {snapped[0]}x{snapped[1]}",
            stacklevel=4,
        )
    return snapped


@dataclass
class DataConfig:
    """Where the training data is and how samples are cut from it.

    Defaults follow VideoX-Fun's training scripts. Sizes are stored as ``(height, width)``;
    one int means a square. Sides that are not multiples of 16 are rounded down with a warning.
    """

    #: metadata file: a JSON list, JSON Lines or CSV with ``file_path``, ``text``, ``type``
    #: (``video`` | ``image``) and optional ``control_file_path``, ``width``, ``height``.
    train_data_meta: str | Path | None = None
    #: folder the metadata paths are relative to (default: the metadata file's folder).
    train_data_dir: str | Path | None = None
    #: video sample size (one side or ``(height, width)``); with buckets, the side whose area
    #: the bucket sizes keep.
    video_sample_size: int | tuple[int, int] = 512
    #: image sample size, as ``video_sample_size``.
    image_sample_size: int | tuple[int, int] = 512
    #: frames per video sample, 4k+1 (shorter videos give fewer, still 4k+1).
    video_sample_n_frames: int = 17
    #: keep every n-th frame of a video.
    video_sample_stride: int = 4
    #: repeat every video entry this many times (0 = once) to balance videos against images.
    video_repeat: int = 0
    #: group samples by aspect ratio into sizes of a fixed list (else every sample is
    #: resized and centre-cropped to the sample size).
    enable_bucket: bool = False
    #: train each batch at a random smaller size (a bigger one for videos with the token budget).
    random_hw_adapt: bool = False
    #: cap frames x height x width of a video batch at the token budget
    #: ``video_sample_n_frames x token_sample_size^2``: bigger sizes get fewer frames.
    training_with_video_token_length: bool = False
    #: side of the square that makes the token budget.
    token_sample_size: int = 512
    #: share of samples whose text is replaced by "" (for classifier-free guidance).
    text_drop_ratio: float = 0.1
    #: stop when more than this share of the files checked are missing or unreadable.
    max_bad_share: float = 0.05
    #: ``normal`` (t2v), ``inpaint`` (samples carry a random generate mask), ``control`` or
    #: ``control_ref`` (every entry needs a ``control_file_path``).
    train_mode: str = "normal"
    #: seed of the data order, text dropout, clip starts, random sizes and masks.
    seed: int = 42
    #: start a clip at a random frame of a longer video (else at frame 0).
    random_clip_start: bool = True

    def __post_init__(self) -> None:
        self.video_sample_size = _as_size(self.video_sample_size, "video_sample_size")
        self.image_sample_size = _as_size(self.image_sample_size, "image_sample_size")
        problems = []
        if self.train_mode not in TRAIN_MODES:
            problems.append(f"train_mode {self.train_mode!r} is unknown; choose one of {', '.join(TRAIN_MODES)}")
        if self.video_sample_n_frames < 1 or (self.video_sample_n_frames - 1) % 4:
            problems.append(f"video_sample_n_frames {self.video_sample_n_frames} must be 4k+1 (e.g. 17, 49, 81)")
        if self.video_sample_stride < 1:
            problems.append(f"video_sample_stride must be at least 1, got {self.video_sample_stride}")
        if self.video_repeat < 0:
            problems.append(f"video_repeat must be >= 0, got {self.video_repeat}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if self.token_sample_size < SIZE_MULTIPLE:
            problems.append(f"token_sample_size must be at least {SIZE_MULTIPLE}, got {self.token_sample_size}")
        for name in ("text_drop_ratio", "max_bad_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("bad data config:\n  " + "\n  ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataConfig:
        """Build from a mapping holding these fields among others (e.g. ``TrainConfig.to_dict()``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    # -- derived -------------------------------------------------------------------------------
    @property
    def video_side(self) -> int:
        """Side of the square with the area of the video sample size."""
        return math.isqrt(self.video_sample_size[0] * self.video_sample_size[1])

    @property
    def image_side(self) -> int:
        """Side of the square with the area of the image sample size."""
        return math.isqrt(self.image_sample_size[0] * self.image_sample_size[1])

    @property
    def token_budget(self) -> int:
        """Pixels x frames a video batch may hold with ``training_with_video_token_length``."""
        return self.video_sample_n_frames * self.token_sample_size**2

    @property
    def needs_control(self) -> bool:
        """Whether every entry must name a control video."""
        return self.train_mode in CONTROL_MODES
