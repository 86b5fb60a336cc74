"""Reward fine-tuning's sampling with gradients (issue #21): which steps keep them, the rollout, the loss.

VideoX-Fun's ``train_reward_lora.py`` samples each video from noise with CFG and backpropagates a
differentiable reward of the decoded frames through a few of the denoising steps only:

- :func:`backprop_steps` chooses them by ``--backprop_strategy``: ``last`` (the final step), ``tail``
  (the last N), ``uniform`` (N spread evenly), ``random`` (N drawn per video), or an explicit list;
- :func:`rollout` runs flow-matching Euler steps: on a chosen step the velocity keeps its graph, on
  the others it is computed without one (a constant), while the latent chain itself stays
  differentiable, so a chosen early step still receives the gradient of the final latents through the
  later updates. ``detach_input`` (DRTune) also cuts the chosen steps' transformer inputs from the
  chain, so each chosen step is trained on its own contribution only;
- :func:`reward_loss` is ``mean(|r - max_reward| * loss_scale)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

BACKPROP_STRATEGIES = ("last", "tail", "uniform", "random")

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents (B, ...), sigma (B,)) -> velocity


def backprop_steps(
    strategy: str | Sequence[int], num_steps: int, count: int = 1, generator: torch.Generator | None = None
) -> list[int]:
    """The denoising steps (0-based, increasing) whose velocity keeps gradients.

    strategy: one of :data:`BACKPROP_STRATEGIES` or explicit step indices; count: N of tail / uniform /
    random (``last`` is one step); generator: the draw of ``random``.
    """
    if num_steps < 1:
        raise ValueError(f"the rollout needs at least one step, got {num_steps}")
    if not isinstance(strategy, str):
        steps = sorted({int(s) for s in strategy})
        if not steps or steps[0] < 0 or steps[-1] >= num_steps:
            raise ValueError(f"--backprop_strategy steps {list(strategy)} must lie in [0, {num_steps - 1}]")
        return steps
    if strategy not in BACKPROP_STRATEGIES:
        raise ValueError(
            f"--backprop_strategy {strategy!r} is unknown; choose {', '.join(BACKPROP_STRATEGIES)} or steps"
        )
    if strategy == "last":
        return [num_steps - 1]
    if not 1 <= count <= num_steps:
        raise ValueError(f"--backprop_num_steps must be in [1, {num_steps}], got {count}")
    if strategy == "tail":
        return list(range(num_steps - count, num_steps))
    if strategy == "uniform":
        return sorted({round(i * (num_steps - 1) / max(1, count - 1)) for i in range(count)}) if count > 1 else [0]
    return sorted(torch.randperm(num_steps, generator=generator)[:count].tolist())


def rollout(
    velocity: Velocity,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    keep: Sequence[int],
    detach_input: bool = False,
) -> torch.Tensor:
    """Euler flow sampling from ``latents`` at ``sigmas[0]`` down to ``sigmas[-1]``: x <- x + (s' - s) v(x, s).

    sigmas: (N + 1,) decreasing; keep: the steps whose velocity keeps its graph (:func:`backprop_steps`).
    Returns the final latents, differentiable through the kept steps' velocities.
    """
    kept = set(keep)
    for step in range(len(sigmas) - 1):
        sigma = sigmas[step].expand(latents.shape[0])  # (B,)
        if step in kept:
            model_input = latents.detach() if detach_input else latents
            with torch.enable_grad():
                v = velocity(model_input, sigma)
        else:
            with torch.no_grad():
                v = velocity(latents.detach(), sigma)
        latents = latents + (sigmas[step + 1] - sigmas[step]) * v
    return latents


def reward_loss(rewards: torch.Tensor, max_reward: float = 1.0, loss_scale: float = 1.0) -> torch.Tensor:
    """VideoX-Fun's reward loss: mean(|r - max_reward| * loss_scale) over the videos' rewards (B,)."""
    return ((rewards.float() - max_reward).abs() * loss_scale).mean()
