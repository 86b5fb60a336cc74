"""Camera trajectory files and the Plücker-ray embedding of Wan2.1-Fun-Control-Camera.

File format (CameraCtrl / RealEstate10K, as VideoX-Fun reads it): a first line that is a URL, a
header or empty, then one line per frame::

    frame fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3

``fx fy cx cy`` are normalised by the image width / height the poses were taken at, and the
twelve last numbers are the world-to-camera matrix ``[R | t]`` (OpenCV axes: x right, y down,
z forward). The embedding follows VideoX-Fun's ``process_pose_file``: poses made relative to the
first camera, focal lengths corrected for the aspect ratio of the target size, one ray per pixel
centre, and channels ``(o x d, d)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import atomic_path

logger = logging.getLogger(__name__)

VALUES_PER_LINE = 19
# What each number of a trajectory line is, for error messages (two unused zeros after cy).
COLUMN_NAMES = (
    *("frame", "fx", "fy", "cx", "cy", "unused", "unused"),
    *(name for i in (1, 2, 3) for name in (f"r{i}1", f"r{i}2", f"r{i}3", f"t{i}")),
)
# Intrinsics of the trajectories VideoX-Fun ships (asset/*.txt), normalised for 1280x720 poses.
DEFAULT_INTRINSICS = (0.532139961, 0.946026558, 0.5, 0.5)
# VideoX-Fun's process_pose_file assumes the poses were normalised for a 1280x720 video.
DEFAULT_POSE_SIZE = (720, 1280)  # (height, width)


class CameraTrajectoryError(ValueError):
    """A trajectory file (or pose list) that cannot be used, with the file and line named."""


@dataclass
class CameraPose:
    """One camera: intrinsics normalised by image size and a 4x4 world-to-camera matrix (float64)."""

    fx: float
    fy: float
    cx: float
    cy: float
    w2c: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    frame: float = 0.0  # the first column (a frame index or a timestamp); kept to write it back

    def __post_init__(self) -> None:
        # A NaN, an infinite or a zero focal length turns every Plücker ray into NaN: refuse it here.
        for name in ("fx", "fy", "cx", "cy", "frame"):
            if not math.isfinite(getattr(self, name)):
                raise CameraTrajectoryError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("fx", "fy"):
            if getattr(self, name) <= 0:
                raise CameraTrajectoryError(f"{name} must be positive, got {getattr(self, name)}")
        w2c = torch.as_tensor(self.w2c, dtype=torch.float64)
        if w2c.shape == (3, 4):
            w2c = torch.cat([w2c, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
        if w2c.shape != (4, 4):
            raise CameraTrajectoryError(f"w2c must be 3x4 or 4x4, got {tuple(w2c.shape)}")
        bad = (~torch.isfinite(w2c)).nonzero()
        if len(bad):
            row, col = (int(i) for i in bad[0])
            raise CameraTrajectoryError(f"w2c[{row}][{col}] must be finite, got {float(w2c[row, col])}")
        if abs(float(torch.linalg.det(w2c[:3, :3]))) < 1e-8:
            raise CameraTrajectoryError("the rotation part of w2c is singular")
        if abs(float(torch.linalg.det(w2c))) < 1e-8:
            raise CameraTrajectoryError(f"w2c is singular (its last row is {w2c[3].tolist()})")
        self.w2c = w2c

    @property
    def c2w(self) -> torch.Tensor:
        """Camera-to-world matrix ``(4, 4)``."""
        return torch.linalg.inv(self.w2c)

    @classmethod
    def from_values(cls, values: Sequence[float]) -> CameraPose:
        """Build from the 19 numbers of one trajectory line."""
        if len(values) != VALUES_PER_LINE:
            raise CameraTrajectoryError(f"expected {VALUES_PER_LINE} numbers, got {len(values)}")
        for column, value in enumerate(values, start=1):
            if not math.isfinite(value):
                raise CameraTrajectoryError(f"number {column} ({COLUMN_NAMES[column - 1]}) must be finite, got {value}")
        frame, fx, fy, cx, cy = values[:5]
        return cls(fx, fy, cx, cy, torch.tensor(values[7:], dtype=torch.float64).reshape(3, 4), frame)

    def to_values(self) -> list[float]:
        """The 19 numbers of this pose's trajectory line."""
        return [self.frame, self.fx, self.fy, self.cx, self.cy, 0.0, 0.0, *self.w2c[:3].flatten().tolist()]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _parse_line(line: str) -> list[float] | None:
    try:
        return [float(v) for v in line.split()]
    except ValueError:
        return None


