"""Every mode of the one Wan pipeline, end to end on tiny model folders, read back with PyAV."""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from helpers import diffusers_pipeline, frame_count_and_size

from videox_fun.io.camera import make_trajectory, write_camera_trajectory
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.guidance import ClassifierFreeGuidance
from videox_fun.pipelines.wan import WanPipeline

HEIGHT, WIDTH, FRAMES = 32, 48, 9


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "inp": build_tiny_model_folder(root / "inp", "inp", with_clip=True),
        "control": build_tiny_model_folder(root / "control", "control_ref", with_clip=True),
        "camera": build_tiny_model_folder(root / "camera", "camera", with_clip=True),
        "t2v": build_tiny_model_folder(root / "t2v", "t2v"),
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros_like(frames)
    mask[:, 8:24, 16:32] = 255  # white box = region to generate
    paths = {
        "video": write_video(frames, root / "video.mp4", fps=8),
        "mask": write_video(mask, root / "mask.mp4", fps=8),
        "image": write_video(frames[:1], root / "image.png"),
        "end_image": write_video(frames[-1:], root / "end.png"),
        "camera": write_camera_trajectory(make_trajectory("pan_left", FRAMES), root / "camera.txt"),
    }
    return paths


MODE_CASES = [
    ("t2v", "inp", {}),
    ("t2v", "t2v", {}),
    ("i2v", "inp", {"image"}),
    ("flf2v", "inp", {"image", "end_image"}),
    ("v2v", "inp", {"video"}),
    ("v2v", "t2v", {"video"}),
    ("inpaint", "inp", {"video", "mask"}),
    ("control", "control", {"control_video", "ref_image", "image"}),
    ("camera", "camera", {"camera", "image"}),
]


@pytest.mark.parametrize(("mode", "model", "inputs"), MODE_CASES, ids=[f"{m}-{k}" for m, k, _ in MODE_CASES])
def test_mode_writes_a_video_pyav_reads(folders, media, tmp_path, mode, model, inputs):
    pipe = WanPipeline.from_pretrained(folders[model])
    given = {
        name: media["video" if name == "control_video" else "image" if name == "ref_image" else name] for name in inputs
    }
    result = pipe(
        "a red circle moving right",
        mode=mode,
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=2,
        progress=False,
        **given,
    )
    assert result.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    path = write_video(result.frames, tmp_path / f"{mode}.mp4", fps=8)
    assert frame_count_and_size(path) == (FRAMES, (HEIGHT, WIDTH))


def test_same_seed_same_video_and_seed_matters(folders):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    first = pipe("a blue square moving up", seed=1, **settings).latents
    assert torch.equal(first, pipe("a blue square moving up", seed=1, **settings).latents)
    assert not torch.equal(first, pipe("a blue square moving up", seed=2, **settings).latents)


def test_t2v_encodes_its_blank_video_once_per_size(folders, media):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    calls = []
    encode = pipe.vae.encode
    pipe.vae.encode = lambda video: calls.append(tuple(video.shape)) or encode(video)
    first = pipe.build_conditions("t2v", {}, FRAMES, HEIGHT, WIDTH)["y"]
    again = pipe.build_conditions("t2v", {}, FRAMES, HEIGHT, WIDTH)["y"]
    assert len(calls) == 1 and torch.equal(first, again)
    pipe._blank_latents.clear()
    fresh = pipe.build_conditions("t2v", {}, FRAMES, HEIGHT, WIDTH)["y"]
    assert torch.equal(first, fresh)
    pipe.build_conditions("t2v", {}, 5, HEIGHT, WIDTH)  # another size: encoded anew
    pipe.build_conditions("i2v", {"image": media["image"]}, FRAMES, HEIGHT, WIDTH)  # known pixels: always encoded
    pipe.build_conditions("i2v", {"image": media["image"]}, FRAMES, HEIGHT, WIDTH)
    assert len(calls) == 5


