"""Wan VACE end to end: every task through ``videox-fun generate --model Wan2.1-VACE-Tiny-Random`` writes a video,
the modes come from the Wan family's table, a missing input is one clear line, and the VACE context is laid out
as the released code lays it out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import frame_count_and_size

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.cli import main
from videox_fun.families import get_family, recognise
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.vace import compose_source, mask_channels, reference_canvas
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.registry import resolve_model
from videox_fun.runtime.cache import FirstBlockCache
from videox_fun.runtime.offload import MEMORY_MODES, apply_memory_mode

MODEL = "Wan2.1-VACE-Tiny-Random"
FAST = ["--steps", "1", "--frames", "5", "--height", "32", "--width", "32", "--quiet"]
SMALL = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The built-in tiny VACE model, built offline into a cache of this module's own."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIDEOX_FUN_CACHE", str(folder))
        resolve_model(MODEL)  # built once here; the tests' runs find it
        yield folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs at 32 x 32: a start and an end image, two subject images (other sizes), a video, a mask, a control."""
    folder = tmp_path_factory.mktemp("vace_media")
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    mask = np.zeros_like(video)
    mask[:, 8:24, 8:24] = 255
    return {
        "image": write_video(video[:1], folder / "start.png"),
        "end_image": write_video(video[-1:], folder / "end.png"),
        "ref_image": write_video(rng.integers(0, 256, (1, 24, 40, 3), dtype=np.uint8), folder / "subject.png"),
        "ref_image_2": write_video(rng.integers(0, 256, (1, 40, 16, 3), dtype=np.uint8), folder / "subject2.png"),
        "video": write_video(video, folder / "video.mp4"),
        "mask": write_video(mask, folder / "mask.mp4"),
        "control_video": write_video(255 - video, folder / "control.mp4"),
    }


def flags(files: dict, *names: str) -> list[str]:
    """The CLI flags giving the named inputs."""
    return [item for name in names for item in ("--" + name.replace("_", "-"), str(files[name]))]


