"""The distilled tiny students' recipe and report: a student folder with its few-step defaults, trained by the
generic trainer's --distill, sampled by ``videox-fun generate`` with them, and measured against steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import state_dict_max_diff
from safetensors.torch import load_file

from videox_fun.api import load_pipeline
from videox_fun.cli import main
from videox_fun.toyworld.dataset import write_dataset
from videox_fun.toyworld.recipe_distill import DistillRecipe, train_distill
from videox_fun.toyworld.report_distill import evaluations_per_video, plot_sweep, sweep

CUSTOM_STEPS = (1000, 600, 300, 100)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lora", "prompt_share", "timesteps"),
    [
        (False, 0.0, DistillRecipe.denoising_steps),
        (True, 0.0, DistillRecipe.denoising_steps),
        (False, 0.5, CUSTOM_STEPS),
    ],
    ids=["full", "lora", "prompts-custom-steps"],
)
def test_train_distill_writes_a_student_that_generate_samples_in_four_steps(
    tmp_path: Path, lora: bool, prompt_share: float, timesteps: tuple[int, ...]
):
    """Full, LoRA, and prompt-only batches (every combination's caption) with other timesteps, which the student's
    folder then names (Flow_Distill samples them)."""
    data = tmp_path / "data"
    write_dataset(data, 8, seed=0, progress=False)
    recipe = DistillRecipe(steps=2, batch=2, clips=8, generator_update_ratio=1, use_lora=lora, rank=4,
                           denoising_steps=timesteps, prompt_share=prompt_share)  # fmt: skip
    folder = train_distill(tmp_path / "out", data, "Wan2.1-Fun-Tiny-InP", recipe)
    custom = None if timesteps == DistillRecipe.denoising_steps else list(timesteps)
    if prompt_share:
        assert len((tmp_path / "out" / "prompts.txt").read_text().splitlines()) == 72
    assert folder.name == "Wan2.1-Fun-Tiny-InP-Distill"
    assert (folder / "lora.safetensors").is_file() == lora  # a LoRA student: merged, and its file kept
    record = json.loads((folder / "recipe.json").read_text())
    assert record["teacher"] == "Wan2.1-Fun-Tiny-InP" and record["final_generator_loss"] is not None

    pipe = load_pipeline(folder)
    defaults = pipe.recognised.defaults
    assert (defaults.steps, defaults.guidance_scale, defaults.sampler) == (4, 1.0, "Flow_Distill")
    assert defaults.distill_timesteps == custom
    assert evaluations_per_video(pipe) == 4  # no guidance: one evaluation a step
    points = sweep(pipe, tmp_path / "sweep", (1, 4), progress=False, prompts=["a red circle moving right"])
    assert [p["steps"] for p in points] == [1, 4] and points[1]["all"]["count"] == 1
    pipe.close()
    report = {role: {"model": role, "settings": {"guidance": 1.0}, "sweep": points} for role in ("teacher", "student")}
    plot = plot_sweep(report, tmp_path / "plot.png")
    assert plot is None or plot.stat().st_size > 0

    video = tmp_path / "student.mp4"
    assert main(
        ["generate", "--model", str(folder), "--prompt", "a red circle moving right", "--output", str(video)]
    ) in (0, None)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert (sidecar["steps"], sidecar["guidance_scale"], sidecar["sampler"]) == (4, 1.0, "Flow_Distill")
    assert sidecar.get("distill_timesteps") == custom


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_distill_again_with_more_steps_continues_the_run(tmp_path: Path, lora: bool):
    """A finished student's folder holds the student: rerun with more steps, the recipe resumes its run with the
    teacher still the teacher (and a LoRA student's base the teacher's weights), so 2 then 4 steps == 4 steps."""
    data = tmp_path / "data"
    write_dataset(data, 8, seed=0, progress=False)

    def student(name: str, steps: int) -> dict:
        recipe = DistillRecipe(steps=steps, batch=2, clips=8, generator_update_ratio=1, use_lora=lora, rank=4)
        folder = train_distill(tmp_path / name, data, "Wan2.1-Fun-Tiny-InP", recipe)
        return load_file(str(folder / "diffusion_pytorch_model.safetensors"))

    student("split", 2)
    resumed, whole = student("split", 4), student("whole", 4)
    difference = state_dict_max_diff(resumed, whole)
    print(f"train-distill 2 + 2 steps vs 4 steps (lora={lora}): max abs diff {difference:.2e}")
    assert difference <= 1e-6
