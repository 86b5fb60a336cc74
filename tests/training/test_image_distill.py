"""Step distillation (DMD, ``--distill``) of the image families through the generic trainer and their specs.

On tiny Z-Image (base: a CFG teacher) and FLUX.1-dev (embedded guidance) runs: the generator learns on the steps
``--generator_update_ratio`` names and the critic on every step (counted from the weights each checkpoint holds); a
run stopped at 2 steps and resumed to 4 is the uninterrupted one (max diff 0); the written student (full folder or
LoRA file) sampled by ``videox-fun generate``'s pipeline at 4 steps without guidance ends where the student's rollout
ends; a run from the latent cache is the run from the images (Qwen-Image). For every family: the rollout's noise
levels are those of diffusers' FlowMatchEulerDiscreteScheduler (and of our Flow_Distill scheduler) on the 4-step grid
under the family's shift at the batch's resolution, and the rollout is Euler-stepping that scheduler; the teacher
with its guidance baked in is the pipeline's guided prediction.

``pytest tests/training/test_image_distill.py -s`` prints the measured figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from helpers import max_diff, state_dict_max_diff
from image_helpers import IMAGE_FAST, TRANSFORMERS, trained_transformer, write_image_dataset
from safetensors.torch import load_file
from test_distill import changed_per_step
from test_image_cache import lean_copy

from videox_fun.api import RuntimeOptions, load_pipeline
from videox_fun.models.flux.tiny import build_tiny_flux_folder
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.pipelines.common import seeded_noise
from videox_fun.pipelines.schedulers import FlowDistillScheduler
from videox_fun.training.cache import build_cache
from videox_fun.training.checkpoint import TRAINABLE_FILE
from videox_fun.training.config import TrainConfig
from videox_fun.training.distill import DEFAULT_DENOISING_STEPS, DistillObjective, student_rollout
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.trainer import TrainResult, train

# family: (builder, variant). Z-Image "base" (guidance 4: a CFG teacher), FLUX.1-dev and FLUX.2 (embedded guidance),
# Qwen-Image (true CFG 4, a terminal shift).
BUILDS = {"zimage": (build_tiny_zimage_folder, "base"), "flux": (build_tiny_flux_folder, "dev"),
          "qwenimage": (build_tiny_qwenimage_folder, "t2i"), "flux2": (build_tiny_flux2_folder, "dev")}  # fmt: skip
# The student's "no guidance" at generate: Z-Image's 0, the others' 1 (FLUX: the embedded value it trained at).
STUDENT_GUIDANCE = {"zimage": 0.0, "flux": 1.0, "qwenimage": 1.0, "flux2": 1.0}
# Image tokens of an (h, w) latent grid, as diffusers' pipelines count them (the packed sequence length).
TOKENS: dict[str, Callable[[int, int], int]] = {"flux": lambda h, w: (h // 2) * (w // 2),
                                                "qwenimage": lambda h, w: (h // 2) * (w // 2),
                                                "flux2": lambda h, w: h * w}  # fmt: skip
PROMPT, SIZE, SEED = "a red square", 48, 7
DISTILL = dict(distill=True, text_drop_ratio=0.0)
WEIGHTS = {False: "transformer/diffusion_pytorch_model.safetensors", True: "lora.safetensors"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny folders by family, built once per module (named by variant: Z-Image reads "turbo" off the name)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            build, variant = BUILDS[family]
            built[family] = build(tmp_path_factory.mktemp(family) / f"{family}-{variant}", variant, seed=3)
        return built[family]

    return get


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four images in two aspect ratios (32x64, 48x48)."""
    return write_image_dataset(tmp_path_factory.mktemp("images"))


