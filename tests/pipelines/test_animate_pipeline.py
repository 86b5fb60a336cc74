"""Wan2.2-Animate end to end on a tiny random model: a preprocessing folder in, a video out, in segments that
carry the last ``refert_num`` frames over as the released ``wan/animate.py`` does; a missing file is one line."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import frame_count_and_size, write_animate_sources

from videox_fun.io.video import write_video
from videox_fun.models.wan.animate import WanAnimateTransformer3DModel
from videox_fun.models.wan.tiny import TINY_TEXT_DIM, build_tiny_model_folder
from videox_fun.models.wan.variants import tiny_config
from videox_fun.pipelines.animate import WanAnimatePipeline, padded_length, ping_pong, read_sources, segment_starts

FRAMES, SIZE = 11, 32
FAST = {"num_inference_steps": 1, "progress": False}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> WanAnimatePipeline:
    """A tiny i2v folder (VAE, text encoder, CLIP tower) whose transformer is replaced by a tiny random Animate one."""
    folder = tmp_path_factory.mktemp("animate_model")
    build_tiny_model_folder(folder, variant="i2v", with_clip=True)
    torch.manual_seed(0)
    config = tiny_config("animate", text_dim=TINY_TEXT_DIM, image_dim=24)
    WanAnimateTransformer3DModel.from_config(config).save_original(folder)
    return WanAnimatePipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A preprocessing folder as Wan-Animate's writes it, at 32 x 32 with 11 frames (replacement files too); the
    person is pixels 6 to 21, so the 4 x 4 latent grid sees it at 1 and 2 (pixels 8 and 16)."""
    return write_animate_sources(tmp_path_factory.mktemp("animate_sources"), FRAMES, SIZE)


def spy_segments(pipe: WanAnimatePipeline, monkeypatch) -> list[dict]:
    """Record each segment's carried frames, conditioning y and decoded video."""
    records: list[dict] = []
    segment, conditioning = pipe._segment, pipe._conditioning

    def record_conditioning(clip, carried):
        y = conditioning(clip, carried)
        records.append({"carried": carried, "y": y})
        return y

    def record_segment(*args, **kwargs):
        latents, video = segment(*args, **kwargs)
        records[-1]["video"] = video
        return latents, video

    monkeypatch.setattr(pipe, "_conditioning", record_conditioning)
    monkeypatch.setattr(pipe, "_segment", record_segment)
    return records


def test_animation_writes_the_whole_video_in_segments(pipe, sources, tmp_path, monkeypatch):
    records = spy_segments(pipe, monkeypatch)
    out = pipe(sources, clip_len=5, refert_num=1, **FAST)
    path = write_video(out.frames, tmp_path / "animated.mp4", fps=30)
    assert frame_count_and_size(path) == (FRAMES, (SIZE, SIZE))
    # 11 frames pad to 13: segments start at 0, 4, 8, each after the first carrying one frame over.
    assert len(records) == 3 and records[0]["carried"] is None
    for before, after in itertools.pairwise(records):
        assert torch.equal(after["carried"], before["video"][:, :, -1:])
    # Mask channels: nothing known in the first segment; the carried frame (latent frame 0, its 4 packed copies)
    # in the others. y's 4 + 16 channels cover the frames after the reference.
    assert records[0]["y"][:, :4].abs().sum() == 0
    assert (records[1]["y"][:, :4, 0] == 1).all() and records[1]["y"][:, :4, 1:].abs().sum() == 0
    assert out.settings["refert_num"] == 1 and out.settings["num_frames"] == FRAMES


def test_replacement_keeps_the_background_and_carries_five_frames(pipe, sources, monkeypatch):
    records = spy_segments(pipe, monkeypatch)
    out = pipe(sources, replace=True, clip_len=9, refert_num=5, **FAST)
    assert out.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert len(records) == 2 and torch.equal(records[1]["carried"], records[0]["video"][:, :, -5:])
    # Known: outside the person (latent pixels 0 and 3 of 4 along each side), and the 5 carried frames
    # (latent frames 0 and 1: pixel frames 0-4). The mask video went through H.264: near 0 and 1, not exactly.
    first, second = records[0]["y"][:, :4], records[1]["y"][:, :4]
    assert (first[..., 0, 0] > 0.9).all() and (first[..., 1:3, 1:3] < 0.1).all()
    assert (second[:, :, :2] == 1).all() and (second[:, :, 2:, 1:3, 1:3] < 0.1).all()


def test_a_missing_file_is_one_line_naming_it(pipe, sources, tmp_path):
    for name in ("src_pose.mp4", "src_ref.png"):
        (tmp_path / name).write_bytes((sources / name).read_bytes())
    with pytest.raises(FileNotFoundError) as error:
        pipe(tmp_path, clip_len=5, **FAST)
    assert "src_face.mp4" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"src_bg\.mp4, src_mask\.mp4.*replacement"):
        read_sources(sources.parent / "nowhere", replace=True)
    with pytest.raises(ValueError, match="refert_num must be 1 or 5"):
        pipe(sources, refert_num=3, **FAST)


def test_segments_and_padding_follow_the_release():
    assert padded_length(77, 77, 1) == 77 and padded_length(78, 77, 1) == 153  # get_valid_len
    assert segment_starts(153, 77, 1) == [0, 76]
    assert padded_length(11, 9, 5) == 13 and segment_starts(13, 9, 5) == [0, 4]
    assert ping_pong(torch.arange(4), 9).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]  # inputs_padding
    assert ping_pong(torch.arange(1), 3).tolist() == [0, 0, 0]
