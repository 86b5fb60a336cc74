"""The evaluator: ground-truth clips read back from H.264 files score 100 %, and wrong videos are judged wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from videox_fun.io.video import write_image, write_video
from videox_fun.toyworld.evaluate import evaluate_folder, evaluate_video, format_report, judge_frames
from videox_fun.toyworld.render import render_clip
from videox_fun.toyworld.world import ClipSpec, combinations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_of_every_combination_survives_the_mp4_round_trip(tmp_path: Path, seed: int):
    worst = {"psnr": np.inf, "trajectory": 0.0}
    for index, spec in enumerate(combinations("all")):
        clip = render_clip(spec, seed=1000 * seed + index)
        video = write_video(clip.frames, tmp_path / f"{index}.mp4", fps=8)
        control = write_video(clip.control, tmp_path / f"{index}_control.mp4", fps=8)
        image = write_image(clip.frames[0], tmp_path / f"{index}.png")
        result = evaluate_video(video, spec, image=image, control_video=control)
        assert (result["colour"], result["shape"], result["direction"]) == (spec.colour, spec.shape, spec.direction)
        assert result["colour_ok"] and result["shape_ok"] and result["direction_ok"]
        assert result["persistence"] == 1.0 and result["held_out"] == spec.held_out
        assert result["trajectory_frames"] == 17
        worst["psnr"] = min(worst["psnr"], result["psnr_first_frame"])
        worst["trajectory"] = max(worst["trajectory"], result["trajectory_error_px"])
    assert worst["psnr"] > 28.0 and worst["trajectory"] < 1.0, worst


@pytest.fixture(scope="module")
def red_circle(tmp_path_factory) -> tuple[Path, np.ndarray]:
    clip = render_clip("a red circle moving right", seed=4)
    return write_video(clip.frames, tmp_path_factory.mktemp("videos") / "red.mp4", fps=8), clip.frames


@pytest.mark.parametrize(
    ("expected", "wrong"),
    [
        ("a blue circle moving right", "colour"),
        ("a red square moving right", "shape"),
        ("a red triangle moving right", "shape"),
        ("a red circle moving left", "direction"),
        ("a red circle moving down", "direction"),
    ],
)
def test_a_video_that_shows_something_else_is_judged_wrong(red_circle, expected, wrong):
    result = evaluate_video(red_circle[0], expected)
    for name in ("colour", "shape", "direction"):
        assert result[f"{name}_ok"] is (name != wrong), name


def test_reversed_still_empty_and_vanishing_videos(red_circle, tmp_path):
    frames = red_circle[1]
    assert judge_frames(frames[::-1])["direction"] == "left"
    assert judge_frames(np.repeat(frames[:1], 17, axis=0))["direction"] == "none"  # no motion
    assert judge_frames(frames[:3])["direction"] == "none"  # under 8 px of travel

    empty = evaluate_video(write_video(np.zeros_like(frames), tmp_path / "empty.mp4"), "a red circle moving right")
    assert (empty["colour"], empty["shape"], empty["direction"], empty["persistence"]) == ("none",) * 3 + (0.0,)
    assert not (empty["colour_ok"] or empty["shape_ok"] or empty["direction_ok"])

    vanishing = frames.copy()
    vanishing[9:] = 0
    assert judge_frames(vanishing)["persistence"] == pytest.approx(9 / 17)
    dim = (frames // 4).astype(np.uint8)  # brightest channel 57 < 80: nothing is foreground
    assert judge_frames(dim)["persistence"] == 0.0
    tiny = np.zeros_like(frames)
    tiny[:, 30:35, 30:35] = 230  # 25 px: too small to count as the shape
    assert judge_frames(tiny)["persistence"] == 0.0


def test_a_stray_speck_does_not_change_the_judgement(red_circle):
    frames = red_circle[1].copy()
    frames[:, 1, 1] = frames[:, 62, 2] = (255, 255, 255)  # bright pixels far from the shape
    assert judge_frames(frames)["shape"] == "circle" and judge_frames(frames)["direction"] == "right"


def test_first_frame_psnr_and_trajectory_error_tell_other_inputs_apart(red_circle, tmp_path):
    other = render_clip("a red circle moving left", seed=5)
    own_image = write_image(red_circle[1][0], tmp_path / "own.png")
    other_image = write_image(other.frames[0], tmp_path / "other.png")
    other_control = write_video(other.control, tmp_path / "other_control.mp4", fps=8)
    assert evaluate_video(red_circle[0], image=own_image)["psnr_first_frame"] > 30
    assert evaluate_video(red_circle[0], image=other_image)["psnr_first_frame"] < 20
    result = evaluate_video(red_circle[0], control_video=other_control)
    assert result["trajectory_error_px"] > 5 and "colour_ok" not in result


def _write_generated(folder: Path, name: str, spec: ClipSpec, prompt: str, seed: int, **inputs) -> None:
    """A video and the sidecar ``videox-fun generate`` writes next to it."""
    clip = render_clip(spec, seed=seed)
    write_video(clip.frames, folder / f"{name}.mp4", fps=8)
    (folder / f"{name}.json").write_text(json.dumps({"prompt": prompt, "mode": "t2v", "seed": seed, **inputs}))


def test_evaluate_folder_reports_seen_and_held_out_apart(tmp_path):
    seen, held = ClipSpec("red", "square", "up"), ClipSpec("blue", "circle", "left")
    _write_generated(tmp_path, "00000001", seen, "a red square moving up", 1)
    _write_generated(tmp_path, "00000002", seen, "a red square is moving down", 2)  # wrong direction
    _write_generated(tmp_path, "00000003", held, "a blue circle moving left", 3)
    _write_generated(tmp_path, "00000004", held, "a sunset over the sea", 4)  # not a toy-world prompt
    write_video(render_clip(held, seed=5).frames, tmp_path / "00000005.mp4")  # no sidecar
    # i2v / control inputs named in the sidecar, relative to the folder.
    clip = render_clip(seen, seed=6)
    write_image(clip.frames[0], tmp_path / "inputs" / "start.png")
    write_video(clip.control, tmp_path / "inputs" / "edges.mp4", fps=8)
    _write_generated(tmp_path, "00000006", seen, "a red square moving up", 6, image="inputs/start.png")
    _write_generated(tmp_path, "00000007", seen, "a red square moving up", 6, control_video="inputs/edges.mp4")

    report = evaluate_folder(tmp_path, progress=False)
    assert report["seen"]["count"] == 4 and report["held_out"]["count"] == 1 and report["all"]["count"] == 5
    assert report["seen"]["direction"] == 0.75 and report["seen"]["colour"] == report["seen"]["shape"] == 1.0
    assert report["held_out"]["all_correct"] == 1.0 and report["held_out"]["persistence"] == 1.0
    assert report["seen"]["psnr_first_frame"] > 30 and report["seen"]["psnr_first_frame_count"] == 1
    assert report["seen"]["trajectory_error_px"] < 1.0
    assert [Path(s["file"]).name for s in report["skipped"]] == ["00000004.mp4"]
    json.dumps(report)  # the report is plain JSON
    assert "held_out" in format_report(report) and "skipped 1" in format_report(report)


def test_evaluate_folder_with_a_prompts_file_and_bad_folders(tmp_path):
    for index, text in enumerate(["a cyan triangle moving down", "a green circle moving left"]):
        write_video(render_clip(text, seed=index).frames, tmp_path / f"{index:08d}.mp4")
    report = evaluate_folder(
        tmp_path, prompts=["a cyan triangle moving down", "a green circle moving up"], progress=False
    )
    assert report["all"]["count"] == 2 and report["all"]["direction"] == 0.5
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        evaluate_folder(tmp_path, prompts=["a red circle moving up"], progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos"):
        evaluate_folder(tmp_path / "empty")


def test_a_triangle_the_border_clips_is_judged_on_the_frames_where_it_is_whole():
    """A triangle moving up out of the frame: its clipped frames fill more of their box (a circle's ratio)."""
    clip = render_clip("a green triangle moving up", seed=7)
    frames = clip.frames.copy()  # (F, H, W, 3)
    whole = judge_frames(frames)
    assert whole["shape"] == "triangle"
    clipped = frames.copy()
    for index in range(5, len(frames)):  # most frames: the top 8 rows of the apex pushed past the top edge
        top = int(np.nonzero(clip.coverage[index].any(axis=1))[0][0])  # first row the shape covers
        clipped[index] = np.roll(frames[index], -(top + 8), axis=0)
        clipped[index, -(top + 8) :] = 0
    assert judge_frames(clipped)["shape"] == "triangle"
    only_clipped = clipped[5:]
    assert judge_frames(only_clipped)["shape"] != "triangle"  # nothing whole to judge: the clipped read is all there is