def test_i2v_conditions_differ_from_t2v(folders, media):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    t2v = pipe.build_conditions("t2v", {}, FRAMES, HEIGHT, WIDTH)
    i2v = pipe.build_conditions("i2v", {"image": media["image"]}, FRAMES, HEIGHT, WIDTH)
    mask_t2v, mask_i2v = t2v["y"][:, :4], i2v["y"][:, :4]
    assert mask_t2v.abs().sum() == 0  # nothing known
    assert torch.all(mask_i2v[:, :, 0] == 1) and torch.all(mask_i2v[:, :, 1:] == 0)  # first frame known
    assert i2v["clip_fea"].abs().sum() > 0 and t2v["clip_fea"].abs().sum() == 0


def test_mode_the_variant_cannot_serve_names_the_variant(folders, media):
    pipe = WanPipeline.from_pretrained(folders["t2v"])
    with pytest.raises(ValueError, match="Fun InP"):
        pipe("x", mode="i2v", image=media["image"], height=HEIGHT, width=WIDTH, num_frames=5, progress=False)
    with pytest.raises(ValueError, match="Fun Control model"):
        pipe("x", mode="control", control_video=media["video"], progress=False)


def test_missing_input_and_missing_file_are_named(folders, tmp_path):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    with pytest.raises(ValueError, match="--mask"):
        pipe("x", mode="inpaint", video=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        pipe("x", mode="i2v", image=tmp_path / "nope.png", progress=False)


def test_an_image_for_a_clip_model_without_its_encoder_fails_naming_the_released_file(folders, media):
    pipe = WanPipeline.from_pretrained(folders["control"])
    pipe.image_encoder = None  # as when the folder lacks the CLIP file: zero tokens would stand in for the image
    released = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    with pytest.raises(ValueError, match=released):
        pipe("x", mode="control", control_video=media["video"], image=media["image"], progress=False)
    # Without an image, zero CLIP tokens are what the Fun releases train on: that still runs.
    video = pipe("x", mode="control", control_video=media["video"], num_frames=5, num_inference_steps=1, progress=False)
    assert video.frames.shape[0] == 5


def test_sizes_and_frame_counts_are_rounded_with_a_note(folders, caplog):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    result = pipe("x", height=30, width=50, num_frames=6, num_inference_steps=1, progress=False)
    assert result.frames.shape == (5, 32, 48, 3)
    assert "height 30 is not a multiple of 16; using 32" in caplog.text
    assert "frame count 6 is not of the form 4k+1; using 5" in caplog.text


def test_step_callback_and_counted_guidance(folders):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    seen = []
    guidance = ClassifierFreeGuidance(scale=5.0, skip_ratio=0.25)
    pipe(
        "x",
        height=HEIGHT,
        width=WIDTH,
        num_frames=5,
        num_inference_steps=4,
        guidance=guidance,
        callback=lambda step, total, latents: seen.append((step, total)),
        progress=False,
    )
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert guidance.passes == {"cond": 4, "uncond": 3}


def test_batched_and_sequential_guidance_agree(folders):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    batched = pipe("x", guidance=ClassifierFreeGuidance(6.0, batched=True), **settings).latents
    sequential = pipe("x", guidance=ClassifierFreeGuidance(6.0, batched=False), **settings).latents
    assert torch.allclose(batched, sequential, atol=1e-5)


SAMPLERS = ("Flow", "Flow_Unipc", "Flow_DPM++", "Flow_Distill")
SHIFT = 5.0


def diffusers_scheduler(sampler: str, shift: float):
    """diffusers' own scheduler for a VideoX-Fun sampler name, configured here (not by make_scheduler)."""
    if sampler in ("Flow", "Flow_Distill"):  # VideoX-Fun's FlowMatchEulerDiscreteScheduler (Euler)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Wan's FlowUniPC / FlowDPMSolver (VideoX-Fun's Flow_Unipc / Flow_DPM++) in diffusers' terms
    flow = {"num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True}
    if sampler == "Flow_Unipc":
        return UniPCMultistepScheduler(flow_shift=shift, solver_order=2, **flow)
    return DPMSolverMultistepScheduler(flow_shift=shift, algorithm_type="dpmsolver++", solver_order=2, **flow)


def set_videox_fun_grid(scheduler, sampler: str, steps: int, shift: float) -> None:
    """diffusers' scheduler on VideoX-Fun's sigma grid, written out here: Flow_Unipc
    linspace(0.999, 0) (its float32 training sigma_max), Flow_DPM++ and Flow_Distill linspace(1, 0)
    (get_sampling_sigmas), each shifted, then a final 0; timesteps sigma * 1000 (integers but for the Euler
    Flow_Distill). Flow: diffusers' own grid."""
    type(scheduler).set_timesteps(scheduler, steps)  # the class's own (an instance may replace it)
    if sampler == "Flow":
        return
    start = float(np.float32(0.999)) if sampler == "Flow_Unipc" else 1.0
    sigmas = np.linspace(start, 0.0, steps + 1)[:steps]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    scheduler.timesteps = torch.from_numpy(sigmas * 1000).to(
        torch.float32 if sampler == "Flow_Distill" else torch.int64
    )
    scheduler.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))


