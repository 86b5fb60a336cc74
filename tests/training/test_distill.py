"""Step distillation (DMD, ``--distill``) through the generic trainer on tiny Wan configs.

The student's rollout keeps gradients on exactly its exit step; the generator is updated on the steps its
schedule names and the critic on every step (counted from the weights each checkpoint holds); a resumed run
is the uninterrupted one; every variant keeps its conditions; the student samples with the ``Flow_Distill``
grid it was trained on; bad settings are one line.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import REPO, check_resume_matches_uninterrupted, subprocess_env

from videox_fun.pipelines.schedulers import make_scheduler
from videox_fun.serve.process import free_port
from videox_fun.training.checkpoint import TRAINABLE_FILE
from videox_fun.training.distill import (
    DEFAULT_DENOISING_STEPS,
    adapters_disabled,
    dmd_gradient,
    dmd_loss,
    draw_exit_step,
    draws_prompts,
    fit_context,
    prompt_batch,
    prompt_inputs,
    student_rollout,
)
from videox_fun.training.lora import add_lora
from videox_fun.training.objectives import FlowMatching, VPrediction
from videox_fun.training.reward import sample_size
from videox_fun.training.specs import TrainInputs, get_spec
from videox_fun.training.trainer import train

SCRIPT = REPO / "scripts" / "wan2.1_fun" / "train_distill.py"
DISTILL = dict(distill=True, text_drop_ratio=0.0)


def distill_config(make_config, tmp_path: Path, variant: str = "t2v", mode: str = "normal", **overrides):
    """A --distill config on a tiny folder of ``variant`` and the small dataset."""
    return make_config(variant, train_mode=mode, output_dir=str(tmp_path / "out"), **{**DISTILL, **overrides})


# -- the rollout and the loss ------------------------------------------------------------------
def test_the_rollout_keeps_gradients_on_the_exit_step_alone():
    flow = FlowMatching(shift=3.0)
    timesteps = flow.rollout_timesteps(DEFAULT_DENOISING_STEPS)
    weight = torch.nn.Parameter(torch.tensor(0.5))
    noise = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    inputs = TrainInputs(noise)
    calls: list[tuple[float, bool]] = []

    def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((float(t[0]), torch.is_grad_enabled()))
        return weight * latents

    for exit_step in range(len(timesteps)):
        calls.clear()
        sample = student_rollout(predict, noise, timesteps, flow, inputs, exit_step)
        assert [grad for _, grad in calls] == [False] * exit_step + [True]
        assert [t for t, _ in calls] == pytest.approx((timesteps[: exit_step + 1] * 1000).tolist())
        (grad,) = torch.autograd.grad(sample.sum(), weight)
        assert grad.abs() > 0


@pytest.mark.parametrize("steps", [DEFAULT_DENOISING_STEPS, (1000, 700, 400, 100)], ids=["uniform", "custom"])
def test_the_rollout_is_the_flow_distill_sampler(steps):
    """Euler on the Flow_Distill grid (what ``generate --steps 4 --sampler Flow_Distill`` runs, with
    ``--distill-timesteps`` for a student of other timesteps) ends where the rollout's last x0 is, for the same
    velocity."""
    flow = FlowMatching(shift=3.0)
    timesteps = flow.rollout_timesteps(steps)
    custom = None if steps == DEFAULT_DENOISING_STEPS else steps
    scheduler = make_scheduler("Flow_Distill", 3.0, distill_timesteps=custom)
    scheduler.set_timesteps(4)
    assert scheduler.sigmas[:-1].tolist() == pytest.approx(timesteps.tolist())

    def velocity(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(latents) * (t.view(-1, 1, 1, 1, 1) / 1000)

    noise = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    rolled = student_rollout(velocity, noise, timesteps, flow, TrainInputs(noise), 3)
    latents = noise.clone()
    for t in scheduler.timesteps:
        latents = scheduler.step(velocity(latents, t.expand(1)), t, latents).prev_sample
    assert (rolled - latents).abs().max() < 1e-5


def test_v_prediction_rollout_steps_are_ddim():
    """For a v-prediction family the implied (x0, noise) re-noised at the next level is the DDIM step."""
    from videox_fun.training.objectives import make_ddpm_scheduler

    betas = make_ddpm_scheduler({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"})
    objective = VPrediction(alphas_cumprod=betas.alphas_cumprod.clone())
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([700, 300])
    noisy = objective.noisy(x0, noise, t)
    clean, implied = objective.split_prediction(noisy, objective.target(x0, noise, t), t)
    assert (clean - x0).abs().max() < 1e-5 and (implied - noise).abs().max() < 1e-5
    assert objective.rollout_timesteps(DEFAULT_DENOISING_STEPS).tolist() == [999, 749, 499, 249]


def test_the_dmd_gradient_and_loss():
    sample = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    real = torch.tensor([[0.0, 2.0, 3.0, 5.0], [0.0, 1.0, 1.0, 1.0]])
    fake = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    gradient = dmd_gradient(sample.detach(), fake, real, None)
    expected = (fake - real) / torch.tensor([[0.5], [0.25]])  # mean |x0 - real| per sample
    assert torch.equal(gradient, expected)
    dmd_loss(sample, gradient, None).backward()
    assert torch.allclose(sample.grad, gradient / sample[0].numel() / 2)  # 0.5 MSE, mean over samples
    counted = torch.tensor([[True, True, False, False], [True, True, True, True]])
    only = dmd_gradient(sample.detach(), fake, real, counted)
    assert only[0].tolist() == pytest.approx(((fake[0] - real[0]) / 0.5).tolist())


def test_draws_and_contexts():
    assert draw_exit_step(0, 3, 0, 4) == draw_exit_step(0, 3, 0, 4)
    assert {draw_exit_step(0, step, 0, 4) for step in range(40)} == {0, 1, 2, 3}
    assert fit_context(torch.ones(1, 3, 2), 5)[0, 3:].abs().sum() == 0
    assert fit_context(torch.ones(1, 6, 2), 4).shape == (1, 4, 2)


def test_a_lora_students_teacher_is_the_base_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    x = torch.randn(3, 4)
    base = model(x)
    add_lora(model, 2, 2.0, ["0", "2"])
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    assert (model(x) - base).abs().max() > 1e-3
    with adapters_disabled(model):
        assert torch.equal(model(x), base)
    assert (model(x) - base).abs().max() > 1e-3


# -- through the trainer -------------------------------------------------------------------------
def changed_per_step(folder: Path, steps: int, pattern: str) -> list[bool]:
    """Whether the trainable weights in ``checkpoint-N/<pattern>`` changed from step N-1 to N (N = 2..steps)."""
    states = [load_file(str(folder / f"checkpoint-{n}" / pattern)) for n in range(1, steps + 1)]
    return [state_dict_max_diff(a, b) > 0 for a, b in itertools.pairwise(states)]


@pytest.mark.parametrize("lora", [True, False])
def test_generator_and_critic_updates_follow_their_schedule(make_config, tmp_path, lora):
    steps, ratio = 7, 3
    config = distill_config(
        make_config, tmp_path, use_lora=lora, max_train_steps=steps, generator_update_ratio=ratio,
        checkpointing_steps=1, learning_rate=1e-2,
    )  # fmt: skip
    result = train(config)
    out = Path(config.output_dir)
    generator = changed_per_step(out, steps, TRAINABLE_FILE.format(0))
    critic = changed_per_step(out, steps, TRAINABLE_FILE.format(1))
    # step n (1-based) is optimizer step n - 1: the generator learns on 0, 3, 6 -> checkpoints 1, 4, 7
    assert generator == [(n - 1) % ratio == 0 for n in range(2, steps + 1)], generator
    assert critic == [True] * (steps - 1)
    assert sorted(result.generator_losses) == [1, 4, 7]
    assert len(result.losses) == steps and all(torch.isfinite(torch.tensor(result.losses)))
    print(f"distill lora={lora}: generator updated at {sorted(result.generator_losses)}, critic every step")


@pytest.mark.parametrize("lora", [True, False])
def test_a_resumed_distillation_is_the_uninterrupted_one(make_config, tmp_path, lora):
    results = []

    def run(name: str, steps: int, **more):
        config = make_config(
            "inp", train_mode="inpaint", output_dir=str(tmp_path / name / "out"), use_lora=lora,
            max_train_steps=steps, checkpointing_steps=2, generator_update_ratio=2, **DISTILL, **more,
        )  # fmt: skip
        results.append(train(config))
        return results[-1]

    check_resume_matches_uninterrupted(run, tmp_path, lora, f"distill lora={lora}")
    whole, first, rest = results
    assert sorted(whole.generator_losses) == [1, 3]
    assert {**first.generator_losses, **rest.generator_losses} == whole.generator_losses


def test_prompt_batches_are_drawn_and_are_generates_t2v_inputs(make_config, tmp_path):
    """``--distill_prompt_path``: the drawn share of micro-batches are prompts alone, the same prompts for the same
    (seed, step, position); their inputs are the prompts' contexts and the t2v conditions ``generate`` builds, with
    zero latents of the sample size; the data stream is not consumed for them."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\na green triangle moving left\n")
    draws = [draws_prompts(0, step, 0, 0.5) for step in range(400)]
    assert 0.4 < sum(draws) / len(draws) < 0.6 and draws == [draws_prompts(0, s, 0, 0.5) for s in range(400)]
    assert not any(draws_prompts(0, step, 0, 0.0) for step in range(50))
    one = prompt_batch(["a", "b", "c"], 0, 3, 0, range(0, 4), (5, 32, 32))
    assert one["prompts"] == prompt_batch(["a", "b", "c"], 0, 3, 0, range(0, 4), (5, 32, 32))["prompts"]  # seeded
    assert one["index"].tolist() == [0, 1, 2, 3] and one["size"] == (5, 32, 32)
    assert one["prompts"][2:] == prompt_batch(["a", "b", "c"], 0, 3, 0, range(2, 4), (5, 32, 32))["prompts"]

    config = distill_config(
        make_config, tmp_path, variant="inp", mode="inpaint", distill_prompt_path=str(prompts),
        distill_prompt_share=1.0, max_train_steps=2, video_sample_size=[32], video_sample_n_frames=5,
    )  # fmt: skip
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    batch = prompt_batch(["a red circle moving right"], 0, 0, 0, range(1), sample_size(config))
    inputs = prompt_inputs(spec, models, batch["prompts"], batch["size"], "cpu")
    from videox_fun.pipelines.wan import WanPipeline

    pipe = WanPipeline(models.transformer, models.frozen["vae"], models.frozen["text_encoder"], None,
                       masked_fill=models.settings.masked_fill, device="cpu")  # fmt: skip
    with torch.no_grad():
        expected = pipe.build_conditions("t2v", {}, 5, 32, 32)
        context = models.frozen["text_encoder"].encode(batch["prompts"], models.transformer.config.text_len)
    assert torch.equal(inputs.conditions["y"], expected["y"].float())
    # The spec encodes the prompts beside the negative prompt in one batch: the same rows up to fp32 rounding, which
    # depends on the batch shape and the BLAS threads (bit-equal on one machine, not on CI's)
    torch.testing.assert_close(inputs.conditions["context"], context.float(), rtol=1e-5, atol=1e-6)
    assert inputs.latents.shape == (1, 16, 2, 4, 4) and not inputs.latents.any()
    result = train(config)  # every micro-batch from the prompts: the data loader is never read
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_a_resumed_distillation_with_prompt_batches_is_the_uninterrupted_one(make_config, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\n")
    results = []

    def run(name: str, steps: int, **more):
        config = make_config(
            "inp", train_mode="inpaint", output_dir=str(tmp_path / name / "out"), max_train_steps=steps,
            checkpointing_steps=2, generator_update_ratio=2, distill_prompt_path=str(prompts),
            video_sample_size=[32], video_sample_n_frames=5, **DISTILL, **more,
        )  # fmt: skip
        results.append(train(config))
        return results[-1]

    check_resume_matches_uninterrupted(run, tmp_path, False, "distill with prompt batches")
    assert any(draws_prompts(0, step, 0, 0.5) for step in range(4))  # the run did draw prompt batches
    assert not all(draws_prompts(0, step, 0, 0.5) for step in range(4))


@pytest.mark.parametrize(("variant", "mode"), [("inp", "inpaint"), ("control", "control")])
def test_every_variant_keeps_its_conditions(make_config, tmp_path, variant, mode):
    """The student, critic and teacher are called with the variant's y (mask + masked video / control latents)."""
    config = distill_config(make_config, tmp_path, variant=variant, mode=mode, max_train_steps=8, learning_rate=2e-3)
    seen: list[set[str]] = []
    from videox_fun.models.wan.transformer import WanTransformer3DModel

    original = WanTransformer3DModel.forward

    def spy(self, x, t, **conditions):
        seen.append({name for name, value in conditions.items() if value is not None})
        return original(self, x, t, **conditions)

    WanTransformer3DModel.forward = spy
    try:
        result = train(config)
    finally:
        WanTransformer3DModel.forward = original
    # per step: the rollout, the critic's score and the teacher's two halves on generator steps, the critic's loss
    assert len(seen) >= 8 * 2 and all("y" in names and "context" in names for names in seen)
    assert len(result.losses) == 8


def test_bad_distillation_settings_are_one_line(make_config, tmp_path):
    cases = {
        "--denoising_step_list": dict(denoising_step_list=[250, 500]),
        "--distill trains the student on its prompts": dict(text_drop_ratio=0.1),
        "--generator_update_ratio must be 1 or more": dict(generator_update_ratio=0),
        "--critic_learning_rate must be a finite number": dict(critic_learning_rate=float("nan")),
        "--distill_prompt_path nowhere.txt is not a file": dict(distill_prompt_path="nowhere.txt"),
        "--distill_prompt_share must be within": dict(distill_prompt_path=__file__, distill_prompt_share=1.5),
        "--distill_prompt_share is the share of --distill_prompt_path": dict(distill_prompt_share=0.3),
    }
    for expected, overrides in cases.items():
        with pytest.raises(ValueError, match=expected):
            distill_config(make_config, tmp_path, **overrides).validate()
    with pytest.raises(ValueError, match="distillation settings; add --distill"):
        make_config("t2v", generator_update_ratio=3).validate()


@pytest.mark.slow
def test_two_processes_distil_as_one_with_the_doubled_batch(make_config, tmp_path):
    """DDP over 2 gloo processes (batch 1 each) ends where one process with batch 2 ends (student and critic)."""
    config = distill_config(
        make_config, tmp_path, variant="inp", mode="inpaint", train_batch_size=2, max_train_steps=3,
        generator_update_ratio=2,
    )  # fmt: skip
    one = train(config)
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "config" / "accelerate" / "ddp.yaml"), "--num_processes=2",
        "--mixed_precision=no", f"--main_process_port={free_port()}", str(SCRIPT),
        f"--pretrained_model_name_or_path={config.pretrained_model_name_or_path}",
        f"--train_data_meta={config.train_data_meta}", f"--output_dir={output}", "--train_mode=inpaint",
        "--train_batch_size=1", "--max_train_steps=3", f"--learning_rate={config.learning_rate}",
        "--generator_update_ratio=2", "--video_sample_size=32", "--video_sample_n_frames=5",
        "--video_sample_stride=1", "--report_to=none",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    weights = "transformer/diffusion_pytorch_model.safetensors"
    reference = load_file(str(one.output_dir / weights))
    difference = state_dict_max_diff(load_file(str(output / weights)), reference)
    start = load_file(str(Path(config.pretrained_model_name_or_path) / "diffusion_pytorch_model.safetensors"))
    moved = state_dict_max_diff(reference, start)
    print(f"distill DDP (2 x batch 1) vs 1 process x batch 2: max abs diff {difference:.2e} (moved {moved:.2e})")
    assert moved > 1e-4 and difference <= 2e-5
