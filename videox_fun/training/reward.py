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
- :func:`reward_loss` is ``mean(|r - max_reward| * loss_scale)``;
- :class:`RewardObjective` is ``--train_mode reward``'s objective in the generic trainer: per micro-batch
  of prompts it samples the videos from per-sample noise, decodes the first latent frames and returns
  the reward loss (:func:`~videox_fun.training.objectives.objective_loss` calls its ``batch_loss``). What
  is family knowledge (text and t2v conditions, the latent shape, the sigmas, the decode) comes from the
  family spec's reward hooks (:data:`REWARD_HOOKS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..pipelines.schedulers import NUM_TRAIN_TIMESTEPS

if TYPE_CHECKING:
    from .config import TrainConfig
    from .reward_models import RewardFunction
    from .specs import Device, FamilyModels, FamilySpec

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


# ----------------------------------------------------------------------------------------
# The objective of --train_mode reward
# ----------------------------------------------------------------------------------------
# What a family spec provides for reward training (see the Wan spec's :mod:`.specs.wan_reward`):
# reward_conditions(models, prompts, negative_prompt, size, device) -> (cond, uncond) transformer inputs (B, ...);
# reward_latent_shape(models, batch_size, size) -> the noise shape; reward_sigmas(models, steps) -> (steps + 1,);
# reward_guidance(models) -> the default CFG scale; reward_decode(models, latents, checkpoint) -> frames in [-1, 1].
REWARD_HOOKS = ("reward_conditions", "reward_latent_shape", "reward_sigmas", "reward_guidance", "reward_decode")
NEGATIVE_PROMPT = ""  # VideoX-Fun's reward scripts guide against the empty prompt


@dataclass
class RewardObjective:
    """Reward fine-tuning's loss of one micro-batch of prompts: sample, decode, judge (VideoX-Fun's reward LoRA).

    size: (frames, height, width) of the sampled videos; sigmas: (steps + 1,) of the Euler rollout.
    """

    reward: RewardFunction
    size: tuple[int, int, int]
    sigmas: torch.Tensor
    strategy: str | list[int]
    backprop_num_steps: int
    guidance_scale: float
    num_decoded_latents: int
    num_sampled_frames: int | None
    max_reward: float
    loss_scale: float
    detach_input: bool = False
    checkpoint_decode: bool = True

    @classmethod
    def from_config(cls, spec: FamilySpec, models: FamilyModels, config: TrainConfig) -> RewardObjective:
        """The objective ``config`` asks for; one-line ValueError when the spec or the reward cannot serve it."""
        from .reward_models import load_reward

        missing = [name for name in REWARD_HOOKS if not hasattr(spec, name)]
        if missing:
            raise ValueError(f"--train_mode reward: the {spec.name} family spec has no reward sampling ({missing[0]})")
        reward = load_reward(config.reward_fn or "", config.reward_fn_kwargs)
        size = sample_size(config)
        latent_frames = spec.reward_latent_shape(models, 1, size)[2]
        if config.num_decoded_latents > latent_frames:
            raise ValueError(
                f"--num_decoded_latents {config.num_decoded_latents} exceeds the {latent_frames} latent frames of "
                f"--video_sample_n_frames {size[0]}"
            )
        steps = config.num_sampling_steps
        return cls(
            reward=reward,
            size=size,
            sigmas=spec.reward_sigmas(models, steps).float(),
            strategy=config.backprop_step_list if config.backprop_step_list is not None else config.backprop_strategy,
            backprop_num_steps=config.backprop_num_steps,
            guidance_scale=config.guidance_scale if config.guidance_scale is not None else spec.reward_guidance(models),
            num_decoded_latents=config.num_decoded_latents,
            num_sampled_frames=config.num_sampled_frames,
            max_reward=config.max_reward if config.max_reward is not None else reward.max_reward,
            loss_scale=config.loss_scale if config.loss_scale is not None else getattr(reward, "loss_scale", 1.0),
            detach_input=config.detach_input,
            checkpoint_decode=config.vae_gradient_checkpointing,
        )

    @property
    def num_steps(self) -> int:
        """Denoising steps of one rollout."""
        return len(self.sigmas) - 1

    def batch_loss(
        self,
        spec: FamilySpec,
        models: FamilyModels,
        transformer: nn.Module,
        batch: dict,
        mode: str,
        generators: Sequence[torch.Generator],
        device: Device,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> torch.Tensor:
        """``mean(|r - max_reward| * loss_scale)`` of the batch's prompts' sampled videos (a scalar, fp32)."""
        rewards = self.sample_rewards(spec, models, transformer, list(batch["text"]), generators, device, autocast)
        return reward_loss(rewards, self.max_reward, self.loss_scale)

    def sample_rewards(
        self,
        spec: FamilySpec,
        models: FamilyModels,
        transformer: nn.Module,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        device: Device,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> torch.Tensor:
        """Rewards (B,) of the videos sampled for ``prompts``: the rollout from per-sample noise with CFG, then the
        decode of its first latent frames (B, 3, F, H, W) in [-1, 1], differentiable through the kept steps.

        Draws, in order: each sample's noise from its generator, then (``random``) the kept steps from the first.
        """
        shape = spec.reward_latent_shape(models, len(prompts), self.size)  # (B, z, F', h, w)
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device)
        keep = backprop_steps(self.strategy, self.num_steps, self.backprop_num_steps, generators[0])
        cond, uncond = spec.reward_conditions(models, prompts, NEGATIVE_PROMPT, self.size, device)
        velocity = guided_velocity(spec, transformer, cond, uncond, self.guidance_scale, autocast)
        latents = rollout(velocity, noise, self.sigmas.to(device), keep, self.detach_input)
        frames = spec.reward_decode(models, latents[:, :, : self.num_decoded_latents], self.checkpoint_decode)
        frames = sampled_frames(frames, self.num_sampled_frames)
        if hasattr(self.reward, "to"):  # a reward model visits the device of the frames
            self.reward = self.reward.to(frames.device)
        return self.reward(frames, prompts).float()


def sample_size(config: TrainConfig) -> tuple[int, int, int]:
    """(frames, height, width) of reward training's videos: ``--video_sample_n_frames`` and ``--video_sample_size``."""
    sides = list(config.video_sample_size)
    height, width = (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])
    return config.video_sample_n_frames, height, width


def guided_velocity(
    spec: FamilySpec,
    transformer: nn.Module,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor],
    scale: float,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> Velocity:
    """The CFG velocity v_u + scale (v_c - v_u) for :func:`rollout`: one transformer call per step, the
    unconditional and conditional halves batched together (as VideoX-Fun's reward script); scale 1: cond only."""
    from .specs import TrainInputs

    paired = {name: torch.cat([uncond[name], cond[name]]) for name in cond}

    def velocity(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma * NUM_TRAIN_TIMESTEPS  # (B,)
        with autocast():
            if scale == 1.0:
                return spec.predict(transformer, latents, t, TrainInputs(latents, cond)).float()
            both = torch.cat([latents, latents])  # (2B, z, F', h, w)
            prediction = spec.predict(transformer, both, torch.cat([t, t]), TrainInputs(both, paired)).float()
        v_uncond, v_cond = prediction.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity


def sampled_frames(frames: torch.Tensor, count: int | None) -> torch.Tensor:
    """``count`` frames, evenly spaced from first to last, of frames (B, 3, F, H, W) (``--num_sampled_frames``)."""
    if count is None or count >= frames.shape[2]:
        return frames
    indices = torch.linspace(0, frames.shape[2] - 1, steps=count).long().to(frames.device)
    return frames.index_select(2, indices)