@dataclass
class RecordingGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance that keeps each step's input latents, timestep and guided velocity."""

    steps: list = field(default_factory=list)

    def __call__(self, denoise, latents, t, *args, **kwargs):
        velocity = super().__call__(denoise, latents, t, *args, **kwargs)
        self.steps.append((latents.clone(), t.clone(), velocity.clone()))
        return velocity


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_step_as_diffusers_schedulers_do(folders, sampler):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    guidance, steps = RecordingGuidance(scale=5.0), 4
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "num_inference_steps": steps, "progress": False}
    result = pipe("x", sampler=sampler, shift=SHIFT, guidance=guidance, **settings)
    assert torch.isfinite(result.latents).all()
    # Replay the pipeline's own model outputs through diffusers' scheduler: same timesteps, and
    # the latents the pipeline fed the model at each next step are the scheduler's steps.
    reference = diffusers_scheduler(sampler, SHIFT)
    set_videox_fun_grid(reference, sampler, steps, SHIFT)
    recorded = guidance.steps
    assert len(recorded) == steps
    assert torch.equal(torch.stack([t[0] for _, t, _ in recorded]), reference.timesteps.float())
    latents = recorded[0][0]
    for index, (_, _, velocity) in enumerate(recorded):
        latents = reference.step(velocity, reference.timesteps[index], latents, return_dict=False)[0]
        following = recorded[index + 1][0] if index + 1 < steps else result.latents
        torch.testing.assert_close(latents, following, rtol=0, atol=1e-6)


def test_flow_distill_samples_a_students_own_timesteps(folders, caplog):
    """A student trained on other timesteps than the uniform ones (``--denoising_step_list 1000 600 200``) is
    sampled on those, under the shift (``distill_timesteps``, recorded in the settings); at another step count the
    uniform grid, said in the log; another sampler refuses them."""
    pipe = WanPipeline.from_pretrained(folders["inp"])
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "progress": False, "sampler": "Flow_Distill"}
    guidance = RecordingGuidance(scale=1.0)
    result = pipe("x", shift=SHIFT, guidance=guidance, num_inference_steps=3, distill_timesteps="1000,600,200",
                  **settings)  # fmt: skip
    sigmas = np.array([1.0, 0.6, 0.2])
    expected = torch.from_numpy(SHIFT * sigmas / (1 + (SHIFT - 1) * sigmas) * 1000).float()
    torch.testing.assert_close(torch.stack([t[0] for _, t, _ in guidance.steps]), expected)
    assert result.settings["distill_timesteps"] == [1000, 600, 200]

    uniform = RecordingGuidance(scale=1.0)
    with caplog.at_level(logging.WARNING):
        other = pipe("x", shift=SHIFT, guidance=uniform, num_inference_steps=4, distill_timesteps=[1000, 600, 200],
                     **settings)  # fmt: skip
    assert "trained on 3 timesteps" in caplog.text and "distill_timesteps" not in other.settings
    reference = diffusers_scheduler("Flow_Distill", SHIFT)
    set_videox_fun_grid(reference, "Flow_Distill", 4, SHIFT)
    assert torch.equal(torch.stack([t[0] for _, t, _ in uniform.steps]), reference.timesteps.float())
    with pytest.raises(ValueError, match="what --sampler Flow_Distill samples, not Flow"):
        pipe("x", num_inference_steps=3, distill_timesteps=[1000, 600, 200], **{**settings, "sampler": "Flow"})
    with pytest.raises(ValueError, match="timesteps must decrease"):
        pipe("x", num_inference_steps=2, distill_timesteps="200,600", **settings)