def distill_config(folder: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    """A --distill run of ``folder`` on ``data`` into ``out``."""
    values = {**IMAGE_FAST, "pretrained_model_name_or_path": str(folder), "train_data_meta": str(data),
              "output_dir": str(out), **DISTILL, **overrides}  # fmt: skip
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def runs(folders, image_data, tmp_path_factory) -> Callable[[str, bool], tuple[TrainConfig, TrainResult]]:
    """7 steps of distillation (generator every 3rd, a checkpoint every step) per (family, LoRA), run once."""
    done: dict[tuple[str, bool], tuple[TrainConfig, TrainResult]] = {}

    def get(family: str, lora: bool) -> tuple[TrainConfig, TrainResult]:
        if (family, lora) not in done:
            config = distill_config(folders(family), image_data, tmp_path_factory.mktemp("run") / "out",
                                    use_lora=lora, rank=4, network_alpha=4.0, max_train_steps=7,
                                    generator_update_ratio=3, checkpointing_steps=1, learning_rate=1e-2)  # fmt: skip
            done[family, lora] = config, train(config)
        return done[family, lora]

    return get


def spec_and_inputs(config: TrainConfig, transformer: torch.nn.Module | None = None) -> tuple[Any, Any, Any]:
    """(spec, models, inputs of one SIZE x SIZE image captioned PROMPT), ``transformer`` in the models if given."""
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    if transformer is not None:
        models.transformer = transformer
    batch = {"pixel_values": torch.zeros(1, 3, 1, SIZE, SIZE), "text": [PROMPT]}
    return spec, models, spec.build_inputs(models, batch, "normal", sample_generators(0, 0, 0, [0]), "cpu")


def noise_of(spec: Any, inputs: Any) -> torch.Tensor:
    """The pipeline's seeded noise (1, C, 1, h, w) for the inputs' latent shape."""
    _, channels, _, h, w = inputs.latents.shape
    return seeded_noise((1, channels, h, w), SEED, "cpu")[:, :, None]


def rollout(spec: Any, models: Any, config: TrainConfig, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(the student's x0 after the whole 4-step rollout from the seeded noise, the rollout's noise levels)."""
    objective = DistillObjective.from_config(spec, models, config)
    flow, levels = objective.schedule(spec, inputs)

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return spec.predict(models.transformer, latents, t, replace(inputs, latents=latents))

    noise = noise_of(spec, inputs)
    with torch.no_grad():
        return student_rollout(predict, noise, levels, flow, replace(inputs, latents=noise), len(levels) - 1), levels


# ----------------------------------------------------------------------------------------
# Through the trainer
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "lora"), [("zimage", True), ("flux", False)])
def test_generator_and_critic_updates_follow_their_schedule(runs, family, lora):
    config, result = runs(family, lora)
    out, steps, ratio = Path(config.output_dir), config.max_train_steps, config.generator_update_ratio
    generator = changed_per_step(out, steps, TRAINABLE_FILE.format(0))
    critic = changed_per_step(out, steps, TRAINABLE_FILE.format(1))
    print(f"{family} {'LoRA' if lora else 'full'}: generator changed at checkpoints {generator}, critic {critic}; "
          f"critic losses {[round(v, 4) for v in result.losses]}, generator {result.generator_losses}")  # fmt: skip
    # step n (1-based) is optimizer step n - 1: the generator learns on 0, 3, 6 -> checkpoints 1, 4, 7
    assert generator == [(n - 1) % ratio == 0 for n in range(2, steps + 1)]
    assert critic == [True] * (steps - 1) and sorted(result.generator_losses) == [1, 4, 7]
    assert all(np.isfinite(result.losses)) and all(np.isfinite(list(result.generator_losses.values())))


@pytest.mark.parametrize(("family", "lora"), [("zimage", False), ("flux", True)])
def test_a_resumed_distillation_is_the_uninterrupted_one(folders, image_data, tmp_path, family, lora):
    def run(name: str, steps: int, **more: Any) -> TrainResult:
        config = distill_config(folders(family), image_data, tmp_path / name / "out", use_lora=lora, rank=4,
                                network_alpha=4.0, max_train_steps=steps, checkpointing_steps=2,
                                generator_update_ratio=2, learning_rate=1e-2 if lora else 1e-3, **more)  # fmt: skip
        return train(config)

    whole, first = run("whole", 4), run("split", 2)
    rest = run("split", 4, resume_from_checkpoint="latest")
    weights = [load_file(str(tmp_path / name / "out" / WEIGHTS[lora])) for name in ("whole", "split")]
    gap = state_dict_max_diff(*weights)
    print(f"{family} {'LoRA' if lora else 'full'} distillation: stopped at 2, resumed to 4 vs 4 straight: weights "
          f"max diff {gap:.1e}; critic losses {first.losses + rest.losses} vs {whole.losses}")  # fmt: skip
    assert first.losses + rest.losses == whole.losses and gap == 0.0
    assert {**first.generator_losses, **rest.generator_losses} == whole.generator_losses
    assert sorted(whole.generator_losses) == [1, 3]


@pytest.mark.parametrize(("family", "lora"), [("zimage", True), ("flux", False)])
def test_the_written_student_samples_its_rollout_with_generate(runs, folders, family, lora):
    """``generate --steps 4 --guidance <none>`` with the written student (``--lora-path`` / ``--transformer-path``)
    ends where the student's 4-step rollout ends, from the same noise."""
    config, result = runs(family, lora)
    student = trained_transformer(family, folders(family), result)
    spec, models, inputs = spec_and_inputs(config, student)
    ours, _ = rollout(spec, models, config, inputs)
    written = {"lora_path": [str(result.lora_path)]} if lora else {"transformer_path": result.transformer_dir}
    loaded = load_pipeline(str(folders(family)), RuntimeOptions(device="cpu", **written))
    out = loaded.pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=len(DEFAULT_DENOISING_STEPS),
                      guidance_scale=STUDENT_GUIDANCE[family], seed=SEED, progress=False)  # fmt: skip
    loaded.close()
    base = TRANSFORMERS[family].from_pretrained(folders(family) / "transformer")
    moved = state_dict_max_diff(student.state_dict(), base.state_dict())
    gap = max_diff(out.latents, ours)
    print(f"{family} {'LoRA' if lora else 'full'} student (weights moved up to {moved:.1e}): generate (4 steps, "
          f"guidance {STUDENT_GUIDANCE[family]}) vs the rollout, final latents max diff {gap:.1e} (of "
          f"{ours.abs().max():.2f})")  # fmt: skip
    assert moved > 0 and out.latents.shape == ours.shape and gap <= 1e-5


def test_distillation_from_the_latent_cache_is_the_one_from_the_images(folders, image_data, tmp_path):
    """Qwen-Image (a CFG teacher): its empty prompt comes from the cache, on a folder copy without text encoders or
    VAE weights; 3 steps, the generator on each: the same losses and weights (max diff 0)."""
    settings = dict(max_train_steps=3, generator_update_ratio=1, cache_dir=str(tmp_path / "cache"))
    build_cache(distill_config(folders("qwenimage"), image_data, tmp_path / "build", **settings))
    decoded = train(distill_config(folders("qwenimage"), image_data, tmp_path / "decoded", **settings))
    lean = lean_copy(folders("qwenimage"), tmp_path / "lean", keep_vae=False)
    cached = train(distill_config(lean, image_data, tmp_path / "cached", use_cached_latents=True, **settings))
    gap = state_dict_max_diff(*(load_file(str(run.output_dir / WEIGHTS[False])) for run in (decoded, cached)))
    print(f"qwenimage distillation from the cache vs from the images, 3 steps: weights max diff {gap:.1e}; critic "
          f"losses {cached.losses} vs {decoded.losses}")  # fmt: skip
    assert cached.losses == decoded.losses and cached.generator_losses == decoded.generator_losses and gap == 0.0


# ----------------------------------------------------------------------------------------
# The rollout's grid and the teacher
# ----------------------------------------------------------------------------------------
def diffusers_scheduler(family: str, scheduler_config: dict, h: int, w: int) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' scheduler of the folder's config on the Flow_Distill 4-step grid (linspace(1, 0, 5)[:4]), shifted as
    diffusers' pipeline of the family shifts it at an (h, w) latent grid."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    steps = len(DEFAULT_DENOISING_STEPS)
    mu = None
    if family == "flux2":
        mu = compute_empirical_mu(TOKENS[family](h, w), steps)
    elif family in TOKENS:
        c = scheduler.config
        mu = calculate_shift(TOKENS[family](h, w), c.base_image_seq_len, c.max_image_seq_len, c.base_shift,
                             c.max_shift)  # fmt: skip
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:steps], mu=mu)
    return scheduler, mu


