"""The training data settings, declared once, and the checked config the data layer reads.

:class:`DataSettings` declares each data setting once: its name (VideoX-Fun's flag name), type,
default and ``--help`` text (see :func:`setting`), and :meth:`DataSettings.data_problems` states
each rule the settings must meet, once. Two classes build on it:

- :class:`~videox_fun.training.config.TrainConfig` extends it, so these fields are the
  ``videox-fun train`` flags and training-YAML fields as given (sizes as lists: the run's record,
  which a resume compares), and its ``validate`` reports these rules at start;
- :class:`DataConfig` is what the data layer reads: the same fields, checked when it is built,
  plus the sample sizes made ``(height, width)`` multiples of 16 (``video_size`` / ``image_size``).
  :meth:`DataSettings.from_mapping` is the one conversion from a training config
  (``DataConfig.from_mapping(config.to_dict())``).

The given sizes and the snapped ones are kept in separate fields because they differ: the record
keeps what the user wrote; the data layer needs two sides it can decode to.
"""

# setting() returns a dataclasses.field (with a default_factory for lists), which RUF009 cannot see.
# ruff: noqa: RUF009
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

SIZE_MULTIPLE = 16  # VAE 8x spatial compression x patch 2: every trained side is a multiple of 16
TRAIN_MODES = (
    "normal", "inpaint", "i2v", "ti2v", "control", "control_ref", "control_camera_ref", "vace", "animate", "replace",
    "reward",
)  # fmt: skip
# Modes that need a control file per entry: a control video, or a camera trajectory for control_camera_ref.
CONTROL_MODES = ("control", "control_ref", "control_camera_ref")
# Wan2.2-Animate's modes: the files each needs in every entry (field -> what it holds). ``animate`` trains
# replacement on the entries that also give background_file_path and mask_file_path (as VideoX-Fun's train_animate);
# ``replace`` needs them everywhere. ref_file_path is optional: without it a frame of the clip is the reference.
ANIMATE_REQUIRED_FIELDS = {
    "animate": {"control_file_path": "the pose video", "face_file_path": "the face-crop video"},
    "replace": {
        "control_file_path": "the pose video",
        "face_file_path": "the face-crop video",
        "background_file_path": "the video without the person",
        "mask_file_path": "the person mask video",
    },
}
ANIMATE_MODES = tuple(ANIMATE_REQUIRED_FIELDS)

SettingsT = TypeVar("SettingsT", bound="DataSettings")


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field carrying its ``--help`` text (and argparse extras such as ``choices``).

    The flag of a field is typed by its annotation (``list[int]`` takes one or more ints, ``bool``
    is ``--name`` / ``--no-name``); see :func:`videox_fun.training.config.add_train_arguments`.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def _size_problem(value: int | Sequence[int], name: str) -> str | None:
    """Why ``value`` is no sample size (one int or ``[height, width]``, sides >= 16); None when it is one."""
    values = [value] if isinstance(value, int) else list(value)
    if len(values) not in (1, 2) or not all(isinstance(v, int) for v in values):
        return f"{name} must be one int or [height, width], got {value!r}"
    if min(values) < SIZE_MULTIPLE:
        return f"{name} {value!r} is too small: each side must be at least {SIZE_MULTIPLE}"
    return None