def read_camera_trajectory(path: str | os.PathLike) -> list[CameraPose]:
    """Read a trajectory file; a first line that is not a pose (URL, header, empty) is skipped.

    A first line that is a pose is kept, with one logged note: VideoX-Fun drops the first line
    whatever it holds, so it would lose that pose.

    Blank lines after the first are ignored; any other malformed line raises
    :class:`CameraTrajectoryError` naming the file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera trajectory not found: {path}")
    lines = path.read_text().splitlines()
    poses = []
    for number, line in enumerate(lines, start=1):
        values = _parse_line(line)
        if number == 1:
            if values is None or len(values) != VALUES_PER_LINE:
                continue  # the optional header
            logger.info(
                "%s: the first line is a pose, kept as frame 1 (VideoX-Fun always drops the first line as a "
                "header, and would start at the next pose)",
                path,
            )
        if not line.strip():
            continue
        if values is None:
            raise CameraTrajectoryError(f"{path}:{number}: not a list of numbers: {line.strip()[:80]!r}")
        try:
            poses.append(CameraPose.from_values(values))
        except CameraTrajectoryError as err:
            raise CameraTrajectoryError(f"{path}:{number}: {err}") from err
    if not poses:
        raise CameraTrajectoryError(f"{path} holds no camera poses")
    return poses


def _format(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same float


def write_camera_trajectory(poses: Sequence[CameraPose], path: str | os.PathLike, header: str = "") -> Path:
    """Write poses as a trajectory file (atomically), with ``header`` as the first line.

    The first line is always written, empty by default, because VideoX-Fun's reader drops the
    first line unconditionally: files written here read the same there.
    """
    if not poses:
        raise CameraTrajectoryError("no poses to write")
    if "\n" in header:
        raise ValueError("the header must be a single line")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header] + [" ".join(_format(v) for v in pose.to_values()) for pose in poses]) + "\n"
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Simple trajectories (the motions of VideoX-Fun's asset/*.txt files, plus an orbit)
# --------------------------------------------------------------------------------------------


def _rotation(axis: str, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return torch.tensor(matrices[axis], dtype=torch.float64)


def _pose(rotation: torch.Tensor, translation: Sequence[float], intrinsics: Sequence[float]) -> CameraPose:
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = torch.as_tensor(translation, dtype=torch.float64)
    return CameraPose(*intrinsics, w2c=w2c)


def _check_frames(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


_PAN_AXES = {"left": (1.0, 0.0), "right": (-1.0, 0.0), "up": (0.0, 1.0), "down": (0.0, -1.0)}


def static(num_frames: int, intrinsics: Sequence[float] = DEFAULT_INTRINSICS) -> list[CameraPose]:
    """A camera that does not move."""
    _check_frames(num_frames)
    return [_pose(torch.eye(3, dtype=torch.float64), (0, 0, 0), intrinsics) for _ in range(num_frames)]


def pan(
    num_frames: int,
    direction: str = "left",
    distance: float = 1.5,
    intrinsics: Sequence[float] = DEFAULT_INTRINSICS,
) -> list[CameraPose]:
    """Translate the camera sideways; ``direction`` is left / right / up / down or a pair like ``left_up``.

    Frame i has w2c translation ``distance * i / num_frames`` along the direction's axis (sign as in
    VideoX-Fun's ``asset/Pan_*.txt``: ``left`` is +x in w2c, so the camera centre moves to -x).
    """
    _check_frames(num_frames)
    parts = direction.lower().replace("-", "_").split("_")
    if not parts or any(p not in _PAN_AXES for p in parts):
        raise ValueError(f"pan direction must be made of {sorted(_PAN_AXES)}, got {direction!r}")
    tx = sum(_PAN_AXES[p][0] for p in parts)
    ty = sum(_PAN_AXES[p][1] for p in parts)
    eye = torch.eye(3, dtype=torch.float64)
    steps = [distance * i / num_frames for i in range(num_frames)]
    return [_pose(eye, (tx * s, ty * s, 0.0), intrinsics) for s in steps]


def zoom(
    num_frames: int,
    direction: str = "in",
    distance: float = 3.0,
    intrinsics: Sequence[float] = DEFAULT_INTRINSICS,
) -> list[CameraPose]:
    """Dolly the camera forward (``in``) or backward (``out``) by ``distance * i / num_frames``."""
    _check_frames(num_frames)
    if direction not in ("in", "out"):
        raise ValueError(f"zoom direction must be 'in' or 'out', got {direction!r}")
    sign = -1.0 if direction == "in" else 1.0  # w2c translation; the centre moves the other way
    eye = torch.eye(3, dtype=torch.float64)
    return [_pose(eye, (0.0, 0.0, sign * distance * i / num_frames), intrinsics) for i in range(num_frames)]


def roll(
    num_frames: int,
    direction: str = "cw",
    degrees: float = 60.0,
    intrinsics: Sequence[float] = DEFAULT_INTRINSICS,
) -> list[CameraPose]:
    """Rotate the camera about its optical axis, clockwise (``cw``) or anticlockwise (``acw``)."""
    _check_frames(num_frames)
    if direction not in ("cw", "acw"):
        raise ValueError(f"roll direction must be 'cw' or 'acw', got {direction!r}")
    sign = -1.0 if direction == "cw" else 1.0
    angles = [sign * math.radians(degrees) * i / num_frames for i in range(num_frames)]
    return [_pose(_rotation("z", a), (0.0, 0.0, 0.0), intrinsics) for a in angles]


def orbit(
    num_frames: int,
    direction: str = "left",
    degrees: float = 45.0,
    radius: float = 2.0,
    intrinsics: Sequence[float] = DEFAULT_INTRINSICS,
) -> list[CameraPose]:
    """Circle the point ``radius`` ahead of the first camera, always looking at it.

    The camera turns about the vertical axis by ``degrees * i / num_frames``; ``left`` moves
    the camera centre towards -x.
    """
    _check_frames(num_frames)
    if direction not in ("left", "right"):
        raise ValueError(f"orbit direction must be 'left' or 'right', got {direction!r}")
    sign = 1.0 if direction == "left" else -1.0
    poses = []
    for i in range(num_frames):
        angle = sign * math.radians(degrees) * i / num_frames
        rotation = _rotation("y", angle)  # camera-to-world rotation: its z axis points at the target
        centre = torch.tensor([-radius * math.sin(angle), 0.0, radius - radius * math.cos(angle)], dtype=torch.float64)
        translation = -(rotation.T @ centre)  # w2c: t = -R^T c
        poses.append(_pose(rotation.T, translation.tolist(), intrinsics))
    return poses


TRAJECTORIES = {
    "static": lambda n: static(n),
    **{
        f"pan_{d}": (lambda n, d=d: pan(n, d))
        for d in ("left", "right", "up", "down", "left_up", "left_down", "right_up", "right_down")
    },
    "zoom_in": lambda n: zoom(n, "in"),
    "zoom_out": lambda n: zoom(n, "out"),
    "cw": lambda n: roll(n, "cw"),
    "acw": lambda n: roll(n, "acw"),
    "orbit_left": lambda n: orbit(n, "left"),
    "orbit_right": lambda n: orbit(n, "right"),
}


def make_trajectory(name: str, num_frames: int) -> list[CameraPose]:
    """A named trajectory (``pan_left``, ``zoom_in``, ``cw``, ``orbit_left``... see ``TRAJECTORIES``)."""
    key = trajectory_key(name)
    if key not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {name!r}; choose one of {sorted(TRAJECTORIES)}")
    return TRAJECTORIES[key](num_frames)


def trajectory_key(name: str) -> str:
    """A trajectory name as :data:`TRAJECTORIES` spells it (``Pan-Left`` -> ``pan_left``)."""
    return str(name).lower().replace("-", "_").replace(" ", "_")


def is_trajectory_name(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a built-in trajectory rather than a file (an existing file wins)."""
    return not Path(source).exists() and trajectory_key(str(source)) in TRAJECTORIES


