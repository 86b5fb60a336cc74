"""Camera motions for the ChaoJie camera nodes, built on the library's trajectories (:mod:`videox_fun.io.camera`).

A motion (ComfyUI type ``CameraPose``) is a float64 tensor ``(F, 4, 4)`` of world-to-camera matrices,
the first one the identity. A trajectory string (what ``CameraTrajectoryFromChaoJie`` outputs and
``WanFunV2VSampler``'s ``camera_conditions`` reads, as in VideoX-Fun) is JSON: one list per frame of
``fx fy cx cy 0 0`` and the 12 numbers of ``[R | t]``.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import torch

from videox_fun.io.camera import CameraPose, make_trajectory, trajectory_key, write_camera_trajectory

# The presets of the ChaoJie nodes, by the names their widgets show (each is one of the library's trajectories).
CAMERA_PRESETS = ("Static", "Pan Up", "Pan Down", "Pan Left", "Pan Right", "Zoom In", "Zoom Out", "ACW", "CW")


def preset_motion(name: str, speed: float, num_frames: int) -> torch.Tensor:
    """The world-to-camera matrices ``(F, 4, 4)`` of a preset, its motion scaled by ``speed``."""
    poses = make_trajectory(trajectory_key(name), num_frames)
    return torch.stack([scaled_pose(pose.w2c, speed) for pose in poses])


def scaled_pose(w2c: torch.Tensor, speed: float) -> torch.Tensor:
    """A pose moved ``speed`` times as far from the identity: translation scaled, rotation angle scaled."""
    scaled = torch.eye(4, dtype=torch.float64)
    scaled[:3, :3] = rotation_power(w2c[:3, :3], speed)
    scaled[:3, 3] = w2c[:3, 3] * speed
    return scaled


def rotation_power(rotation: torch.Tensor, power: float) -> torch.Tensor:
    """``rotation`` to a real power: the same axis, the angle times ``power`` (Rodrigues' formula)."""
    angle = math.acos(max(-1.0, min(1.0, (float(torch.trace(rotation)) - 1.0) / 2.0)))
    if angle < 1e-9:
        return torch.eye(3, dtype=torch.float64)
    skew = (rotation - rotation.T) / (2.0 * math.sin(angle))  # the unit axis as a cross-product matrix
    scaled = angle * power
    return torch.eye(3, dtype=torch.float64) + math.sin(scaled) * skew + (1.0 - math.cos(scaled)) * skew @ skew


def combine_motions(motions: list[torch.Tensor]) -> torch.Tensor:
    """Motions done at once, frame by frame: rotations composed, translations added (as ChaoJie sums them)."""
    combined = motions[0].clone()
    for motion in motions[1:]:
        combined[:, :3, :3] = combined[:, :3, :3] @ motion[:, :3, :3]
        combined[:, :3, 3] = combined[:, :3, 3] + motion[:, :3, 3]
    return combined


def join_motions(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first`` then ``second``, the second continuing from where the first camera ended."""
    return torch.cat([first, second @ first[-1]])


def motion_to_trajectory(motion: torch.Tensor, fx: float, fy: float, cx: float, cy: float) -> str:
    """A motion as VideoX-Fun's trajectory string (JSON, one 18-number list per frame)."""
    rows = [[fx, fy, cx, cy, 0.0, 0.0, *w2c[:3].flatten().tolist()] for w2c in motion]
    return json.dumps(rows)


def trajectory_to_poses(trajectory: str) -> list[CameraPose]:
    """The camera poses of a trajectory string (the frame column, which the string leaves out, is the index)."""
    try:
        rows = json.loads(trajectory)
    except json.JSONDecodeError as err:
        raise ValueError(f"camera_conditions is not a JSON trajectory: {err}") from err
    if not isinstance(rows, list) or not rows:
        raise ValueError("camera_conditions: expected a JSON list of poses (one list of 18 numbers per frame)")
    return [CameraPose.from_values([float(i), *map(float, row)]) for i, row in enumerate(rows)]


def trajectory_file(trajectory: str, folder: Path) -> Path:
    """Write a trajectory string as a trajectory file (the form the library reads) in ``folder``."""
    poses = trajectory_to_poses(trajectory)
    return write_camera_trajectory(poses, folder / f"camera-{uuid.uuid4().hex[:12]}.txt", header="comfyui")
