"""The toy world's differentiable rewards: they rank rendered clips as the evaluator would, and pass gradients."""

from __future__ import annotations

import pytest
import torch

from videox_fun.io.video import frames_to_tensor
from videox_fun.toyworld.render import render_clip
from videox_fun.toyworld.rewards import ColourReward, MotionReward


def clip_tensor(caption: str, seed: int = 0) -> torch.Tensor:
    """A rendered clip as decoded frames (1, 3, F, H, W) in [-1, 1]."""
    return frames_to_tensor(torch.from_numpy(render_clip(caption, seed=seed).frames))[None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_colour_reward_prefers_the_prompts_colour(seed):
    video = clip_tensor("a red circle moving right", seed)
    reward = ColourReward()
    right, wrong = reward(video, ["a red circle moving right"]), reward(video, ["a blue circle moving right"])
    assert right.item() > 0.95 and right.item() - wrong.item() > 0.3, (right, wrong)
    black = -torch.ones_like(video)  # nothing drawn: the mean colour is undefined, the reward low
    assert reward(black, ["a red circle moving right"]).item() < right.item()


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_the_motion_reward_prefers_the_prompts_direction(direction):
    video = clip_tensor(f"a green square moving {direction}", seed=3)
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
    reward = MotionReward()
    right = reward(video, [f"a green square moving {direction}"])
    wrong = reward(video, [f"a green square moving {opposite}"])
    assert right.item() > 0.2 and wrong.item() == pytest.approx(-right.item(), abs=1e-6)
    still = video[:, :, :1].expand_as(video)  # the first frame held: no motion
    assert abs(reward(still, [f"a green square moving {direction}"]).item()) < 1e-4


def test_both_rewards_pass_gradients_to_every_frame():
    video = clip_tensor("a cyan triangle moving down").requires_grad_(True)
    prompts = ["a cyan triangle moving down"]
    (ColourReward()(video, prompts) + MotionReward()(video, prompts)).sum().backward()
    per_frame = video.grad.abs().sum(dim=(0, 1, 3, 4))  # (F,)
    assert torch.isfinite(video.grad).all() and (per_frame[:3] > 0).all() and (per_frame[-3:] > 0).all()


def test_a_prompt_that_names_no_colour_is_one_clear_error():
    with pytest.raises(ValueError, match="names none of the colours"):
        ColourReward()(clip_tensor("a red circle moving right"), ["a circle moving right"])