@pytest.mark.parametrize(
    ("inputs", "mode"),
    [
        ((), "t2v"),
        (("image",), "i2v"),
        (("image", "end_image"), "flf2v"),
        (("video", "mask"), "inpaint"),
        (("control_video",), "control"),
        (("control_video", "ref_image", "image"), "control"),
        (("ref_image",), "r2v"),
        (("video", "mask", "ref_image"), "vace"),
        (("image", "end_image", "ref_image"), "vace"),
    ],
)
def test_every_task_writes_a_video_and_its_mode(cache, files, tmp_path, inputs, mode):
    out = tmp_path / "clip.mp4"
    args = ["generate", "--prompt", "a red circle", "--model", MODEL, "--output", str(out), *flags(files, *inputs)]
    assert main([*args, *FAST]) == 0
    assert frame_count_and_size(out) == (5, (32, 32))  # reference frames were dropped before decoding
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["mode"] == mode and settings["vace_context_scale"] == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "r2v"], "mode 'r2v' needs --ref-image"),
        (["--mode", "inpaint", "--video", "{video}"], "mode 'inpaint' needs --mask"),
        (["--mode", "vace", "--mask", "{mask}"], "--mask marks what to regenerate in --video"),
        (["--video", "{video}", "--control-video", "{control_video}", "--mode", "vace"], "give one of them"),
    ],
)
def test_a_missing_input_is_one_clear_line(cache, files, capsys, extra, message):
    args = ["generate", "--prompt", "x", "--model", MODEL, *(item.format(**files) for item in extra), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_fun_model_names_vace_for_its_modes(files, tmp_path, capsys):
    folder = build_tiny_model_folder(tmp_path / "inp", "inp")
    args = ["generate", "--prompt", "x", "--model", str(folder), *flags(files, "ref_image"), *FAST]
    assert main(args) == 2
    assert "these inputs ask for mode 'r2v'" in capsys.readouterr().err
    assert main([*args, "--mode", "r2v"]) == 2
    assert "mode 'r2v' needs a VACE model" in capsys.readouterr().err


def test_modes_come_from_the_family_table(cache):
    recognised = recognise(resolve_model(MODEL))
    table = get_family("wan").modes
    assert recognised.variant == "VACE"
    assert set(recognised.modes) == {"t2v", "i2v", "flf2v", "v2v", "inpaint", "control", "r2v", "vace"}
    assert table["r2v"].needs == ("ref_image",) and "ref_image" in table["vace"].allows
    # The tiny VACE model samples as Wan2.1-VACE does.
    assert (recognised.defaults.shift, recognised.defaults.guidance_scale) == (16.0, 5.0)


def test_several_subjects_through_the_api_and_the_scale(cache, files):
    loaded = load_pipeline(MODEL, RuntimeOptions(device="cpu"))
    try:
        subjects = [str(files["ref_image"]), str(files["ref_image_2"])]
        one = loaded.generate(GenerationRequest("x", ref_image=subjects[:1], steps=2, num_frames=5), progress=False)
        two = loaded.generate(GenerationRequest("x", ref_image=subjects, steps=2, num_frames=5), progress=False)
        assert one.latents.shape == two.latents.shape == (1, 16, 2, 8, 8)  # the subjects' frames are dropped
        assert (one.latents - two.latents).abs().max() > 1e-4  # the second subject counts
        # Hints scaled to zero: which subject no longer matters (the count does: each is a frame of tokens).
        silent = {"steps": 2, "num_frames": 5, "extra": {"vace_context_scale": 0.0}}
        muted = [
            loaded.generate(GenerationRequest("x", ref_image=[subject], **silent), progress=False).latents
            for subject in subjects
        ]
        assert torch.allclose(*muted, atol=1e-6)
    finally:
        loaded.close()


def test_vace_scale_on_a_model_without_vace_is_an_error(tmp_path):
    pipe = WanPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "t2v", "t2v"))
    with pytest.raises(ValueError, match="VACE setting"):
        pipe("x", vace_context_scale=0.5, **SMALL)


def test_mask_channels_are_the_release_8x8_unshuffle_at_the_latent_frames():
    mask = torch.rand(1, 1, 9, 16, 24)
    channels = mask_channels(mask)
    assert channels.shape == (1, 64, 3, 2, 3)
    # The release: view (F, h, 8, w, 8), put the 8 x 8 offsets first, then nearest-exact over frames.
    blocks = mask[0, 0].view(9, 2, 8, 3, 8).permute(2, 4, 0, 1, 3).reshape(64, 9, 2, 3)
    expected = F.interpolate(blocks[None], size=(3, 2, 3), mode="nearest-exact")
    assert torch.equal(channels, expected)


def test_sources_of_the_tasks():
    video, control = torch.rand(1, 3, 5, 16, 16) * 2 - 1, torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 5, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    frames, generate = compose_source(5, 16, 16, video=video, mask=mask)
    assert torch.equal(generate, mask) and (frames[..., 4:12, 4:12] == 0).all()  # greyed where to generate
    assert torch.equal(frames[..., :4, :], video[..., :4, :])
    start, end = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    frames, generate = compose_source(5, 16, 16, control=control, first=start, last=end)
    assert torch.equal(frames[:, :, 0], start) and torch.equal(frames[:, :, 2], control[:, :, 2])
    assert generate[:, :, [0, 4]].eq(0).all() and generate[:, :, 1:4].eq(1).all()
    frames, generate = compose_source(5, 16, 16)  # text only: an empty video, all to generate
    assert frames.eq(0).all() and generate.eq(1).all()


def test_a_reference_is_fitted_on_a_white_canvas():
    image = -torch.ones(1, 3, 10, 40)  # black, four times wider than high
    canvas = reference_canvas(image, 32, 32)
    assert canvas.shape == (1, 3, 32, 32)
    assert canvas[..., 12:20, :].eq(-1).all()  # fitted to the width: 8 rows high, in the middle
    assert canvas[..., :12, :].eq(1).all() and canvas[..., 20:, :].eq(1).all()  # white above and below