def camera_poses(source: str | os.PathLike, num_frames: int) -> list[CameraPose]:
    """The poses of a trajectory file, or of a built-in trajectory named ``source`` over ``num_frames``."""
    if is_trajectory_name(source):
        return make_trajectory(str(source), num_frames)
    return read_camera_trajectory(source)


# --------------------------------------------------------------------------------------------
# Plücker embedding
# --------------------------------------------------------------------------------------------


def fit_num_frames(poses: Sequence[CameraPose], num_frames: int | None) -> list[CameraPose]:
    """The first ``num_frames`` poses, or all of them and the last one repeated (logged) when too few."""
    poses = list(poses)
    if not poses:
        raise CameraTrajectoryError("no camera poses")
    if num_frames is None or num_frames == len(poses):
        return poses
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames < len(poses):
        return poses[:num_frames]
    logger.warning(
        "the trajectory has %d poses but %d frames are asked: repeating the last pose", len(poses), num_frames
    )
    return poses + [poses[-1]] * (num_frames - len(poses))


def relative_c2w(poses: Sequence[CameraPose]) -> torch.Tensor:
    """Camera-to-world matrices ``(F, 4, 4)`` in the frame of the first camera (the first one is identity)."""
    first_w2c = poses[0].w2c
    relative = [torch.eye(4, dtype=torch.float64)] + [first_w2c @ pose.c2w for pose in poses[1:]]
    return torch.stack(relative)  # (F, 4, 4)