@pytest.mark.parametrize("family", sorted(BUILDS))
def test_the_rollout_is_euler_on_diffusers_flow_distill_grid(folders, image_data, tmp_path, family):
    config = distill_config(folders(family), image_data, tmp_path / "out")
    spec, models, inputs = spec_and_inputs(config)
    ours, levels = rollout(spec, models, config, inputs)
    _, _, _, h, w = inputs.latents.shape
    scheduler, mu = diffusers_scheduler(family, spec.pipe.scheduler_config, h, w)
    distill = FlowDistillScheduler.from_config(spec.pipe.scheduler_config)  # ours, as generate --sampler would build it
    distill.set_timesteps(len(levels), mu=mu)
    latents = noise_of(spec, inputs)
    with torch.no_grad():
        for t in scheduler.timesteps:
            velocity = spec.predict(models.transformer, latents, t.expand(1), replace(inputs, latents=latents))
            latents = scheduler.step(velocity, t, latents).prev_sample
    level_gap, distill_gap = max_diff(levels, scheduler.sigmas[:-1]), max_diff(levels, distill.sigmas[:-1])
    gap = max_diff(ours, latents)
    print(f"{family} ({h}x{w} latents, mu {mu}): rollout levels {[round(v, 4) for v in levels.tolist()]} vs "
          f"diffusers' max diff {level_gap:.1e} (our Flow_Distill {distill_gap:.1e}); x0 after 4 steps vs Euler "
          f"stepping diffusers' scheduler max diff {gap:.1e} (of {latents.abs().max():.2f})")  # fmt: skip
    assert level_gap == 0.0 and distill_gap == 0.0 and gap <= 1e-5


