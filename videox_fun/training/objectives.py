"""Training objectives: how clean latents become a noisy input, what the transformer must predict, and the loss.

A family's training spec chooses its objective (``spec.objective(models, config)``); the trainer
calls it through :func:`objective_loss` and never asks which one it is (finetrainers' split: the
spec builds the inputs, the objective owns noise levels, target and loss weighting).

- :class:`FlowMatching` (Wan and every rectified-flow family): ``x_t = (1 - s) x0 + s noise``,
  target ``noise - x0``, transformer timestep ``1000 s``;
- :class:`VPrediction` (CogVideoX): a DDPM noise schedule built from the model folder's
  ``scheduler/scheduler_config.json`` by diffusers' own scheduler class, ``x_t = sqrt(a_t) x0 +
  sqrt(1 - a_t) noise`` (``add_noise``), target ``v = sqrt(a_t) noise - sqrt(1 - a_t) x0``
  (``get_velocity``), integer timesteps drawn uniformly from ``[0, num_train_timesteps)``.

Each objective's "timesteps" are its own noise levels (sigmas in (0, 1) for flow matching,
integer DDPM steps for v-prediction); :meth:`Objective.model_timesteps` turns them into what the
transformer takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ..pipelines.schedulers import NUM_TRAIN_TIMESTEPS

if TYPE_CHECKING:
    from .config import TrainConfig
    from .specs import Device, FamilyModels, FamilySpec, TrainInputs


class Objective(Protocol):
    """What the trainer needs of a training objective. All draws come from one generator per sample."""

    def sample_timesteps(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One noise level per sample, (B,), in the objective's own units."""
        ...

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The transformer's ``timestep`` input (B,) for noise levels ``timesteps``."""
        ...

    def noise_like(self, latents: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Gaussian noise shaped as ``latents``, drawn per sample."""
        ...

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The transformer's noisy input x_t for clean ``latents`` x0."""
        ...

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the transformer should predict for x_t."""
        ...

    def loss(
        self,
        prediction: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        counted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The (weighted) MSE of ``prediction`` to :meth:`target`, averaged over samples: a scalar (fp32).

        ``counted`` (broadcastable to the latents, 1 = counted): the elements each sample's mean is over.
        """
        ...


def noise_like(latents: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian noise (B, ...) drawn per sample from its generator (on the CPU, so any device agrees)."""
    shape = latents.shape[1:]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(latents.device)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample (B,) in fp32, over the ``counted`` elements only when given (1 = counted)."""
    error = (prediction.float() - target.float()).pow(2)
    if counted is None:
        return error.flatten(1).mean(dim=1)
    weights = counted.float().expand_as(error)
    return (error * weights).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1).clamp_min(1.0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------------------
# Flow matching (Wan, and every other rectified-flow family)
# ----------------------------------------------------------------------------------------
def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow shift of the samplers: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


@dataclass
class FlowMatching:
    """x_t = (1 - s) x0 + s noise, target = noise - x0, timestep = NUM_TRAIN_TIMESTEPS s (1000 s).

    Sigmas come from a logit-normal (SD3), uniform or "mode" density, then the flow shift is
    applied exactly as the inference schedulers apply it; the loss can be weighted over sigma
    (none / sigma_sqrt / cosmap). The densities and weights are diffusers' SD3 functions.
    """

    sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    weighting: str = "none"
    shift: float = 1.0
    # The share of the noise range trained (Wan2.2 experts: [boundary, 1] high, [0, boundary) low):
    # the shifted density is mapped onto it, so each expert sees the same shape over its own range.
    sigma_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_config(cls, config: TrainConfig, default_shift: float, sigma_range: tuple[float, float]) -> FlowMatching:
        """Flow matching as the training config says; ``default_shift`` (the model's) unless ``--shift`` is given."""
        return cls(
            sampling=config.timestep_sampling,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            mode_scale=config.mode_scale,
            weighting=config.weighting_scheme,
            shift=config.shift if config.shift is not None else default_shift,
            sigma_range=sigma_range,
        )

    def sample_sigmas(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One sigma per sample, each drawn from that sample's generator: (B,) in (0, 1)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = {"uniform": "none"}.get(self.sampling, self.sampling)
        u = torch.cat(
            [
                compute_density_for_timestep_sampling(
                    scheme, 1, self.logit_mean, self.logit_std, self.mode_scale, generator=g
                )
                for g in generators
            ]
        )
        low, high = self.sigma_range
        return low + (high - low) * shift_sigmas(u.clamp(1e-5, 1.0 - 1e-5), self.shift)

    def sample_timesteps(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The noise levels of flow matching are its sigmas (B,) in (0, 1)."""
        return self.sample_sigmas(generators)

    @staticmethod
    def model_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
        """The transformer's timestep: 1000 sigma."""
        return sigmas * NUM_TRAIN_TIMESTEPS

    noise_like = staticmethod(noise_like)

    @staticmethod
    def noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - s) x0 + s noise."""
        s = _per_sample(sigmas, latents).to(latents)
        return (1.0 - s) * latents + s * noise

    @staticmethod
    def target(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The velocity noise - x0."""
        return noise - latents

    def loss(
        self,
        prediction: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        counted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted MSE to the velocity target noise - x0 (over the ``counted`` elements), averaged over samples."""
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        per_sample = per_sample_mse(prediction, self.target(latents, noise, sigmas), counted)  # (B,)
        weights = compute_loss_weighting_for_sd3(self.weighting, sigmas.float().to(per_sample.device))
        return (weights * per_sample).mean()

    @staticmethod
    def split_prediction(
        noisy: torch.Tensor, prediction: torch.Tensor, sigmas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, noise) that the velocity ``prediction`` implies for x_t at ``sigmas`` (B,): x0 = x_t - s v,
        noise = x_t + (1 - s) v. ``noisy(x0, noise, s')`` is then the Euler step from s to s'."""
        s = _per_sample(sigmas, noisy).to(prediction.dtype)
        return noisy - s * prediction, noisy + (1.0 - s) * prediction

    def rollout_timesteps(self, steps: Sequence[int]) -> torch.Tensor:
        """A few-step student's noise levels (K,) for training timesteps ``steps`` in (0, 1000] (e.g. 1000, 750,
        500, 250): sigma = t / 1000 under the flow shift, the grid ``Flow_Distill`` samples (x0 after the last)."""
        return shift_sigmas(torch.tensor([float(t) for t in steps]) / NUM_TRAIN_TIMESTEPS, self.shift)


# ----------------------------------------------------------------------------------------
# v-prediction on a DDPM schedule (CogVideoX)
# ----------------------------------------------------------------------------------------
# Training settings that only flow matching reads, with the value that means "not set".
FLOW_ONLY_SETTINGS: Mapping[str, Any] = {
    "shift": None,
    "weighting_scheme": "none",
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "mode_scale": 1.29,
}


def refuse_flow_settings(config: TrainConfig, why: str) -> None:
    """Raise a one-line ValueError naming each flow-matching setting ``config`` sets (they would be ignored)."""
    given = [
        f"--{name} {getattr(config, name)}"
        for name, unset in FLOW_ONLY_SETTINGS.items()
        if getattr(config, name) != unset
    ]
    if config.timestep_sampling == "mode":
        given.append("--timestep_sampling mode")
    if given:
        raise ValueError(f"{', '.join(given)}: flow-matching setting(s) that {why}; leave them out")


@dataclass
class VPrediction:
    """v-prediction on a DDPM schedule: ``alphas_cumprod`` (a_t) of diffusers' scheduler built from the model's config.

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise; target v = sqrt(a_t) noise - sqrt(1 - a_t) x0;
    t uniform over the integers [0, num_train_timesteps), as VideoX-Fun and diffusers' CogVideoX
    scripts draw it. The loss is the plain MSE in v: diffusers' CogVideoX script compares the x0
    estimate ``sqrt(a_t) x_t - sqrt(1 - a_t) v_pred`` to x0 weighted by ``1 / (1 - a_t)``, which is
    the same number (x0_pred - x0 = -sqrt(1 - a_t) (v_pred - v)); VideoX-Fun compares v directly.

    The schedule is ``CogVideoXDDIMScheduler``'s (the class CogVideoX samples with): scaled-linear
    betas, the SNR shift ``snr_shift_scale``, then the zero-terminal-SNR rescale. (VideoX-Fun builds
    a ``DDPMScheduler`` from the same file, which ignores ``snr_shift_scale``; both agree when it is 1.)
    """

    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float64 as diffusers keeps it

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> VPrediction:
        """The schedule of a released ``scheduler_config.json`` (it must say ``prediction_type: v_prediction``)."""
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "v_prediction":
            raise ValueError(f"the scheduler config predicts {prediction!r}; VPrediction trains v_prediction models")
        return cls(alphas_cumprod=make_ddpm_scheduler(config).alphas_cumprod.clone())

    @property
    def num_train_timesteps(self) -> int:
        """How many discrete noise levels the schedule has (1000)."""
        return int(self.alphas_cumprod.shape[0])

    def sample_timesteps(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One integer timestep per sample, uniform over [0, num_train_timesteps): (B,) int64."""
        return torch.cat([torch.randint(0, self.num_train_timesteps, (1,), generator=g) for g in generators])

    @staticmethod
    def model_timesteps(timesteps: torch.Tensor) -> torch.Tensor:
        """The transformer takes the integer DDPM timestep as it is."""
        return timesteps

    noise_like = staticmethod(noise_like)

    def _coefficients(self, like: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(a_t), sqrt(1 - a_t)), each (B, 1, ..., 1) in ``like``'s dtype, computed as diffusers computes them."""
        alphas = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device)]  # (B,)
        return _per_sample(alphas**0.5, like), _per_sample((1 - alphas) ** 0.5, like)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (diffusers' ``add_noise``)."""
        signal, sigma = self._coefficients(latents, timesteps)
        return signal * latents + sigma * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (diffusers' ``get_velocity``)."""
        signal, sigma = self._coefficients(latents, timesteps)
        return signal * noise - sigma * latents

    def loss(
        self,
        prediction: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        counted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MSE to the velocity v (over the ``counted`` elements), per sample then averaged over samples (fp32)."""
        target = self.target(latents.float(), noise.float(), timesteps)
        return per_sample_mse(prediction, target, counted).mean()

    def split_prediction(
        self, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, noise) that ``prediction`` v implies for x_t at ``timesteps``: x0 = sqrt(a) x_t - sqrt(1 - a) v,
        noise = sqrt(1 - a) x_t + sqrt(a) v. ``noisy(x0, noise, t')`` is then the deterministic DDIM step."""
        signal, sigma = self._coefficients(prediction, timesteps)
        return signal * noisy - sigma * prediction, sigma * noisy + signal * prediction

    def rollout_timesteps(self, steps: Sequence[int]) -> torch.Tensor:
        """A few-step student's DDPM timesteps (K,) for training timesteps ``steps`` in (0, 1000]: t - 1."""
        return torch.tensor([max(0, int(t) - 1) for t in steps], dtype=torch.int64)


def make_ddpm_scheduler(config: Mapping[str, Any]):  # -> CogVideoXDDIMScheduler
    """diffusers' ``CogVideoXDDIMScheduler`` from a scheduler config (entries it does not take are left out)."""
    import inspect

    from diffusers import CogVideoXDDIMScheduler

    accepted = set(inspect.signature(CogVideoXDDIMScheduler.__init__).parameters)
    return CogVideoXDDIMScheduler.from_config({k: v for k, v in config.items() if k in accepted})


# ----------------------------------------------------------------------------------------
# One micro-batch's loss
# ----------------------------------------------------------------------------------------
def objective_loss(
    spec: FamilySpec,
    models: FamilyModels,
    transformer: nn.Module,
    objective: Objective,
    batch: dict,
    mode: str,
    generators: Sequence[torch.Generator],
    device: Device,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """The loss (a scalar) of one (micro-)batch, as every training step computes it.

    ``spec`` builds the inputs (clean latents x0 and conditions); then per sample the objective
    draws a noise level and the noise, makes x_t (latent frames the inputs mark as known stay
    clean and are left out of the loss, as Wan2.2 TI2V's image frame), ``spec.predict`` runs ``transformer`` on it
    (inside ``autocast()``, e.g. ``accelerator.autocast``) and the objective compares the prediction
    with its target. All draws come from ``generators`` (one per sample), in this order.

    An objective with its own ``batch_loss`` (reward fine-tuning, which samples its videos from
    prompts) computes the micro-batch's loss itself, with the same arguments.
    """
    batch_loss = getattr(objective, "batch_loss", None)
    if batch_loss is not None:
        return batch_loss(spec, models, transformer, batch, mode, generators, device, autocast)
    inputs = spec.build_inputs(models, batch, mode, generators, device)
    return denoising_loss(spec, transformer, objective, inputs, generators, autocast)


def denoising_loss(
    spec: FamilySpec,
    transformer: nn.Module,
    objective: Objective,
    inputs: TrainInputs,
    generators: Sequence[torch.Generator],
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> torch.Tensor:
    """The objective's loss (a scalar) of ``transformer`` denoising ``inputs.latents``: per sample a noise level
    and the noise (drawn in that order), x_t (known frames kept clean and left out), the prediction, the loss."""
    device = inputs.latents.device
    timesteps = objective.sample_timesteps(generators).to(device)  # (B,)
    noise = objective.noise_like(inputs.latents, generators)
    noisy = keep_known(objective.noisy(inputs.latents, noise, timesteps), inputs)
    with autocast():
        prediction = spec.predict(transformer, noisy, objective.model_timesteps(timesteps), inputs)
    return objective.loss(prediction, inputs.latents, noise, timesteps, counted_elements(inputs))


def known_mask(inputs: TrainInputs) -> torch.Tensor | None:
    """(B, 1, F, 1, 1) bool: the latent frames the inputs give clean (an image to start from), or None."""
    if inputs.known_frames is None:
        return None
    return inputs.known_frames.to(inputs.latents.device)[:, None, :, None, None]


def keep_known(noisy: torch.Tensor, inputs: TrainInputs) -> torch.Tensor:
    """``noisy`` (B, z, F, h, w) with the known latent frames put back to the clean latents (not noised)."""
    known = known_mask(inputs)
    return noisy if known is None else torch.where(known, inputs.latents, noisy)


def counted_elements(inputs: TrainInputs) -> torch.Tensor | None:
    """What the loss counts (1 = counted): every element but the known frames' (None: all)."""
    known = known_mask(inputs)
    return None if known is None else ~known


def training_objective(spec: FamilySpec, models: FamilyModels, config: TrainConfig) -> Objective:
    """The objective the trainer steps: the family's own (``spec.objective``), or for ``--train_mode reward``
    the reward objective, which samples through the spec's reward hooks (:mod:`videox_fun.training.reward`)."""
    if config.train_mode == "reward":
        from .reward import RewardObjective

        return RewardObjective.from_config(spec, models, config)  # type: ignore[return-value]
    if config.distill:
        from .distill import DistillObjective

        return DistillObjective.from_config(spec, models, config)  # type: ignore[return-value]
    return spec.objective(models, config)
