"""Reward fine-tuning's rollout: gradients on exactly the chosen steps (counted on the real tiny transformer)."""

from __future__ import annotations

import pytest
import torch

from videox_fun.models.wan.tiny import tiny_transformer
from videox_fun.training.reward import backprop_steps, reward_loss, rollout


@pytest.mark.parametrize(
    ("strategy", "count", "expected"),
    [
        ("last", 1, [9]),
        ("tail", 3, [7, 8, 9]),
        ("uniform", 4, [0, 3, 6, 9]),
        ("uniform", 1, [0]),
        ([2, 5, 5], 1, [2, 5]),
    ],
)
def test_backprop_strategies_choose_their_steps(strategy, count, expected):
    assert backprop_steps(strategy, 10, count) == expected


def test_random_steps_are_distinct_drawn_from_the_generator_and_repeatable():
    draws = [backprop_steps("random", 10, 3, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(set(d)) == 3 and d == sorted(d) and d[0] >= 0 and d[-1] < 10 for d in draws)
    assert len({tuple(d) for d in draws}) > 5
    assert backprop_steps("random", 10, 3, torch.Generator().manual_seed(4)) == draws[4]


@pytest.mark.parametrize(("strategy", "count"), [("tail", 11), ("middle", 1), ([10], 1), ([], 1)])
def test_bad_strategies_are_one_clear_error(strategy, count):
    with pytest.raises(ValueError, match="--backprop"):
        backprop_steps(strategy, 10, count)


@pytest.fixture
def model_velocity():
    """The real tiny text-to-video transformer (in training mode) as a velocity function, and its call log."""
    torch.manual_seed(0)
    model = tiny_transformer("t2v").train()
    context = torch.randn(1, 8, 32)
    calls: list[bool] = []

    def velocity(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return model(latents, sigma * 1000, context)

    return model, velocity, calls


@pytest.mark.parametrize("keep", [[5], [0], [1, 3], [0, 2, 4, 5]])
def test_the_rollout_keeps_gradients_on_exactly_the_chosen_steps(model_velocity, keep):
    model, velocity, calls = model_velocity
    sigmas = torch.linspace(1.0, 0.0, 7)  # 6 steps
    final = rollout(velocity, torch.randn(1, 16, 2, 4, 4), sigmas, keep)
    assert [i for i, grad in enumerate(calls) if grad] == keep  # counted: one transformer call per step
    final.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.head.head.weight.grad.abs().sum() > 0  # even a first-step-only rollout reaches the weights


def test_detached_inputs_train_each_kept_step_on_its_own_contribution(model_velocity):
    """DRTune: with detached inputs the gradient of step 1 no longer flows back through step 0's velocity."""
    model, velocity, _ = model_velocity
    sigmas, start = torch.linspace(1.0, 0.0, 3), torch.randn(1, 16, 2, 4, 4)
    grads = []
    for detach in (False, True):
        model.zero_grad()
        rollout(velocity, start, sigmas, [0, 1], detach_input=detach).square().mean().backward()
        grads.append(model.patch_embedding.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_reward_loss_is_the_mean_scaled_distance_to_the_max():
    assert reward_loss(torch.tensor([0.5, 1.0]), max_reward=1.0, loss_scale=2.0).item() == pytest.approx(0.5)
