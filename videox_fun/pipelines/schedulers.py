"""The flow-matching samplers users know by name, built on diffusers' schedulers."""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLERS = ("Flow", "Flow_Unipc", "Flow_DPM++")
# The flow schedulers' timestep scale: timestep = sigma x NUM_TRAIN_TIMESTEPS, sigma in [0, 1].
NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(
    name: str = "Flow", shift: float = 3.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> SchedulerMixin:
    """``Flow`` (flow-match Euler), ``Flow_Unipc`` or ``Flow_DPM++`` with the flow ``shift`` (> 0)."""
    if not shift > 0:  # 0 puts every sigma at 0 (a black video), a negative one outside [0, 1]
        raise ValueError(f"flow shift must be above 0, got {shift}")
    if name == "Flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    if name == "Flow_Unipc":
        return UniPCMultistepScheduler(num_train_timesteps=num_train_timesteps, **flow)
    if name == "Flow_DPM++":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=num_train_timesteps, algorithm_type="dpmsolver++", **flow
        )
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


def start_index(num_steps: int, strength: float) -> int:
    """First step to run when denoising an existing video with ``strength`` in (0, 1]."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"denoise strength must be in (0, 1], got {strength}")
    return num_steps - max(1, round(num_steps * strength))