def pixel_intrinsics(
    poses: Sequence[CameraPose],
    height: int,
    width: int,
    original_size: tuple[int, int] | None = DEFAULT_POSE_SIZE,
) -> torch.Tensor:
    """Intrinsics in pixels ``(F, 4)`` as ``fx, fy, cx, cy`` for a ``height x width`` video.

    The target video is a resize-then-center-crop of the video the poses were taken at
    (``original_size=(height, width)``): when the pose video is wider, the crop cuts the sides,
    so the normalised ``fx`` grows by ``(height * pose_aspect) / width``; when it is narrower,
    ``fy`` grows likewise. ``original_size=None`` means the same aspect ratio (no correction).
    """
    k = torch.tensor([[p.fx, p.fy, p.cx, p.cy] for p in poses], dtype=torch.float64)  # (F, 4)
    if original_size is not None:
        sample_aspect = width / height
        pose_aspect = original_size[1] / original_size[0]
        if pose_aspect > sample_aspect:
            k[:, 0] *= height * pose_aspect / width
        else:
            k[:, 1] *= width / pose_aspect / height
    return k * torch.tensor([width, height, width, height], dtype=torch.float64)


def plucker_embedding(
    poses: Sequence[CameraPose] | str | os.PathLike,
    height: int,
    width: int,
    num_frames: int | None = None,
    original_size: tuple[int, int] | None = DEFAULT_POSE_SIZE,
) -> torch.Tensor:
    """Plücker rays of a trajectory: float32 ``(F, 6, H, W)``, channels ``(o x d, d)``.

    ``poses`` is a list of :class:`CameraPose` or a trajectory file. For each pixel centre
    ``(u + 0.5, v + 0.5)`` the camera-space direction ``((u - cx) / fx, (v - cy) / fy, 1)`` is
    normalised, rotated by the camera-to-world matrix relative to the first camera (``d``), and
    paired with the camera centre ``o``; the moment ``o x d`` comes first, as in VideoX-Fun.
    """
    if isinstance(poses, (str, os.PathLike)):
        poses = read_camera_trajectory(poses)
    poses = fit_num_frames(poses, num_frames)
    k = pixel_intrinsics(poses, height, width, original_size)  # (F, 4)
    c2w = relative_c2w(poses)  # (F, 4, 4)

    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )  # (H, W) each
    fx, fy, cx, cy = (k[:, i, None, None] for i in range(4))  # (F, 1, 1) each
    x = (cols - cx) / fx  # (F, H, W)
    y = (rows - cy) / fy  # (F, H, W)
    directions = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (F, H, W, 3)
    directions = directions / directions.norm(dim=-1, keepdim=True)

    rays_d = torch.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], directions)  # (F, H, W, 3)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)  # (F, H, W, 3)
    moment = torch.linalg.cross(rays_o, rays_d, dim=-1)  # (F, H, W, 3)
    plucker = torch.cat([moment, rays_d], dim=-1)  # (F, H, W, 6)
    return plucker.permute(0, 3, 1, 2).float().contiguous()  # (F, 6, H, W)
