"""Wan2.2-Fun end to end: tiny folders of each release's layout (A14B Control / Control-Camera as two experts, 5B
InP / Control / Control-Camera with the 48-channel, 16x VAE) run their modes through ``videox-fun generate`` and
write videos; the 5B models hold a start image as the first latent frame, as VideoX-Fun's Wan2.2-Fun pipelines do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import frame_count_and_size

from videox_fun.cli import main
from videox_fun.config import config_for_folder
from videox_fun.families import recognise
from videox_fun.io.video import write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.conditioning import held_timestep_scale
from videox_fun.pipelines.wan import WanPipeline

FAST = ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--quiet"]
# tiny layout -> (two experts, the modes its folder is recognised with)
LAYOUTS = {
    "a14b_control": (True, ("t2v", "i2v", "inpaint", "control", "v2v")),
    "a14b_camera": (True, ("v2v", "camera")),
    "5b_inp": (False, ("t2v", "i2v", "flf2v", "v2v", "inpaint")),
    "5b_control": (False, ("t2v", "i2v", "inpaint", "control", "v2v")),
    "5b_camera": (False, ("v2v", "camera")),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny folder per layout (the A14B ones with high- and low-noise experts switching at 0.9)."""
    root = tmp_path_factory.mktemp("wan22_fun")
    return {
        name: build_tiny_model_folder(root / f"Tiny-{name}", name, boundary=0.9 if experts else None)
        for name, (experts, _) in LAYOUTS.items()
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A start / end image, a reference image and a control video, 32 x 32, 5 frames."""
    folder = tmp_path_factory.mktemp("wan22_fun_media")
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    return {
        "image": write_video(video[:1], folder / "start.png"),
        "end-image": write_video(video[-1:], folder / "end.png"),
        "ref-image": write_video(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), folder / "ref.png"),
        "control-video": write_video(255 - video, folder / "control.mp4"),
    }


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_folders_are_recognised_with_their_modes(folders: dict[str, Path], layout: str) -> None:
    found = recognise(folders[layout])
    assert set(found.modes) == set(LAYOUTS[layout][1])
    assert found.sizes.multiple == (32 if layout.startswith("5b") else 16)  # Wan2.2 VAE 16x x patch 2


RUNS = [
    ("5b_inp", "t2v", ()),
    ("5b_inp", "i2v", ("image",)),
    ("5b_inp", "flf2v", ("image", "end-image")),
    ("5b_control", "control", ("control-video",)),
    ("5b_control", "control", ("control-video", "ref-image", "image")),
    ("5b_camera", "camera", ("image",)),
    ("a14b_control", "control", ("control-video", "ref-image")),
    ("a14b_control", "i2v", ("image",)),
    ("a14b_camera", "camera", ("image",)),
]


@pytest.mark.parametrize(("layout", "mode", "inputs"), RUNS, ids=[f"{r[0]}-{r[1]}-{len(r[2])}" for r in RUNS])
def test_generate_writes_a_video(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path, layout: str, mode: str, inputs: tuple
) -> None:
    out = tmp_path / "clip.mp4"
    given = [arg for name in inputs for arg in (f"--{name}", str(files[name]))]
    camera = ["--camera", "pan_left"] if mode == "camera" else []
    flags = ["--model", str(folders[layout]), "--mode", mode, *given, *camera, "--output", str(out), *FAST]
    assert main(["generate", "--prompt", "a red circle moving right", *flags]) == 0
    assert frame_count_and_size(out) == (5, (32, 32))
    assert json.loads(out.with_suffix(".json").read_text())["mode"] == mode


def test_a_camera_model_asked_for_another_mode_fails_in_one_line(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flags = ["--model", str(folders["5b_camera"]), "--mode", "i2v", "--image", str(files["image"]), *FAST]
    assert main(["generate", "--prompt", "x", "--output", str(tmp_path / "x.mp4"), *flags]) != 0
    message = capsys.readouterr().err.strip()
    assert "i2v" in message and "Control-Camera" in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("layout", ["5b_inp", "5b_camera"])
def test_5b_holds_the_start_image_as_the_first_latent_frame(
    folders: dict[str, Path], files: dict[str, Path], layout: str
) -> None:
    pipe = WanPipeline.from_pretrained(folders[layout])
    settings = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    extra = {"camera": "pan_left"} if layout == "5b_camera" else {}
    result = pipe("a red circle moving right", image=files["image"], **extra, **settings)
    assert result.latents.shape == (1, 48, 2, 2, 2)  # 5 frames, 32 pixels: 2 latent frames of 2 x 2
    held = pipe.vae.encode(pipe._image_tensor(files["image"], 32, 32)[:, :, None]).cpu()
    torch.testing.assert_close(result.latents[:, :, :1], held)


def test_5b_inpaint_holds_a_whole_known_first_frame_and_scales_timesteps_by_a_spatial_mask(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    """As VideoX-Fun's 5B pipelines: a mask keeping the first frame whole holds it (timestep 0 on its tokens);
    a spatial mask gives each token t x the mask resized to the latent grid (its patch's first latent pixel)."""
    pipe = WanPipeline.from_pretrained(folders["5b_inp"])
    settings = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    seen: list[torch.Tensor] = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    masks = np.full((5, 32, 32, 3), 255, dtype=np.uint8)
    masks[0] = 0  # the first frame known whole
    first_known = write_video(masks, tmp_path / "first_known.mp4")
    result = pipe("x", mode="inpaint", video=files["control-video"], mask=first_known, **settings)
    held = pipe.vae.encode(pipe._video_tensor(files["control-video"], 5, 32, 32)[:, :, :1]).cpu()
    torch.testing.assert_close(result.latents[:, :, :1], held)
    assert all(t.dim() == 2 and not t[:, :1].any() and t[:, 1:].gt(0).all() for t in seen)  # (B, L): 1 token a frame

    seen.clear()
    box = np.zeros((5, 64, 64, 3), dtype=np.uint8)
    box[:, :, :32] = 255  # the left half of every frame to generate
    mask = write_video(box, tmp_path / "box.mp4")
    pipe("x", mode="inpaint", video=files["control-video"], mask=mask, **{**settings, "height": 64, "width": 64})
    generate = torch.zeros(1, 1, 5, 64, 64)
    generate[..., :32] = 1.0
    scale = held_timestep_scale(generate, (2, 4, 4))  # (1, F', h, w): trilinear, corners aligned
    expected = scale[:, :, ::2, ::2].flatten(1)  # each 2 x 2 patch's top-left latent pixel
    assert expected.max() == 1 and expected.min() == 0  # generated and kept tokens both present
    for t in seen:  # (B, L) per step: t where the mask generates, 0 where it keeps
        torch.testing.assert_close(t, t.max() * expected.expand_as(t).to(t))


def test_a14b_does_not_hold_the_first_frame(folders: dict[str, Path], files: dict[str, Path]) -> None:
    """The A14B releases see the start image through their InP channels only (the Wan2.1 VAE: no hold)."""
    pipe = WanPipeline.from_pretrained(folders["a14b_control"])
    settings = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    result = pipe("x", image=files["image"], **settings)
    held = pipe.vae.encode(pipe._image_tensor(files["image"], 32, 32)[:, :, None]).cpu()
    assert not torch.allclose(result.latents[:, :, :1], held, atol=1e-3)


@pytest.mark.parametrize(
    ("layout", "experts", "expected"),
    [
        ("5b_inp", False, ("Flow", 5.0, 6.0, None, 50)),
        ("5b_camera", False, ("Flow", 5.0, 6.0, None, 50)),
        ("a14b_control", True, ("Flow", 5.0, 6.0, 6.0, 50)),
        ("a14b_camera", True, ("Flow", 5.0, 6.0, 6.0, 50)),
        # Fun-A14B-InP is Wan2.2 I2V-A14B's architecture: nothing tells them apart, it keeps the layout's defaults.
        ("inp", True, None),
    ],
)
def test_a_release_layout_samples_with_the_release_defaults(
    tmp_path: Path, layout: str, experts: bool, expected: tuple
) -> None:
    """Without a folder config of its own, a Wan2.2-Fun folder takes VideoX-Fun's wan2.2_fun settings."""
    folder = build_tiny_model_folder(tmp_path / layout, layout, boundary=0.9 if experts else None)
    (folder / "videox_fun.yaml").unlink()
    defaults = recognise(folder).defaults
    if expected is None:
        assert defaults == config_for_folder(folder).defaults
        return
    found = (defaults.sampler, defaults.shift, defaults.guidance_scale, defaults.guidance_scale_2, defaults.steps)
    assert found == expected
    if experts:
        assert (defaults.height, defaults.width, defaults.num_frames, defaults.fps) == (480, 832, 81, 16)