def _snapped_size(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """A valid size ``512``, ``[512]`` or ``[480, 832]`` -> ``(height, width)``, rounded down to multiples of 16."""
    values = [value] if isinstance(value, int) else list(value)
    height, width = (values[0], values[0]) if len(values) == 1 else values
    snapped = (height // SIZE_MULTIPLE * SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE)
    if snapped != (height, width):
        warnings.warn(  # stacklevel: past __post_init__ and __init__ to the code that built the DataConfig
            f"{name} {height}x{width} is not a multiple of {SIZE_MULTIPLE}: using {snapped[0]}x{snapped[1]}",
            stacklevel=4,
        )
    return snapped


@dataclass
class DataSettings:
    """The training data settings as flags and YAML give them. Defaults follow VideoX-Fun's scripts.

    A size is one side (a square) or ``[height, width]``; an int is stored as a one-item list.
    """

    # Fields whose int value means a one-item list (TrainConfig adds its validation size).
    SIZE_FIELDS: ClassVar[tuple[str, ...]] = ("video_sample_size", "image_sample_size")

    # None: the paths are relative to the metadata file's folder.
    train_data_dir: str | Path | None = setting(None, "folder the metadata paths are relative to")
    # A JSON list, JSON Lines or CSV; `type` is video or image; optional control_file_path, width, height.
    train_data_meta: str | Path | None = setting(None, "metadata file (JSON list or CSV: file_path, text, type, ...)")
    # With buckets, the side whose area the bucket sizes keep.
    video_sample_size: list[int] = setting([512], "video size: one side, or height width")
    image_sample_size: list[int] = setting([512], "image size: one side, or height width")
    # Shorter videos give fewer frames, still 4k+1.
    video_sample_n_frames: int = setting(17, "frames per video sample (4k+1)")
    video_sample_stride: int = setting(4, "take every n-th frame")
    video_repeat: int = setting(0, "repeat every video entry this many times (0 = once) to balance images")
    random_clip_start: bool = setting(True, "start clips at a random frame of longer videos")
    # Without buckets every sample is resized and centre-cropped to the sample size.
    enable_bucket: bool = setting(False, "batch samples of one aspect-ratio / frame-count bucket")
    # With the token budget, videos may also get a bigger size than the bucket's.
    random_hw_adapt: bool = setting(False, "randomly train at smaller sizes within the bucket list")
    # The budget is video_sample_n_frames x token_sample_size^2 pixels: bigger sizes get fewer frames.
    training_with_video_token_length: bool = setting(False, "choose frames x size of a bucket by a token budget")
    token_sample_size: int = setting(512, "side of the square whose tokens make the budget")
    text_drop_ratio: float = setting(0.1, "share of samples trained with an empty prompt (for CFG)")
    max_bad_share: float = setting(0.05, "stop when more than this share of the files seen are corrupt or missing")
    # The data layer cuts inpaint masks for inpaint and needs a control_file_path per entry for control*.
    train_mode: str = setting("normal", "what the model learns to do (see the modes)", choices=TRAIN_MODES)
    # The data layer seeds the data order, text dropout, clip starts, random sizes and masks with it.
    seed: int = setting(42, "seed of data order, noise, timesteps and masks")

    def __post_init__(self) -> None:
        for name in self.SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int):
                setattr(self, name, [value])

    @classmethod
    def from_mapping(cls: type[SettingsT], values: Mapping[str, Any]) -> SettingsT:
        """Build from a mapping holding these fields among others (e.g. ``TrainConfig.to_dict()``).

        A None value means the field's default (a YAML ``null``).
        """
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def data_problems(self) -> list[str]:
        """Why these settings cannot work, one line per problem, each starting with the field name."""
        problems = [
            problem
            for problem in (
                _size_problem(self.video_sample_size, "video_sample_size"),
                _size_problem(self.image_sample_size, "image_sample_size"),
            )
            if problem
        ]
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
        return problems


@dataclass
class DataConfig(DataSettings):
    """Where the training data is and how samples are cut from it: :class:`DataSettings`, checked.

    Building one fails with every problem listed. Sides that are not multiples of 16 are rounded
    down with a warning in ``video_size`` / ``image_size``, the sizes the data layer uses.
    """

    #: the video sample size as ``(height, width)``, multiples of 16.
    video_size: tuple[int, int] = field(init=False)
    #: the image sample size as ``(height, width)``, multiples of 16.
    image_size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = self.data_problems()
        if problems:
            raise ValueError("bad data config:\n  " + "\n  ".join(problems))
        self.video_size = _snapped_size(self.video_sample_size, "video_sample_size")
        self.image_size = _snapped_size(self.image_sample_size, "image_sample_size")

    # -- derived -------------------------------------------------------------------------------
    @property
    def video_side(self) -> int:
        """Side of the square with the area of the video sample size."""
        return math.isqrt(self.video_size[0] * self.video_size[1])

    @property
    def image_side(self) -> int:
        """Side of the square with the area of the image sample size."""
        return math.isqrt(self.image_size[0] * self.image_size[1])

    @property
    def token_budget(self) -> int:
        """Pixels x frames a video batch may hold with ``training_with_video_token_length``."""
        return self.video_sample_n_frames * self.token_sample_size**2

    @property
    def needs_control(self) -> bool:
        """Whether every entry must name a control video."""
        return self.train_mode in CONTROL_MODES

    @property
    def required_fields(self) -> dict[str, str]:
        """File fields every entry must give in this mode besides file_path (field -> what it holds)."""
        return ANIMATE_REQUIRED_FIELDS.get(self.train_mode, {})
