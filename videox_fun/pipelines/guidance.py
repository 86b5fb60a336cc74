"""Classifier-free guidance wrapped around a denoiser, so no pipeline re-types it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..runtime.cache import cache_branch

Denoiser = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def _cat_conditions(cond: dict, uncond: dict) -> dict:
    """Stack the conditional and unconditional inputs along the batch for one pass."""
    merged = {}
    for key, value in cond.items():
        other = uncond.get(key, value)
        merged[key] = torch.cat([value, other]) if isinstance(value, torch.Tensor) else value
    return merged


@dataclass
class ClassifierFreeGuidance:
    """``uncond + scale * (cond - uncond)`` around any ``denoise(latents, t, inputs)``.

    batched: cond and uncond in one pass of twice the batch (fast) or two passes (less memory).
    skip_ratio: share of the last steps that drop the unconditional pass (CFG skip).
    """

    scale: float = 5.0
    batched: bool = True
    skip_ratio: float = 0.0
    passes: dict = field(default_factory=lambda: {"cond": 0, "uncond": 0})

    def active(self, step: int, num_steps: int, scale: float | None = None) -> bool:
        """Whether the unconditional pass runs at this step (never at scale 1, where it cancels out)."""
        if (self.scale if scale is None else scale) == 1.0:
            return False
        return step < num_steps - int(num_steps * self.skip_ratio)

    def __call__(
        self,
        denoise: Denoiser,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: dict,
        uncond: dict,
        step: int,
        num_steps: int,
        scale: float | None = None,
        renorm_dim: int | None = None,
    ) -> torch.Tensor:
        """The guided prediction for ``latents`` (B, C, F, H, W) at timestep ``t`` (B,).

        scale: this step's guidance scale instead of ``self.scale`` (Wan2.2 A14B experts each have
        their own), so a guidance object the caller passed in is never changed.
        renorm_dim: rescale the guided prediction to the conditional one's norm along this axis
        (Qwen-Image's true CFG: per token, over its channels), as :func:`renormalised`.
        """
        scale = self.scale if scale is None else scale
        self.passes["cond"] += 1
        if not self.active(step, num_steps, scale):
            with cache_branch("cond"):
                return denoise(latents, t, cond)
        self.passes["uncond"] += 1
        pred_cond, pred_uncond = self.predict_both(denoise, latents, t, cond, uncond)
        guided = pred_uncond + scale * (pred_cond - pred_uncond)
        return guided if renorm_dim is None else renormalised(guided, pred_cond, renorm_dim)

    def predict_both(
        self, denoise: Denoiser, latents: torch.Tensor, t: torch.Tensor, cond: dict, uncond: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and unconditional predictions (CFG parallelism overrides where they run).

        Each sequential pass runs inside its :func:`~videox_fun.runtime.cache.cache_branch`, so step caches keep
        their states apart; the batched pass carries both branches and names none (the caches then key it by
        its text context, one state for the pair).
        """
        if self.batched:
            both = denoise(torch.cat([latents, latents]), torch.cat([t, t]), _cat_conditions(cond, uncond))
            return both.chunk(2)
        with cache_branch("cond"):
            pred_cond = denoise(latents, t, cond)
        with cache_branch("uncond"):
            pred_uncond = denoise(latents, t, uncond)
        return pred_cond, pred_uncond


def renormalised(guided: torch.Tensor, pred_cond: torch.Tensor, dim: int) -> torch.Tensor:
    """``guided`` rescaled to the norm of ``pred_cond`` along ``dim``: the guidance keeps its direction but not its
    larger magnitude, which at high scales over-saturates (diffusers' Qwen-Image pipelines do this)."""
    cond_norm = torch.norm(pred_cond, dim=dim, keepdim=True)
    return guided * (cond_norm / torch.norm(guided, dim=dim, keepdim=True))
