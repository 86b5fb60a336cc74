"""Camera trajectory files and the Plücker embedding (VideoX-Fun's process_pose_file convention)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from videox_fun.io import (
    CameraPose,
    CameraTrajectoryError,
    make_trajectory,
    orbit,
    pan,
    plucker_embedding,
    read_camera_trajectory,
    relative_c2w,
    roll,
    static,
    write_camera_trajectory,
    zoom,
)
from videox_fun.io.camera import DEFAULT_INTRINSICS, pixel_intrinsics


def _reference_ray(pose0: CameraPose, pose: CameraPose, k: tuple[float, ...], u: int, v: int) -> np.ndarray:
    """One pixel's Plücker vector computed directly in numpy, pixel by pixel, as the spec says."""
    fx, fy, cx, cy = k
    d_cam = np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
    d_cam /= np.linalg.norm(d_cam)
    c2w = pose0.w2c.numpy() @ np.linalg.inv(pose.w2c.numpy())
    d = c2w[:3, :3] @ d_cam
    o = c2w[:3, 3]
    return np.concatenate([np.cross(o, d), d])


def test_write_read_round_trip_with_header(tmp_path: Path) -> None:
    poses = orbit(7, "left", degrees=40, radius=3.0)
    poses[2].frame = 12345.0
    path = write_camera_trajectory(poses, tmp_path / "cams" / "orbit.txt", header="https://example.com/clip")
    lines = path.read_text().splitlines()
    assert lines[0] == "https://example.com/clip" and len(lines) == 8
    assert len(lines[1].split()) == 19

    back = read_camera_trajectory(path)
    assert len(back) == 7
    for a, b in zip(poses, back, strict=True):
        assert (a.fx, a.fy, a.cx, a.cy, a.frame) == (b.fx, b.fy, b.cx, b.cy, b.frame)
        assert torch.equal(a.w2c, b.w2c)  # repr() of floats reads back exactly


def test_headerless_and_empty_header_files(tmp_path: Path) -> None:
    line = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0.1 0 1 0 0.2 0 0 1 0.3"
    (tmp_path / "no_header.txt").write_text(f"{line}\n{line}\n\n")
    (tmp_path / "empty_header.txt").write_text(f"\n{line}\n")
    assert len(read_camera_trajectory(tmp_path / "no_header.txt")) == 2
    [pose] = read_camera_trajectory(tmp_path / "empty_header.txt")
    assert pose.w2c[:3, 3].tolist() == [0.1, 0.2, 0.3] and (pose.fx, pose.fy) == (0.5, 0.9)


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    good = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    path = tmp_path / "bad.txt"
    path.write_text(f"header\n{good}\n{good}\n0 0.5 0.9 0.5\n")
    with pytest.raises(CameraTrajectoryError, match=r"bad\.txt:4: expected 19 numbers, got 4"):
        read_camera_trajectory(path)
    path.write_text(f"header\n{good}\n{good.replace('0.9', 'abc')}\n")
    with pytest.raises(CameraTrajectoryError, match=r"bad\.txt:3: not a list of numbers"):
        read_camera_trajectory(path)
    path.write_text(f"header\n{good.replace(' 1 0 0 0 0 1 0 0 0 0 1 0', ' 0 0 0 0 0 0 0 0 0 0 0 0')}\n")
    with pytest.raises(CameraTrajectoryError, match=r"bad\.txt:2: .*singular"):
        read_camera_trajectory(path)
    path.write_text("just a header\n")
    with pytest.raises(CameraTrajectoryError, match="no camera poses"):
        read_camera_trajectory(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_camera_trajectory(tmp_path / "missing.txt")


GOOD_POSE = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


def _with(**changes: str) -> str:
    """GOOD_POSE with some numbers replaced, by 0-based column (``c3="nan"`` sets cx)."""
    values = GOOD_POSE.split()
    for column, value in changes.items():
        values[int(column[1:])] = value
    return " ".join(values)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_with(c3="nan"), r"number 4 \(cx\) must be finite, got nan"),
        (_with(c1="inf"), r"number 2 \(fx\) must be finite, got inf"),
        (_with(c10="-inf"), r"number 11 \(t1\) must be finite"),
        (_with(c13="nan"), r"number 14 \(r23\) must be finite"),
        (_with(c1="0"), r"fx must be positive, got 0\.0"),
        (_with(c2="-0.9"), r"fy must be positive, got -0\.9"),
        (_with(c7="0", c12="0", c17="0"), r"the rotation part of w2c is singular"),
    ],
    ids=["nan_cx", "inf_fx", "inf_t", "nan_r", "zero_fx", "negative_fy", "singular_R"],
)
def test_non_finite_or_degenerate_poses_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    # Each of these used to give NaN (or zero) Plücker rays, so an all-black video with no word.
    path = tmp_path / "cams.txt"
    path.write_text(f"https://example.com\n{GOOD_POSE}\n{line}\n")
    with pytest.raises(CameraTrajectoryError, match=rf"cams\.txt:3: {message}"):
        read_camera_trajectory(path)


