"""Step distillation by distribution matching (DMD), VideoX-Fun's ``train_distill.py`` (issue #21).

Three copies of one transformer take part:

- the **generator** (the student, full or LoRA: the model the trainer steps) denoises in a few steps
  (by default at the training timesteps 1000, 750, 500, 250, under the model's flow shift: the grid of
  the ``Flow_Distill`` sampler) and keeps gradients only on a random *exit step*, whose clean estimate
  x0 is its sample (:func:`student_rollout`);
- the **teacher** ("real score", frozen, classifier-free guidance baked in) and the **critic** ("fake
  score", trained with its own learning rate to denoise the generator's samples) judge a re-noised x0:
  the generator's loss ``0.5 * |x0 - stopgrad(x0 - g)|^2`` has the gradient
  ``g = (x0_fake - x0_teacher) / mean |x0 - x0_teacher|`` (:func:`dmd_loss`), which moves the
  generator's distribution towards the teacher's;
- the generator is updated every ``--generator_update_ratio`` steps, the critic every step, by the
  family's own training objective on the generator's samples (:func:`~.objectives.denoising_loss`).

With ``--distill_regression_path`` the generator also learns, on its update steps, to turn a pair's noise into
the teacher's own sample from it (DMD's regression loss, :mod:`.teacher_pairs`): MSE between its x0 at the exit step
from that noise (text-to-video, the pair's prompt) and the teacher's final latents, weighted by
``--distill_regression_weight``.

The conditions are the family spec's for the training mode (``--train_mode inpaint`` gives an InP
student its first / last frames, ``control`` its control video): the student, the critic and the
teacher see the same ones; only the teacher's unconditional half swaps the text for the empty
prompt's. A LoRA student's teacher is the same model with its adapters switched off.

Two optional spec hooks let a family whose noise levels or guidance differ say so (the image families,
:mod:`.specs.image`): ``distill_schedule(flow, steps, inputs) -> (objective, rollout levels)`` when the
shift depends on the batch (a resolution-dependent shift: the levels its sampler visits at that size), and
``teacher_passes(models, inputs, batch, scale, device) -> (cond, uncond or None, CFG scale)`` when the
teacher's guidance is not "CFG at ``scale`` against the empty prompt" (embedded guidance: one pass), and
``guided_prediction(cond, uncond, scale)`` when its pipeline combines the two passes otherwise than
``uncond + scale (cond - uncond)`` (Qwen-Image renormalises the result).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import DEFAULT_DISTILL_REGRESSION_WEIGHT, DEFAULT_GENERATOR_UPDATE_RATIO
from .objectives import counted_elements, denoising_loss, keep_known, per_sample_mse

if TYPE_CHECKING:
    from .config import TrainConfig
    from .objectives import Objective
    from .specs import Device, FamilyModels, FamilySpec, TrainInputs
    from .teacher_pairs import TeacherPairs

# A regression micro-batch: (noise (B, ...), the teacher's final latents (B, ...), their prompts).
RegressionBatch = tuple[torch.Tensor, torch.Tensor, list[str]]

DEFAULT_DENOISING_STEPS = (1000, 750, 500, 250)
# A micro-batch of prompts alone (--distill_prompt_path): {"prompts": [...], "size": (frames, h, w), "index": (B,)}.
PROMPTS_KEY = "prompts"

Predict = Callable[[nn.Module, torch.Tensor, torch.Tensor, "TrainInputs"], torch.Tensor]


def draw_exit_step(seed: int, step: int, micro: int, num_steps: int) -> int:
    """The rollout step whose x0 keeps gradients, one per micro-batch: drawn from (seed, step, micro) alone, so
    every process (and a resumed run) draws the same one."""
    from .specs import choose, sample_generators

    return choose(sample_generators(seed, step, micro, [-1])[0], num_steps)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its peft LoRA adapters switched off (the base model: a LoRA student's teacher)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def student_rollout(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    objective: Objective,
    inputs: TrainInputs,
    exit_step: int,
) -> torch.Tensor:
    """The generator's sample: x0 (B, z, F', h, w) estimated at step ``exit_step`` of the rollout from ``noise``.

    predict(x_t, model timesteps (B,)) -> the prediction; timesteps: (K,) noise levels in the objective's
    units. Steps before the exit run without gradients and move on deterministically (Euler for flow
    matching, DDIM for v-prediction: x0 and the implied noise re-noised to the next level), the way the
    student samples at inference; known latent frames stay clean.
    """
    latents = keep_known(noise, inputs)
    b = noise.shape[0]
    for step in range(exit_step + 1):
        level = timesteps[step].expand(b).to(noise.device)  # (B,)
        with torch.set_grad_enabled(step == exit_step and torch.is_grad_enabled()):
            prediction = predict(latents, objective.model_timesteps(level)).float()
            clean, implied_noise = objective.split_prediction(latents, prediction, level)
        if step == exit_step:
            return clean
        following = timesteps[step + 1].expand(b).to(noise.device)
        latents = keep_known(objective.noisy(clean, implied_noise, following), inputs)
    raise ValueError(f"exit step {exit_step} lies beyond the {len(timesteps)} rollout steps")


def dmd_gradient(
    sample: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, counted: torch.Tensor | None
) -> torch.Tensor:
    """(x0_fake - x0_teacher) / mean |x0 - x0_teacher| per sample (over the counted elements), finite."""
    distance = (sample - real).abs()
    if counted is None:
        normaliser = distance.flatten(1).mean(dim=1)
    else:
        weights = counted.float().expand_as(distance)
        normaliser = (distance * weights).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1).clamp_min(1.0)
    normaliser = normaliser.clamp_min(1e-6).view(-1, *([1] * (sample.dim() - 1)))  # (B, 1, ..., 1)
    return torch.nan_to_num((fake - real) / normaliser)


def dmd_loss(sample: torch.Tensor, gradient: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
    """0.5 * MSE(x0, stopgrad(x0 - g)): a loss whose gradient in x0 is g / (elements), averaged over samples."""
    target = (sample - gradient).detach()
    return 0.5 * per_sample_mse(sample, target, counted).mean()


def fit_context(context: torch.Tensor, length: int) -> torch.Tensor:
    """A text context (..., L, C) cut or zero-padded to ``length`` tokens (the empty prompt's beside a batch's)."""
    if context.shape[-2] >= length:
        return context[..., :length, :]
    pad = context.new_zeros(*context.shape[:-2], length - context.shape[-2], context.shape[-1])
    return torch.cat([context, pad], dim=-2)


@dataclass
class DistillObjective:
    """DMD's losses of one micro-batch (the trainer owns the three models and their optimizers).

    flow: the family's objective (noise levels, re-noising, the critic's loss); timesteps: (K,) the rollout's
    noise levels; guidance_scale: the teacher's CFG; empty_context: the empty prompt's text (L, C) for the
    teacher's unconditional half, made once when batches do not carry it (cached batches do).
    """

    flow: Objective
    timesteps: torch.Tensor
    generator_update_ratio: int
    guidance_scale: float
    empty_context: torch.Tensor | None = None
    steps: Sequence[int] = DEFAULT_DENOISING_STEPS  # the rollout's training timesteps in (0, 1000]
    pairs: TeacherPairs | None = None  # --distill_regression_path
    regression_weight: float = DEFAULT_DISTILL_REGRESSION_WEIGHT

    @classmethod
    def from_config(cls, spec: FamilySpec, models: FamilyModels, config: TrainConfig) -> DistillObjective:
        """The objective ``config`` asks for; the teacher's guidance defaults to the model's own."""
        flow = spec.objective(models, config)
        steps = config.denoising_step_list or list(DEFAULT_DENOISING_STEPS)
        guidance = config.real_guidance_scale
        if guidance is None:
            guidance = float(models.settings.defaults.guidance_scale)
        ratio = config.generator_update_ratio or DEFAULT_GENERATOR_UPDATE_RATIO
        objective = cls(flow, flow.rollout_timesteps(steps), ratio, guidance, steps=tuple(steps))
        if config.distill_regression_path is not None:
            objective.pairs = regression_pairs(spec, models, config.distill_regression_path)
            if config.distill_regression_weight is not None:
                objective.regression_weight = config.distill_regression_weight
        return objective

    @property
    def num_steps(self) -> int:
        """Denoising steps of the student."""
        return len(self.timesteps)

    def updates_generator(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) updates the generator (every ``generator_update_ratio``)."""
        return step % self.generator_update_ratio == 0

    def regression_batch(self, seed: int, step: int, micro: int, positions: range) -> RegressionBatch | None:
        """The teacher pairs of a micro-batch (one seeded draw per global batch position, at -1000 - position: apart
        from the other draws, the same after a resume), or None without ``--distill_regression_path``."""
        from .specs import choose, sample_generators

        if self.pairs is None:
            return None
        generators = sample_generators(seed, step, micro, [-1000 - position for position in positions])
        return self.pairs.batch([choose(generator, len(self.pairs)) for generator in generators])

    def schedule(self, spec: FamilySpec, inputs: TrainInputs) -> tuple[Objective, torch.Tensor]:
        """The objective and the rollout's noise levels (K,) of a micro-batch: the run's, unless the spec makes them
        per batch (``distill_schedule``: a shift that follows the batch's resolution)."""
        hook = getattr(spec, "distill_schedule", None)
        return (self.flow, self.timesteps) if hook is None else hook(self.flow, self.steps, inputs)

    def teacher_passes(
        self, spec: FamilySpec, models: FamilyModels, inputs: TrainInputs, batch: dict, device: Device
    ) -> tuple[TrainInputs, TrainInputs | None, float]:
        """(the teacher's conditional inputs, its unconditional ones or None for one pass, the CFG scale): the spec's
        (``teacher_passes``) when it has its own guidance, else CFG at ``guidance_scale`` against the empty prompt."""
        hook = getattr(spec, "teacher_passes", None)
        if hook is not None:
            return hook(models, inputs, batch, self.guidance_scale, device)
        return inputs, self.unconditional(spec, models, inputs, batch, device), self.guidance_scale

    @staticmethod
    def guided(spec: FamilySpec, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """The teacher's guided prediction from its two passes: the spec's combination (``guided_prediction``), else
        classifier-free guidance ``uncond + scale (cond - uncond)``."""
        hook = getattr(spec, "guided_prediction", None)
        return uncond + scale * (cond - uncond) if hook is None else hook(cond, uncond, scale)

    def unconditional(
        self, spec: FamilySpec, models: FamilyModels, inputs: TrainInputs, batch: dict, device: Device
    ) -> TrainInputs:
        """The inputs with the text swapped for the empty prompt's (the teacher's unconditional half): a cached
        batch carries it; otherwise the text encoder makes it once."""
        context = inputs.conditions["context"]  # (B, L, C)
        empty = batch.get("empty_context")
        if empty is None:
            if self.empty_context is None:
                self.empty_context = spec.empty_context(models, device)  # (L, C)
            empty = self.empty_context.expand(context.shape[0], -1, -1)
        empty = fit_context(empty.to(context), context.shape[1])
        return replace(inputs, conditions={**inputs.conditions, "context": empty})

    def batch_losses(
        self,
        spec: FamilySpec,
        models: FamilyModels,
        generator: nn.Module,
        critic: nn.Module,
        teacher: nn.Module | None,
        batch: dict,
        mode: str,
        generators: Sequence[torch.Generator],
        device: Device,
        exit_step: int,
        update_generator: bool,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
        regression: RegressionBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"critic": its denoising loss on the generator's samples} and, when ``update_generator``,
        {"generator": the DMD loss, plus the weighted regression onto ``regression``'s teacher samples when given};
        scalars (fp32) whose gradients reach only their own model.

        teacher: None means the generator with its LoRA adapters off. Draws, in order: the spec's inputs, the
        rollout noise, then (generator step) the DMD noise level and noise, then the critic's.
        """
        if PROMPTS_KEY in batch:
            inputs = prompt_inputs(spec, models, batch[PROMPTS_KEY], batch["size"], device)
        else:
            inputs = spec.build_inputs(models, batch, mode, generators, device)
        flow, timesteps = self.schedule(spec, inputs)
        counted = counted_elements(inputs)
        noise = flow.noise_like(inputs.latents, generators)

        with torch.set_grad_enabled(update_generator):
            sample = student_rollout(predictor(spec, generator, inputs, autocast), noise, timesteps, flow, inputs,
                                     exit_step)  # fmt: skip
            sample = keep_known(sample, inputs)  # the given frames are the data's, not the student's estimate
        losses = {}
        if update_generator:
            passes = self.teacher_passes(spec, models, inputs, batch, device)
            losses["generator"] = self._generator_loss(
                spec, flow, sample, inputs, passes, generator, critic, teacher, generators, counted, autocast
            )
            if regression is not None:
                regressed = self.regression_loss(spec, models, generator, regression, exit_step, device, autocast)
                losses["generator"] = losses["generator"] + self.regression_weight * regressed
        generated = replace(inputs, latents=sample.detach().to(inputs.latents.dtype))
        losses["critic"] = denoising_loss(spec, critic, flow, generated, generators, autocast)
        return losses

    def regression_loss(
        self,
        spec: FamilySpec,
        models: FamilyModels,
        generator: nn.Module,
        regression: RegressionBatch,
        exit_step: int,
        device: Device,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> torch.Tensor:
        """MSE between the generator's x0 at ``exit_step`` of its rollout from the pairs' noise (text to video, their
        prompts) and the teacher's final latents from that noise, averaged over the pairs (fp32)."""
        noise, target, prompts = regression
        assert self.pairs is not None  # a regression batch is drawn from the pairs
        inputs = prompt_inputs(spec, models, prompts, self.pairs.size, device)
        flow, timesteps = self.schedule(spec, inputs)
        noise = noise.to(device, inputs.latents.dtype)
        sample = student_rollout(predictor(spec, generator, inputs, autocast), noise, timesteps, flow, inputs,
                                 exit_step)  # fmt: skip
        return per_sample_mse(sample.float(), target.to(device).float(), None).mean()

    def _generator_loss(
        self,
        spec: FamilySpec,
        flow: Objective,
        sample: torch.Tensor,
        inputs: TrainInputs,
        passes: tuple[TrainInputs, TrainInputs | None, float],
        generator: nn.Module,
        critic: nn.Module,
        teacher: nn.Module | None,
        generators: Sequence[torch.Generator],
        counted: torch.Tensor | None,
        autocast: Callable[[], AbstractContextManager[Any]],
    ) -> torch.Tensor:
        """DMD: re-noise the sample to a drawn level, compare the critic's and the (guided) teacher's x0.

        passes: the teacher's (conditional inputs, unconditional inputs or None, CFG scale) (:meth:`teacher_passes`).
        """
        conditional, unconditional, scale = passes
        with torch.no_grad():
            levels = flow.sample_timesteps(generators).to(sample.device)  # (B,)
            noise = flow.noise_like(sample, generators)
            noisy = replace(inputs, latents=keep_known(flow.noisy(sample.detach(), noise, levels), inputs))
            model_t = flow.model_timesteps(levels)
            with autocast():
                fake = spec.predict(critic, noisy.latents, model_t, noisy).float()
                with self._teacher(generator, teacher) as real_model:
                    cond = replace(conditional, latents=noisy.latents)
                    real = spec.predict(real_model, noisy.latents, model_t, cond).float()
                    if unconditional is not None:
                        uncond = replace(unconditional, latents=noisy.latents)
                        real_uncond = spec.predict(real_model, noisy.latents, model_t, uncond).float()
            if unconditional is not None:
                real = self.guided(spec, real, real_uncond, scale)
            fake_x0 = flow.split_prediction(noisy.latents, fake, levels)[0]
            real_x0 = flow.split_prediction(noisy.latents, real, levels)[0]
            gradient = dmd_gradient(sample.detach().float(), fake_x0, real_x0, counted)
        return dmd_loss(sample.float(), gradient, counted)

    @staticmethod
    @contextmanager
    def _teacher(generator: nn.Module, teacher: nn.Module | None) -> Iterator[nn.Module]:
        """The frozen teacher, or the (unwrapped) LoRA generator with its adapters off."""
        if teacher is not None:
            yield teacher
            return
        with adapters_disabled(getattr(generator, "module", generator)) as base:
            yield base


def predictor(
    spec: FamilySpec, model: nn.Module, inputs: TrainInputs, autocast: Callable[[], AbstractContextManager[Any]]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """predict(latents, model timesteps) of ``model`` under ``inputs``' conditions (a rollout's model call)."""

    def predict(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        with autocast():
            return spec.predict(model, latents, timesteps, replace(inputs, latents=latents))

    return predict


def regression_pairs(spec: FamilySpec, models: FamilyModels, path: str) -> TeacherPairs:
    """The teacher pairs of ``--distill_regression_path``, checked against the model: the spec builds text-to-video
    inputs from prompts, and the pairs' latents have the shape of videos of their size."""
    from .teacher_pairs import TeacherPairs

    if not hasattr(spec, "reward_latent_shape"):
        raise ValueError(f"--distill_regression_path: the {spec.name} spec cannot build text-to-video inputs")
    pairs = TeacherPairs.load(path)
    expected = tuple(spec.reward_latent_shape(models, len(pairs), pairs.size))
    if tuple(pairs.noise.shape) != expected:
        raise ValueError(
            f"--distill_regression_path {path}: latents {tuple(pairs.noise.shape)[1:]} are not this model's for "
            f"videos of {pairs.size} (frames, height, width): {expected[1:]}; make the pairs with this model"
        )
    return pairs


# -- prompt-only batches (--distill_prompt_path) -------------------------------------------
def draws_prompts(seed: int, step: int, micro: int, share: float) -> bool:
    """Whether micro-batch ``micro`` of ``step`` is drawn from the prompts: a seeded draw (the same on every process
    and after a resume; position -2, beside the exit step's -1) that is true for ``share`` of the micro-batches."""
    from .specs import sample_generators, uniform

    return uniform(sample_generators(seed, step, micro, [-2])[0]) < share


def prompt_batch(
    prompts: Sequence[str], seed: int, step: int, micro: int, positions: range, size: tuple[int, int, int]
) -> dict[str, Any]:
    """The prompts of a prompt-only micro-batch: one seeded draw per global batch position (this process's
    ``positions``; drawn at -3 - position, apart from the samples' own generators), the same after a resume;
    ``size`` (frames, height, width) of the videos the student makes."""
    from .specs import choose, sample_generators

    generators = sample_generators(seed, step, micro, [-3 - position for position in positions])
    chosen = [prompts[choose(generator, len(prompts))] for generator in generators]
    return {PROMPTS_KEY: chosen, "size": size, "index": torch.tensor(list(positions))}


def prompt_inputs(
    spec: FamilySpec, models: FamilyModels, prompts: list[str], size: tuple[int, int, int], device: Device
) -> TrainInputs:
    """Text-to-video inputs of ``prompts`` alone: their contexts and the variant's t2v conditions as ``generate``
    builds them (the spec's reward hooks), and zero latents of the videos' shape (the rollout starts from noise;
    DMD needs no clean video: the teacher and the critic judge the student's own samples)."""
    from .specs import TrainInputs

    if not hasattr(spec, "reward_conditions"):
        raise ValueError(f"--distill_prompt_path: the {spec.name} spec cannot build text-to-video inputs from prompts")
    conditions, _ = spec.reward_conditions(models, prompts, "", size, device)
    shape = spec.reward_latent_shape(models, len(prompts), size)
    return TrainInputs(torch.zeros(shape, device=device), conditions)
