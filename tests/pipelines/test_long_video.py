"""Long videos in overlapping windows (VideoX-Fun's partial_video_length / overlap_video_length)."""

from __future__ import annotations

import itertools

import pytest
import torch

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.families import SizeRules
from videox_fun.pipelines.long_video import Segment, continuation_inputs, cross_fade, plan_segments

FOUR_K_PLUS_ONE = SizeRules(frame_factor=4).valid_frame_count


def test_windows_cover_the_video_with_the_overlap_and_valid_counts():
    assert plan_segments(33, 17, 4, FOUR_K_PLUS_ONE) == [Segment(0, 17), Segment(13, 17), Segment(26, 9)]
    for total in range(18, 60):
        segments = plan_segments(total, 17, 4, FOUR_K_PLUS_ONE)
        assert segments[-1].start + segments[-1].frames >= total
        for before, after in itertools.pairwise(segments):
            assert after.start == before.start + before.frames - 4  # each window starts on the last 4 frames
        assert all(FOUR_K_PLUS_ONE(s.frames) == s.frames for s in segments)
    with pytest.raises(ValueError, match="not a frame count"):
        plan_segments(40, 16, 4, FOUR_K_PLUS_ONE)
    with pytest.raises(ValueError, match="overlap"):
        plan_segments(40, 17, 17, FOUR_K_PLUS_ONE)


def test_the_overlap_cross_fades_from_the_old_window_into_the_new():
    old = torch.full((6, 2, 2, 3), 200, dtype=torch.uint8)
    new = torch.full((5, 2, 2, 3), 100, dtype=torch.uint8)
    joined = cross_fade(old, new, 4)
    assert joined.shape[0] == 6 + 5 - 4
    assert joined[:2, 0, 0, 0].tolist() == [200, 200]
    assert joined[2:6, 0, 0, 0].tolist() == [200, 175, 150, 125]  # weight of the new frame: i / 4
    assert joined[6:, 0, 0, 0].tolist() == [100]
    inputs = continuation_inputs(old[-4:], 9)
    assert inputs["mask"][:4].max() == 0 and inputs["mask"][4:].min() == 255  # black = known
    assert torch.equal(inputs["video"][:4], old[-4:])


def test_a_long_video_continues_each_window_from_the_last_frames_of_the_one_before():
    loaded = load_pipeline("Wan2.1-Fun-Tiny-InP", RuntimeOptions(device="cpu"))
    calls = []
    original = loaded.pipe.__call__

    def spy(prompt, **settings):
        calls.append(settings)
        return original(prompt, **settings)

    members = {"__call__": staticmethod(spy), "transformers": loaded.pipe.transformers, "device": loaded.pipe.device}
    loaded.pipe = type("Spy", (), members)()
    request = GenerationRequest(prompt="a red circle moving right", num_frames=25, steps=2, partial_video_length=13)
    result = loaded.generate(request, progress=False)
    assert result.frames.shape[0] == 25
    assert [c["mode"] for c in calls] == ["t2v", "inpaint", "inpaint"]
    assert [c["num_frames"] for c in calls] == [13, 13, 9]
    assert [c["seed"] for c in calls] == [43, 44, 45]
    assert result.sidecar["partial_video_length"] == 13 and result.sidecar["segments"] == 3
    assert result.sidecar["num_frames"] == 25 and result.sidecar["mode"] == "t2v"


def test_long_videos_need_a_model_that_inpaints():
    loaded = load_pipeline("Wan2.1-Fun-Tiny-Control", RuntimeOptions(device="cpu"))
    request = GenerationRequest(prompt="x", num_frames=25, partial_video_length=13)
    with pytest.raises(ValueError, match="continue each window by inpainting"):
        loaded.generate(request, progress=False)
