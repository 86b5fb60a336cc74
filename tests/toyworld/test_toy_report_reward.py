"""The reward report's pieces: training prompts exclude the held-out combinations, and the reward measured on
written videos follows the prompt (a rendered clip scores higher under its own caption)."""

from __future__ import annotations

import json

from videox_fun.io.video import write_video
from videox_fun.toyworld.render import render_clip
from videox_fun.toyworld.report_reward import seen_prompts_file, video_rewards
from videox_fun.toyworld.world import caption, combinations


def test_training_prompts_are_the_seen_combinations(tmp_path):
    prompts = seen_prompts_file(tmp_path).read_text().splitlines()
    assert sorted(prompts) == sorted(caption(spec) for spec in combinations("train"))
    assert not set(prompts) & {caption(spec) for spec in combinations("heldout")}


def test_video_rewards_follow_the_prompt(tmp_path):
    clip = render_clip("a red circle moving right", seed=3)
    for folder, prompt in (("own", "a red circle moving right"), ("other", "a blue square moving left")):
        video = write_video(clip.frames, tmp_path / folder / "00000000.mp4", fps=8)
        video.with_suffix(".json").write_text(json.dumps({"prompt": prompt}))
    for reward in ("toy_colour", "toy_motion"):
        own, other = video_rewards(tmp_path / "own", reward), video_rewards(tmp_path / "other", reward)
        assert own["seen"] > other["seen"] + 0.1, (reward, own, other)