@pytest.mark.parametrize(("boundary", "shift", "sampler"), [(None, 16.0, "Flow_Unipc"), (0.875, 12.0, "Flow")])
def test_a_release_layout_samples_with_the_release_defaults(tmp_path, boundary, shift, sampler):
    # Without a folder config of its own, a VACE folder takes what its release samples with: Wan2.1-VACE
    # shift 16 with UniPC, the two-expert Wan2.2-VACE-Fun-A14B shift 12 with Flow; guidance 5 for both.
    folder = build_tiny_model_folder(tmp_path / "vace", "vace", boundary=boundary)
    (folder / "videox_fun.yaml").unlink()
    defaults = recognise(folder).defaults
    assert (defaults.shift, defaults.sampler, defaults.guidance_scale) == (shift, sampler, 5.0)


def test_two_vace_experts_run_and_both_count(tmp_path):
    folder = build_tiny_model_folder(tmp_path / "vace_a14b", "vace", boundary=0.5)
    pipe = WanPipeline.from_pretrained(folder)
    control = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    settings = {**SMALL, "num_inference_steps": 4, "shift": 1.0}  # steps on both sides of the boundary
    both = pipe("x", control_video=control, **settings)
    assert both.settings["mode"] == "control" and both.settings["boundary"] == 0.5
    pipe.transformer_2 = None  # the high-noise expert alone
    assert (pipe("x", control_video=control, **settings).latents - both.latents).abs().max() > 1e-4


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    """A tiny VACE folder, a control video and the latents of a plain run on it."""
    folder = build_tiny_model_folder(tmp_path_factory.mktemp("vace_runtime") / "vace", "vace")
    control = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    settings = {**SMALL, "num_inference_steps": 4, "control_video": control, "seed": 5}
    return folder, settings, WanPipeline.from_pretrained(folder)("x", **settings).latents


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_memory_modes_run_the_vace_stream(control_run, mode):
    # Block swap and offload move the VACE blocks too (they are the first of the declared block lists).
    folder, settings, reference = control_run
    pipe = WanPipeline.from_pretrained(folder)
    apply_memory_mode(pipe, mode, torch.device("cpu", 0), resident_blocks=1)
    latents = pipe("x", **settings).latents
    if "qfloat8" in mode:
        assert torch.isfinite(latents).all() and (latents - reference).abs().max() < 0.5  # fp8 rounding
    else:
        assert torch.equal(latents, reference)


def test_first_block_cache_on_vace(control_run):
    folder, settings, reference = control_run
    pipe = WanPipeline.from_pretrained(folder)
    never = FirstBlockCache(pipe.transformer, threshold=0.0)
    assert torch.allclose(pipe("x", **settings).latents, reference, atol=1e-6) and never.stats.skipped == 0
    never.remove()
    often = FirstBlockCache(pipe.transformer, threshold=10.0)
    assert torch.isfinite(pipe("x", **settings).latents).all() and often.stats.skipped > 0


def test_several_subject_images_and_the_hint_scale_from_the_command_line(cache, files, tmp_path):
    """``--ref-image A B`` gives two subjects (two reference latent frames, dropped before decoding) and
    ``--vace-context-scale`` reaches the transformer; a missing second image fails before loading."""
    image = str(files["ref_image"])
    args = ["generate", "--prompt", "a red circle", "--model", MODEL, *FAST]
    out = tmp_path / "two.mp4"
    assert main([*args, "--output", str(out), "--ref-image", image, image, "--vace-context-scale", "0.5"]) == 0
    assert frame_count_and_size(out) == (5, (32, 32))
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["mode"] == "r2v" and settings["vace_context_scale"] == 0.5
    assert main([*args, "--output", str(tmp_path / "missing.mp4"), "--ref-image", image, "nope.png"]) == 2
