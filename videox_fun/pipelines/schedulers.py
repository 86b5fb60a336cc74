"""The flow-matching samplers users know by name, built on diffusers' schedulers.

The solvers are diffusers' own (flow-match Euler, UniPC, DPM-Solver++); the sigma grids are
VideoX-Fun's, so the same steps and shift give the same timesteps as there:

- ``Flow``: diffusers' ``FlowMatchEulerDiscreteScheduler`` with the shift, as VideoX-Fun builds it.
- ``Flow_Unipc``: VideoX-Fun's ``FlowUniPCMultistepScheduler`` (built with shift 1, then
  ``set_timesteps(steps, shift=shift)``): ``linspace(0.999, 0, steps + 1)[:-1]`` shifted, then 0.
  diffusers' own flow grid would start at 1 and end at 0.001.
- ``Flow_DPM++``: VideoX-Fun's ``get_sampling_sigmas(steps, shift)``:
  ``linspace(1, 0, steps + 1)[:-1]`` shifted, then 0. diffusers' own would start at 0.999.
- ``Flow_Distill``: flow-match Euler on that same grid: at 4 steps the timesteps 1000, 750, 500, 250
  under the shift, where a distilled student (``train_distill.py``, DMD) was trained to denoise; a student
  trained on other timesteps (``--denoising_step_list``) samples those (``distill_timesteps``).

Timesteps are ``sigma * 1000`` rounded down to integers for the two multistep solvers (both
libraries do that); ``Flow`` keeps float timesteps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..config import NUM_TRAIN_TIMESTEPS, parse_timesteps

SAMPLERS = ("Flow", "Flow_Unipc", "Flow_DPM++", "Flow_Distill")


def shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow shift of a sigma grid: shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unipc_base_sigmas(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """VideoX-Fun's Flow_Unipc grid before the shift: ``linspace(sigma_max, 0, steps + 1)[:-1]``.

    Its scheduler (built with shift 1) keeps sigma_max = the float32 training sigma
    ``1 - 1/num_train_timesteps`` (0.999...) and sigma_min = 0.
    """
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    return np.linspace(sigma_max, 0.0, num_steps + 1)[:-1].copy()


def unipc_sigmas(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """VideoX-Fun's Flow_Unipc grid (num_steps,), before the final 0."""
    return shifted(unipc_base_sigmas(num_steps, num_train_timesteps), shift)


def dpm_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """VideoX-Fun's Flow_DPM++ grid (its ``get_sampling_sigmas``), (num_steps,), before the final 0."""
    return shifted(np.linspace(1.0, 0.0, num_steps + 1)[:num_steps], shift)


class FlowUniPCScheduler(UniPCMultistepScheduler):
    """diffusers' UniPC (flow prediction) on VideoX-Fun's Flow_Unipc sigma grid."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None:  # diffusers applies flow_shift to the sigmas it is given
            sigmas = unipc_base_sigmas(num_inference_steps, self.config.num_train_timesteps)
        super().set_timesteps(device=device, sigmas=sigmas, mu=mu)


class FlowDPMSolverScheduler(DPMSolverMultistepScheduler):
    """diffusers' DPM-Solver++ (flow prediction) on VideoX-Fun's Flow_DPM++ sigma grid."""

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
        super().set_timesteps(num_inference_steps, device=device, mu=mu, timesteps=timesteps)
        if timesteps is not None or mu is not None:
            return
        sigmas = dpm_sigmas(num_inference_steps, self.config.flow_shift)
        self.timesteps = torch.from_numpy(sigmas * self.config.num_train_timesteps).to(device=device, dtype=torch.int64)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def distill_sigmas(num_steps: int, timesteps: Sequence[int] | None = None) -> np.ndarray:
    """``Flow_Distill``'s sigmas before the shift: the student's training timesteps / 1000 when it was trained on
    ``num_steps`` of them, else the uniform ``linspace(1, 0, steps + 1)[:-1]`` (1000, 750, 500, 250 at 4 steps)."""
    if timesteps is not None and len(timesteps) == num_steps:
        return np.asarray(timesteps, dtype=np.float64) / NUM_TRAIN_TIMESTEPS
    return np.linspace(1.0, 0.0, num_steps + 1)[:num_steps].copy()


class FlowDistillScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-match Euler on a DMD student's grid (shifted by the scheduler): the ``linspace(1, 0, steps +
    1)[:-1]`` its rollout runs in training (:mod:`videox_fun.training.distill`), or the timesteps it was trained
    on (:attr:`student_timesteps`, set by :func:`make_scheduler`) when sampled at as many steps."""

    student_timesteps: tuple[int, ...] | None = None

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None:  # diffusers applies the shift to the sigmas it is given
            sigmas = distill_sigmas(num_inference_steps, self.student_timesteps)
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def make_scheduler(
    name: str = "Flow",
    shift: float = 5.0,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    distill_timesteps: Sequence[int] | None = None,
) -> SchedulerMixin:
    """``Flow`` (flow-match Euler), ``Flow_Unipc``, ``Flow_DPM++`` or ``Flow_Distill`` with the flow ``shift`` (> 0);
    ``distill_timesteps``: the training timesteps of the student ``Flow_Distill`` samples (None: uniform)."""
    if not shift > 0:  # 0 puts every sigma at 0 (a black video), a negative one outside [0, 1]
        raise ValueError(f"flow shift must be above 0, got {shift}")
    if name == "Flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    if name == "Flow_Distill":
        scheduler = FlowDistillScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        scheduler.student_timesteps = None if distill_timesteps is None else parse_timesteps(distill_timesteps)
        return scheduler
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    if name == "Flow_Unipc":
        return FlowUniPCScheduler(num_train_timesteps=num_train_timesteps, **flow)
    if name == "Flow_DPM++":
        return FlowDPMSolverScheduler(num_train_timesteps=num_train_timesteps, algorithm_type="dpmsolver++", **flow)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


def start_index(num_steps: int, strength: float) -> int:
    """First step to run when denoising an existing video with ``strength`` in (0, 1]."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"denoise strength must be in (0, 1], got {strength}")
    return num_steps - max(1, round(num_steps * strength))
