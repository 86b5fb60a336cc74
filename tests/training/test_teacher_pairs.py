"""Distillation's regression onto the teacher's own samples (``--distill_regression_path``, ``teacher-pairs``).

A pair's noise is the draw the teacher's sampler started from: a model regressed onto its own 4-step
``Flow_Distill`` samples has a loss of zero at the last rollout step, and not before it. The regression
reaches the student on its update steps only, a resumed run is the uninterrupted one, and bad pairs
files are one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import HANG_GUARD_S
from training_helpers import REPO, check_resume_matches_uninterrupted, subprocess_env

from videox_fun.api import RuntimeOptions, load_pipeline
from videox_fun.training.distill import DistillObjective
from videox_fun.training.specs import get_spec
from videox_fun.training.teacher_pairs import TeacherPairs, make_teacher_pairs
from videox_fun.training.trainer import train

PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle moving left"]
SIZE = (5, 32, 32)  # frames, height, width: latents (16, 2, 4, 4) on the tiny folders
DISTILL = dict(distill=True, text_drop_ratio=0.0, video_sample_size=[32], video_sample_n_frames=5)


@pytest.fixture
def inp_folder(make_config) -> Path:
    """The tiny InP folder the training configs use (random weights)."""
    return Path(make_config("inp").pretrained_model_name_or_path)


def student_samples(folder: Path, out: Path, count: int = 3) -> Path:
    """Pairs of ``folder`` sampled as a 4-step student samples (Flow_Distill, no guidance), written to ``out``."""
    loaded = load_pipeline(str(folder), RuntimeOptions(device="cpu"))
    pairs = make_teacher_pairs(loaded, PROMPTS, count, 7, SIZE, progress=False, steps=4, guidance_scale=1.0,
                               sampler="Flow_Distill")  # fmt: skip
    return pairs.save(out)


def test_a_pair_starts_from_the_samplers_noise(make_config, inp_folder, tmp_path):
    """The model's regression onto its own Flow_Distill samples is zero at the rollout's last step (the sampler's
    Euler steps from the pair's noise, with the t2v conditions ``generate`` builds), and not at an earlier one."""
    path = student_samples(inp_folder, tmp_path / "pairs.safetensors")
    pairs = TeacherPairs.load(path)
    assert len(pairs) == 3 and pairs.prompts == PROMPTS and pairs.size == SIZE
    assert pairs.noise.shape == pairs.target.shape == (3, 16, 2, 4, 4)
    config = make_config("inp", train_mode="inpaint", distill_regression_path=str(path), **DISTILL)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    objective = DistillObjective.from_config(spec, models, config)
    assert objective.pairs is not None and objective.regression_weight == 0.25
    with torch.no_grad():
        last = objective.regression_loss(spec, models, models.transformer, pairs.batch([0, 1, 2]), 3, "cpu")
        first = objective.regression_loss(spec, models, models.transformer, pairs.batch([0, 1, 2]), 0, "cpu")
    scale = pairs.target.pow(2).mean().item()
    print(f"regression onto its own samples: {last.item():.2e} at the last step, {first.item():.2e} at the first")
    assert last.item() <= 1e-9 * max(scale, 1.0) and first.item() > 1e-3 * scale


def test_the_pairs_are_drawn_per_position_and_seeded(make_config, inp_folder, tmp_path):
    path = student_samples(inp_folder, tmp_path / "pairs.safetensors")
    config = make_config("inp", train_mode="inpaint", distill_regression_path=str(path), **DISTILL)
    spec = get_spec(config)
    objective = DistillObjective.from_config(spec, spec.load_models(config, torch.float32), config)
    one = objective.regression_batch(0, 5, 0, range(0, 4))
    assert one is not None and len(one[2]) == 4 and one[0].shape == (4, 16, 2, 4, 4)
    again = objective.regression_batch(0, 5, 0, range(2, 4))  # another process's positions: the same draws there
    assert again is not None and one[2][2:] == again[2] and torch.equal(one[0][2:], again[0])
    draws = {tuple(objective.regression_batch(0, step, 0, range(4))[2]) for step in range(20)}
    assert len(draws) > 1  # they change with the step


def generator_steps_with_regression(make_config, tmp_path: Path, path: Path | None, name: str) -> list[float]:
    """The student's losses of a 4-step run (update ratio 2) with or without the pairs."""
    extra = {"distill_regression_path": str(path), "distill_regression_weight": 1.0} if path else {}
    config = make_config("inp", train_mode="inpaint", output_dir=str(tmp_path / name), max_train_steps=4,
                         generator_update_ratio=2, **DISTILL, **extra)  # fmt: skip
    result = train(config)
    assert sorted(result.generator_losses) == [1, 3]  # the student learns on steps 1 and 3 only
    return [result.generator_losses[step] for step in (1, 3)]


def test_the_regression_adds_to_the_students_loss_on_its_steps(make_config, inp_folder, tmp_path):
    path = student_samples(inp_folder, tmp_path / "pairs.safetensors")
    plain = generator_steps_with_regression(make_config, tmp_path, None, "plain")
    regressed = generator_steps_with_regression(make_config, tmp_path, path, "regressed")
    # Step 1 draws the same batch and exit step: the loss grows by the (non-negative) regression term.
    assert regressed[0] > plain[0]


def test_a_resumed_run_with_pairs_is_the_uninterrupted_one(make_config, inp_folder, tmp_path):
    path = student_samples(inp_folder, tmp_path / "pairs.safetensors")
    results = []

    def run(name: str, steps: int, **more):
        config = make_config(
            "inp", train_mode="inpaint", output_dir=str(tmp_path / name / "out"), max_train_steps=steps,
            checkpointing_steps=2, generator_update_ratio=2, distill_regression_path=str(path), **DISTILL, **more,
        )  # fmt: skip
        results.append(train(config))
        return results[-1]

    check_resume_matches_uninterrupted(run, tmp_path, False, "distill with teacher pairs")


def test_bad_pairs_are_one_line(make_config, inp_folder, tmp_path):
    other_model = TeacherPairs(torch.zeros(1, 8, 2, 4, 4), torch.zeros(1, 8, 2, 4, 4), PROMPTS[:1], SIZE)  # z = 8
    not_pairs = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"noise": torch.zeros(1, 2)}, str(not_pairs))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    cases = {
        "are not this model's for videos of \\(5, 32, 32\\)": other_model.save(tmp_path / "other.safetensors"),
        "not a teacher pairs file": not_pairs,
        "truncated or not a safetensors file": garbage,
    }
    for expected, path in cases.items():
        config = make_config("inp", train_mode="inpaint", distill_regression_path=str(path), **DISTILL)
        spec = get_spec(config)
        with pytest.raises(ValueError, match=expected):
            DistillObjective.from_config(spec, spec.load_models(config, torch.float32), config)
    with pytest.raises(ValueError, match="do not match"):
        TeacherPairs(torch.zeros(2, 3), torch.zeros(2, 3), ["one prompt"], SIZE)
    with pytest.raises(ValueError, match="NaN or infinite"):
        TeacherPairs(torch.full((1, 3), float("nan")), torch.zeros(1, 3), ["a"], SIZE)
    refusals = {
        "--distill_regression_path nowhere.safetensors is not a file": dict(
            distill_regression_path="nowhere.safetensors"
        ),
        "--distill_regression_weight weighs": dict(distill_regression_weight=0.5),
        "--distill_regression_weight must be a finite number": dict(
            distill_regression_path=str(garbage), distill_regression_weight=float("inf")
        ),
    }
    for expected, overrides in refusals.items():
        with pytest.raises(ValueError, match=expected):
            make_config("inp", train_mode="inpaint", **DISTILL, **overrides).validate()
    with pytest.raises(ValueError, match="distillation settings; add --distill"):
        make_config("inp", distill_regression_weight=0.5).validate()


def test_the_teacher_pairs_command(inp_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "pairs.safetensors"
    command = [sys.executable, "-m", "videox_fun.cli", "teacher-pairs", "--model", str(inp_folder), "--prompts-file",
               str(prompts), "--count", "2", "--out", str(out), "--frames", "5", "--height", "32", "--width", "32",
               "--device", "cpu", "--quiet"]  # fmt: skip

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                              timeout=HANG_GUARD_S)  # fmt: skip

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    pairs = TeacherPairs.load(out)
    assert len(pairs) == 2 and pairs.prompts == PROMPTS[:2] and pairs.size == SIZE
    again = run()  # an existing file is never replaced unasked
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--out" in again.stderr