def test_poses_built_in_code_are_checked_too() -> None:
    with pytest.raises(CameraTrajectoryError, match="fx must be positive"):
        CameraPose(0.0, 0.9, 0.5, 0.5)
    with pytest.raises(CameraTrajectoryError, match="cy must be finite"):
        CameraPose(0.5, 0.9, 0.5, math.nan)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[1, 3] = math.inf
    with pytest.raises(CameraTrajectoryError, match=r"w2c\[1\]\[3\] must be finite"):
        CameraPose(0.5, 0.9, 0.5, 0.5, w2c=w2c)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[3, 3] = 0.0
    with pytest.raises(CameraTrajectoryError, match="w2c is singular"):
        CameraPose(0.5, 0.9, 0.5, 0.5, w2c=w2c)
    assert torch.isfinite(plucker_embedding(static(2), 8, 8)).all()


def test_trajectory_makers_follow_videox_fun_assets() -> None:
    # VideoX-Fun asset/Pan_Left.txt: 81 frames, w2c t_x = 1.5 * i / 81,
    # intrinsics 0.532139961 0.946026558 0.5 0.5
    poses = pan(81, "left")
    assert (poses[0].fx, poses[0].fy, poses[0].cx, poses[0].cy) == DEFAULT_INTRINSICS
    assert poses[1].w2c[0, 3].item() == pytest.approx(0.018518518518518517)
    assert poses[80].w2c[0, 3].item() == pytest.approx(1.4814814814814814)
    assert pan(81, "left_up")[80].w2c[:2, 3].tolist() == pytest.approx([1.4814814814814814] * 2)
    assert pan(81, "down")[80].w2c[1, 3].item() == pytest.approx(-1.4814814814814814)
    # asset/Zoom_In.txt ends at t_z = -2.962962962962963; asset/CW.txt at r11 = 0.5111541954058733
    assert zoom(81, "in")[80].w2c[2, 3].item() == pytest.approx(-2.962962962962963)
    cw = roll(81, "cw")[80].w2c
    assert cw[0, :2].tolist() == pytest.approx([0.5111541954058733, 0.8594890275733451])
    assert roll(81, "acw")[1].w2c[0, 1].item() == pytest.approx(-0.012928004685808521)
    assert len(make_trajectory("Pan Right", 5)) == 5
    with pytest.raises(ValueError, match="unknown trajectory"):
        make_trajectory("spin", 5)


def test_orbit_keeps_looking_at_the_target() -> None:
    radius = 2.0
    target = torch.tensor([0.0, 0.0, radius, 1.0], dtype=torch.float64)
    for pose in orbit(9, "right", degrees=80, radius=radius):
        in_camera = pose.w2c @ target
        assert in_camera[:2].abs().max() < 1e-12 and in_camera[2].item() == pytest.approx(radius)
    assert orbit(9, "left")[4].c2w[0, 3] < 0  # the centre moves to -x


def test_relative_pose_of_first_frame_is_identity() -> None:
    poses = orbit(5, "left")
    # move the whole trajectory somewhere else in the world: the relative poses do not change
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    shift[:3, 3] = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)
    moved = [CameraPose(p.fx, p.fy, p.cx, p.cy, p.w2c @ torch.linalg.inv(shift)) for p in poses]
    rel, rel_moved = relative_c2w(poses), relative_c2w(moved)
    assert torch.equal(rel[0], torch.eye(4, dtype=torch.float64))
    assert torch.allclose(rel, rel_moved, atol=1e-12)


