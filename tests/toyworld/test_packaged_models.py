"""The trained tiny models shipped in the package: they are the defaults, and they draw what is asked.

These run the real packaged weights with the default settings, read the videos back from their
files and judge them with the model-free evaluator, so a regression in the models, the pipeline
or the file writing fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from videox_fun.config import config_for_folder
from videox_fun.io.video import write_video
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.registry import (
    PACKAGED_COGVIDEOX_MODEL,
    PACKAGED_DIR,
    PACKAGED_MODELS,
    PACKAGED_STUDENTS,
    default_model_for_mode,
    packaged_model,
    resolve_model,
)
from videox_fun.toyworld.evaluate import evaluate_video, judge_frames, trajectory_error
from videox_fun.toyworld.render import render_clip

# Regression floors, a little under what the shipped models measure (the targets are
# checked by `videox-fun toyworld report`, whose figures are in the README).
VAE_PSNR_FLOOR = 30.5  # measured: 32.97 dB mean over 72 clips (toyworld report)
SEEN_PROMPTS = ["a red circle moving right", "a cyan square moving up", "a magenta triangle moving left"]
# The students' sampling (their folders' defaults; WanPipeline called directly takes its own unless given).
STUDENT = {"num_inference_steps": 4, "guidance_scale": 1.0, "sampler": "Flow_Distill"}


def test_packaged_models_are_the_defaults_and_small():
    for name in PACKAGED_MODELS:
        if name == PACKAGED_COGVIDEOX_MODEL:  # shipped once its recipe has run (see the next test)
            continue
        folder = PACKAGED_DIR / name
        settings = config_for_folder(folder)
        for part in ("config.json", "diffusion_pytorch_model.safetensors", "recipe.json"):
            assert (folder / part).exists(), f"{name} lacks {part}"
        for part in (settings.vae_subpath, settings.text_encoder_subpath):  # its own, or another model's it shares
            assert (folder / part).resolve().is_relative_to(PACKAGED_DIR) and (folder / part).is_dir(), (name, part)
    assert resolve_model(None, "t2v") == PACKAGED_DIR / "Wan2.1-Fun-Tiny-InP"
    assert default_model_for_mode("control") == "Wan2.1-Fun-Tiny-Control"
    assert default_model_for_mode("r2v") == "Wan2.1-VACE-Tiny"
    total = sum(f.stat().st_size for f in PACKAGED_DIR.rglob("*") if f.is_file())
    # The VACE model and the distilled students share the InP / Control models' VAE and text encoder.
    assert total < 64 * 2**20


def test_the_packaged_cogvideox_model_has_the_diffusers_layout_when_shipped():
    folder = packaged_model(PACKAGED_COGVIDEOX_MODEL)
    if folder is None:
        pytest.skip(f"{PACKAGED_COGVIDEOX_MODEL} is not packaged yet (toyworld train-all --family cogvideox)")
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json", "recipe.json")
    for part in parts:
        assert (folder / part).exists(), f"{folder.name} lacks {part}"
    assert resolve_model(PACKAGED_COGVIDEOX_MODEL) == folder
    assert resolve_model(None, "t2v") == PACKAGED_DIR / "Wan2.1-Fun-Tiny-InP"  # the Wan models stay the defaults


@pytest.mark.slow
def test_inp_model_draws_colour_shape_and_direction_of_the_prompt(tmp_path: Path):
    pipe = WanPipeline.from_pretrained(resolve_model(None, "t2v"))
    results = []
    for index, prompt in enumerate(SEEN_PROMPTS):
        frames = pipe(prompt, seed=index, progress=False).frames
        results.append(evaluate_video(write_video(frames, tmp_path / f"{index}.mp4", fps=8), prompt))
    seen = [(r["expected"], r["colour"], r["shape"], r["direction"]) for r in results]
    for name in ("colour_ok", "shape_ok", "direction_ok"):
        assert sum(r[name] for r in results) >= 2, seen


@pytest.mark.slow
def test_inp_model_keeps_the_given_first_frame(tmp_path: Path):
    clip = render_clip("a blue square moving down", seed=3)
    image = write_video(clip.frames[:1], tmp_path / "start.png")
    pipe = WanPipeline.from_pretrained(resolve_model(None, "i2v"))
    frames = pipe(clip.caption, image=str(image), mode="i2v", seed=0, progress=False).frames
    result = evaluate_video(write_video(frames, tmp_path / "i2v.mp4", fps=8), clip.caption, image=image)
    assert result["psnr_first_frame"] >= 28.0 and result["direction_ok"]  # measured: 31.4 dB mean, 100 %


@pytest.mark.slow
def test_control_model_follows_the_edge_video(tmp_path: Path):
    clip = render_clip("a green circle moving right", seed=5)
    control = write_video(clip.control, tmp_path / "edges.mp4", fps=8)
    pipe = WanPipeline.from_pretrained(resolve_model(None, "control"))
    frames = pipe(clip.caption, control_video=str(control), mode="control", seed=0, progress=False).frames
    result = evaluate_video(write_video(frames, tmp_path / "out.mp4", fps=8), clip.caption, control_video=control)
    assert result["trajectory_error_px"] is not None and result["trajectory_error_px"] <= 2.0  # measured: 0.47 px


@pytest.mark.slow
def test_vace_model_moves_the_reference_and_completes_a_masked_second_half(tmp_path: Path):
    from videox_fun.toyworld.report_vace import completion_mask, known_frames

    pipe = WanPipeline.from_pretrained(resolve_model(None, "r2v"))
    clip = render_clip("a yellow square moving left", seed=11)  # a held-out combination
    still = write_video(clip.frames[8:9], tmp_path / "ref.png")
    frames = pipe(clip.caption, ref_image=[str(still)], mode="r2v", seed=0, progress=False).frames
    result = evaluate_video(write_video(frames, tmp_path / "r2v.mp4", fps=8), clip.spec)
    assert result["colour_ok"] and result["direction_ok"], result  # measured: 100 % held-out (report)

    video = write_video(clip.frames, tmp_path / "source.mp4", fps=8)
    mask = write_video(completion_mask(*clip.frames.shape[:3]), tmp_path / "mask.mp4", fps=8)
    frames = pipe(clip.caption, video=str(video), mask=str(mask), mode="inpaint", seed=0, progress=False).frames
    start = known_frames(len(clip.frames))
    made, truth = judge_frames(frames.numpy())["track"][start:], judge_frames(clip.frames)["track"][start:]
    error, count = trajectory_error(made, truth)
    assert count == len(clip.frames) - start and error <= 3.0, error  # measured: 2.4 px held-out mean (report)


@pytest.mark.slow
def test_the_distilled_students_sample_in_four_steps_without_guidance(tmp_path: Path):
    """Their folders' defaults are the few-step ones; the InP student draws the prompt, the Control student
    follows the edge video (measured on the report's seeds: t2v seen 99.2 / 99.2 / 100 %, 0.40 px)."""
    for name in PACKAGED_STUDENTS:
        defaults = config_for_folder(PACKAGED_DIR / name).defaults
        assert (defaults.steps, defaults.guidance_scale, defaults.sampler) == (4, 1.0, "Flow_Distill"), name
    pipe = WanPipeline.from_pretrained(resolve_model("Wan2.1-Fun-Tiny-InP-Distill"))
    results = []
    for index, prompt in enumerate(SEEN_PROMPTS):
        frames = pipe(prompt, seed=index, progress=False, **STUDENT).frames
        results.append(evaluate_video(write_video(frames, tmp_path / f"{index}.mp4", fps=8), prompt))
    for name in ("colour_ok", "shape_ok", "direction_ok"):
        assert sum(r[name] for r in results) >= 2, [
            (r["expected"], r["colour"], r["shape"], r["direction"]) for r in results
        ]

    clip = render_clip("a green circle moving right", seed=5)
    control = write_video(clip.control, tmp_path / "edges.mp4", fps=8)
    pipe = WanPipeline.from_pretrained(resolve_model("Wan2.1-Fun-Tiny-Control-Distill"))
    frames = pipe(clip.caption, control_video=str(control), mode="control", seed=0, progress=False, **STUDENT).frames
    result = evaluate_video(write_video(frames, tmp_path / "ctrl.mp4", fps=8), clip.caption, control_video=control)
    assert result["trajectory_error_px"] is not None and result["trajectory_error_px"] <= 2.0  # measured: 0.40 px


@pytest.mark.slow
def test_packaged_vae_reconstructs_fresh_rendered_clips():
    from videox_fun.toyworld.report import vae_reconstruction

    result = vae_reconstruction(resolve_model(None, "t2v"), count=6)
    assert result["all"]["psnr_mean"] >= VAE_PSNR_FLOOR, result


@pytest.mark.slow
def test_the_packaged_cogvideox_model_draws_colour_and_direction_and_keeps_the_first_frame(tmp_path: Path):
    """Its report's weak point is shape (squares come out with rounded corners); colour, direction and the
    i2v first frame are what it does reliably, and what this regression floor holds."""
    from videox_fun.api import GenerationRequest, load_pipeline

    folder = packaged_model(PACKAGED_COGVIDEOX_MODEL)
    if folder is None:
        pytest.skip(f"{PACKAGED_COGVIDEOX_MODEL} is not packaged")
    loaded = load_pipeline(folder)
    results = []
    for index, prompt in enumerate(SEEN_PROMPTS):
        result = loaded.generate(GenerationRequest(prompt=prompt, seed=index), progress=False)
        results.append(evaluate_video(write_video(result.frames, tmp_path / f"{index}.mp4", fps=8), prompt))
    assert sum(r["colour_ok"] for r in results) >= 2 and sum(r["direction_ok"] for r in results) >= 2, results
    clip = render_clip("a blue square moving down", seed=3)
    image = write_video(clip.frames[:1], tmp_path / "start.png")
    result = loaded.generate(GenerationRequest(prompt=clip.caption, image=str(image), seed=0), progress=False)
    judged = evaluate_video(write_video(result.frames, tmp_path / "i2v.mp4", fps=8), clip.caption, image=image)
    loaded.close()
    assert judged["psnr_first_frame"] >= 28.0 and judged["direction_ok"], judged