def test_samplers_give_different_latents(folders):
    pipe = WanPipeline.from_pretrained(folders["inp"])
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "num_inference_steps": 3, "progress": False}
    latents = {sampler: pipe("x", sampler=sampler, shift=SHIFT, **settings).latents for sampler in SAMPLERS}
    for first, second in itertools.combinations(SAMPLERS, 2):
        assert (latents[first] - latents[second]).abs().max() > 1e-3, (first, second)


@pytest.fixture(scope="module")
def t2v_512(tmp_path_factory):
    """A tiny t2v folder with the released text_len, as diffusers pads prompts to 512 tokens."""
    folder = build_tiny_model_folder(tmp_path_factory.mktemp("t2v512") / "t2v", "t2v")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text_len": 512}))
    return folder


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_match_diffusers_wan_pipeline(t2v_512, tmp_path, sampler):
    ours = WanPipeline.from_pretrained(t2v_512)
    theirs = diffusers_pipeline(ours, tmp_path)
    theirs.scheduler = scheduler = diffusers_scheduler(sampler, SHIFT)
    scheduler.set_timesteps = lambda steps, device=None: set_videox_fun_grid(scheduler, sampler, steps, SHIFT)
    settings = {"height": HEIGHT, "width": WIDTH, "num_frames": 5, "num_inference_steps": 4, "guidance_scale": 5.0}
    prompt, negative = "a red circle moving right", "a blue square"
    out = ours(prompt, negative_prompt=negative, seed=7, shift=SHIFT, sampler=sampler, progress=False, **settings)
    generator = torch.Generator("cpu").manual_seed(7)
    their_latents = theirs(prompt, negative_prompt=negative, generator=generator, output_type="latent", **settings)
    assert out.settings["sampler"] == sampler
    assert (out.latents - their_latents.frames).abs().max().item() <= 1e-4


def test_from_pretrained_takes_the_names_the_cli_takes():
    assert WanPipeline.from_pretrained("Wan2.1-Fun-Tiny-InP").model_name == "Wan2.1-Fun-Tiny-InP"
    with pytest.raises(FileNotFoundError, match="No-Such-Model"):
        WanPipeline.from_pretrained("No-Such-Model")


def test_a_fun_folder_run_with_wan_ai_zero_fill_is_warned_about(tmp_path, caplog):
    import dataclasses

    from videox_fun.config import config_for_folder

    folder = build_tiny_model_folder(tmp_path / "Wan2.1-Fun-Tiny-InP-copy", "inp")
    zero_fill = dataclasses.replace(config_for_folder(folder), masked_fill=0.0)  # wan_civitai.yaml's value
    with caplog.at_level("WARNING"):
        WanPipeline.from_pretrained(folder, config=zero_fill)
    assert "wan_fun_civitai.yaml" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        WanPipeline.from_pretrained(folder)  # its own config: -1, no warning
    assert "wan_fun_civitai.yaml" not in caplog.text


def test_ti2v_folder_with_a_wan22_vae_runs_t2v_and_i2v_at_32_pixel_multiples(tmp_path, caplog):
    pipe = WanPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "ti2v", "ti2v"))
    assert (pipe.vae.z_dim, pipe.vae.spatial_compression, pipe.size_multiple) == (48, 16, 32)
    image = write_video(np.full((1, 64, 96, 3), 120, dtype=np.uint8), tmp_path / "start.png")
    settings = {"height": 64, "width": 96, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    t2v = pipe("a red circle moving right", **settings)
    i2v = pipe("a red circle moving right", image=image, **settings)
    assert t2v.latents.shape == i2v.latents.shape == (1, 48, 2, 4, 6) and i2v.settings["mode"] == "i2v"
    assert tuple(i2v.frames.shape) == (5, 64, 96, 3)
    held = pipe.vae.encode(pipe._image_tensor(image, 64, 96)[:, :, None]).cpu()
    torch.testing.assert_close(i2v.latents[:, :, :1], held)  # the image stays the first latent frame
    with caplog.at_level("WARNING"):
        rounded = pipe("x", height=48, width=80, num_frames=5, num_inference_steps=1, progress=False)
    assert tuple(rounded.frames.shape) == (5, 64, 64, 3) and "not a multiple of 32" in caplog.text