def test_identity_trajectory_gives_the_intrinsic_ray_directions() -> None:
    height, width = 12, 20
    emb = plucker_embedding(static(3), height, width, original_size=None)
    assert emb.shape == (3, 6, height, width) and emb.dtype == torch.float32
    fx, fy, cx, cy = (v * s for v, s in zip(DEFAULT_INTRINSICS, (width, height, width, height), strict=True))
    rows, cols = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    d = torch.stack([(cols - cx) / fx, (rows - cy) / fy, torch.ones_like(cols)]).double()  # (3, H, W)
    d = d / d.norm(dim=0, keepdim=True)
    assert torch.allclose(emb[0, 3:].double(), d, atol=1e-6)
    assert emb[:, :3].abs().max() == 0  # the camera sits at the origin: no moment
    assert torch.allclose(emb[0, 3:].norm(dim=0), torch.ones(height, width))


def test_moving_camera_matches_per_pixel_reference(tmp_path: Path) -> None:
    poses = orbit(4, "left", degrees=30) + pan(3, "right_up")[1:]
    path = write_camera_trajectory(poses, tmp_path / "traj.txt")
    height, width = 10, 18  # wider than 16:9, so fy is corrected
    emb = plucker_embedding(path, height, width)
    k = pixel_intrinsics(poses, height, width)
    assert k[0, 0].item() == pytest.approx(DEFAULT_INTRINSICS[0] * width)
    assert k[0, 1].item() == pytest.approx(DEFAULT_INTRINSICS[1] * width / (1280 / 720))
    for f in (1, 3, 5):
        for u, v in ((0, 0), (17, 9), (6, 4)):
            expected = _reference_ray(poses[0], poses[f], tuple(k[f].tolist()), u, v)
            assert emb[f, :, v, u].double().numpy() == pytest.approx(expected, abs=1e-5)


def test_aspect_ratio_correction_for_portrait_and_landscape() -> None:
    poses = static(1)
    # 480x832 is narrower than the 16:9 poses: fx grows by (480 * 16/9) / 832
    k = pixel_intrinsics(poses, 480, 832)
    assert k[0, 0].item() == pytest.approx(DEFAULT_INTRINSICS[0] * 480 * (1280 / 720))
    assert k[0, 1].item() == pytest.approx(DEFAULT_INTRINSICS[1] * 480)
    assert k[0, 2:].tolist() == pytest.approx([416.0, 240.0])
    # same aspect ratio: nothing changes
    k = pixel_intrinsics(poses, 360, 640)
    assert k[0, :2].tolist() == pytest.approx([DEFAULT_INTRINSICS[0] * 640, DEFAULT_INTRINSICS[1] * 360])


def test_num_frames_truncates_or_repeats_the_last_pose(caplog: pytest.LogCaptureFixture) -> None:
    poses = zoom(5, "in")
    full = plucker_embedding(poses, 8, 8)
    assert torch.equal(plucker_embedding(poses, 8, 8, num_frames=3), full[:3])
    with caplog.at_level(logging.WARNING, logger="videox_fun.io.camera"):
        longer = plucker_embedding(poses, 8, 8, num_frames=8)
    assert "repeating the last pose" in caplog.text
    assert longer.shape == (8, 6, 8, 8)
    assert torch.equal(longer[:5], full) and all(torch.equal(longer[i], full[4]) for i in range(5, 8))


def test_moment_is_o_cross_d_in_that_order() -> None:
    # A camera moved to +x (w2c t_x = -1) looking down +z: at the centre ray d = (0, 0, 1),
    # o x d = (1, 0, 0) x (0, 0, 1) = (0, -1, 0), while d x o would be (0, 1, 0).
    moved = CameraPose(0.5, 0.5, 0.5, 0.5, torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 0]]))
    emb = plucker_embedding([CameraPose(0.5, 0.5, 0.5, 0.5), moved], 2, 2, original_size=None)
    centre_rays = emb[1].permute(1, 2, 0).reshape(-1, 6)
    mean_ray = centre_rays.mean(0)  # the four pixel rays are symmetric about the axis
    assert mean_ray[:3].tolist() == pytest.approx([0.0, -mean_ray[5].item(), 0.0], abs=1e-6)
    assert math.isclose(mean_ray[3].item(), 0.0, abs_tol=1e-6)