@pytest.mark.parametrize("family", ["zimage", "qwenimage", "flux", "flux2"])
def test_the_teacher_is_the_pipelines_guided_prediction(folders, image_data, tmp_path, family):
    """The teacher's guided velocity at sigma 1 is the one the family's pipeline steps with at the teacher's guidance
    (the folder's default: Z-Image CFG g 4, Qwen-Image true CFG 4 renormalised per token, FLUX.1-dev embedded 3.5,
    FLUX.2 embedded 4),
    negative prompt "": its first Euler step (of two: Qwen-Image's terminal shift refuses one) lands where that
    velocity leads."""
    config = distill_config(folders(family), image_data, tmp_path / "out")
    spec, models, inputs = spec_and_inputs(config)
    objective = DistillObjective.from_config(spec, models, config)
    cond, uncond, scale = objective.teacher_passes(spec, models, inputs, {"text": [PROMPT]}, "cpu")
    noise, t = noise_of(spec, inputs), torch.full((1,), 1000.0)
    with torch.no_grad():
        real = spec.predict(models.transformer, noise, t, replace(cond, latents=noise))
        if uncond is not None:
            real_uncond = spec.predict(models.transformer, noise, t, replace(uncond, latents=noise))
            real = objective.guided(spec, real, real_uncond, scale)
    _, _, _, h, w = noise.shape
    second = float(spec.sampler_sigmas([1000, 500], spec.pipe.token_count(h, w))[1])  # the pipeline's 2-step grid
    loaded = load_pipeline(str(folders(family)), RuntimeOptions(device="cpu"))
    first: list[torch.Tensor] = []
    loaded.pipe(PROMPT, negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=2,
                guidance_scale=objective.guidance_scale, seed=SEED, progress=False,
                callback=lambda step, _, latents: first.append(latents) if step == 0 else None)  # fmt: skip
    stepped = loaded.pipe.unpack(first[0], h, w)[:, :, None]  # (1, C, 1, h, w)
    loaded.close()
    gap = max_diff(stepped, noise + (second - 1.0) * real)
    passes = 1 if uncond is None else 2
    print(f"{family}: teacher at guidance {objective.guidance_scale} ({passes} pass(es), CFG scale {scale}) vs the "
          f"pipeline's first step max diff {gap:.1e}")  # fmt: skip
    assert gap <= 1e-5
    assert (passes, scale) == {"zimage": (2, 5.0), "qwenimage": (2, 4.0), "flux": (1, 1.0), "flux2": (1, 1.0)}[family]
    if family.startswith("flux"):  # embedded guidance: the teacher at the folder's, the student at 1
        teacher = {"flux": 3.5, "flux2": 4.0}[family]
        assert cond.conditions["guidance"].tolist() == [teacher] and inputs.conditions["guidance"].tolist() == [1.0]


def test_what_image_distillation_does_not_offer_is_one_line(image_data, tmp_path):
    schnell = build_tiny_flux_folder(tmp_path / "schnell", "schnell", seed=3)
    with pytest.raises(ValueError, match=r"FLUX\.1-schnell has no guidance .*leave out --real_guidance_scale"):
        train(distill_config(schnell, image_data, tmp_path / "a", real_guidance_scale=3.0, max_train_steps=1))
    zimage = build_tiny_zimage_folder(tmp_path / "control" / "turbo-control", "turbo-control", seed=3)
    with pytest.raises(ValueError, match=r"--distill makes a few-step Z-Image transformer .*leave out one of them"):
        train(distill_config(zimage, image_data, tmp_path / "b", train_mode="control", max_train_steps=1))
