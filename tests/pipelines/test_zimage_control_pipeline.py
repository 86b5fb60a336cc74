"""Z-Image with a Fun control file: the control and control_inpaint modes against diffusers'
``ZImageControlNetPipeline`` / ``ZImageControlNetInpaintPipeline`` on a tiny folder (same weights and noise), the
control stream's ``after_proj`` zero giving the base model's output, control images (canny-, depth-, pose-like)
moving it, and one-line refusals.

Measured max abs differences of the final latents (fp32, 2 cores, 3 steps, 32x32; latents up to about 3.7):
1.0 control without guidance 0, with guidance 2 (CFG batched) 1.2e-6; 2.1 where the refiner's ``after_proj`` is
zero: control 4.8e-7, control_inpaint 7.2e-7 (the control images' grey levels are scaled to [-1, 1] by
another formula). A 2.x file's control mode is VideoX-Fun's control-only run (its scripts and nodes pass a black
image under an all-white mask: mask 0 and the latents of a grey picture), which diffusers'
``ZImageControlNetInpaintPipeline`` computes from the same inputs; diffusers' ``ZImageControlNetPipeline`` pads
zeros there instead (0.032 away). For 2.x diffusers adds the refiner hints only inside its control model
(it returns the main-block hints alone), VideoX-Fun's control transformer adds them to the main noise refiner too:
we follow the release, so with trained refiner projections the two differ (0.92 on the tiny model).
``pytest tests/pipelines/test_zimage_control_pipeline.py -s`` prints the figures; the bound asserted is 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from control_helpers import control_images, write_pngs
from diffusers import AutoencoderKL, ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline
from helpers import max_diff
from PIL import Image
from safetensors.torch import load_file
from test_zimage_against_diffusers import LATENT, PROMPT, SEED, SIZE, STEPS, TOLERANCE, diffusers_components

from videox_fun.io.files import save_safetensors
from videox_fun.models.zimage.control import control_config, release_of
from videox_fun.models.zimage.tiny import build_tiny_control_file, build_tiny_zimage_folder, tiny_transformer_config
from videox_fun.pipelines.common import seeded_noise
from videox_fun.pipelines.zimage import ZImagePipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_zimage_folder(tmp_path_factory.mktemp("zimage_control") / "Z-Image-Turbo", "turbo", seed=3)


@pytest.fixture(scope="module")
def controls(folder: Path) -> dict[str, Path]:
    """Tiny control files by release; "2.1 quiet refiner": 2.1 with the refiner's after_proj zero."""
    files = {version: build_tiny_control_file(folder / f"control-{version}.safetensors", version, seed=11)
             for version in ("1.0", "2.0", "2.1")}  # fmt: skip
    files["2.1 quiet refiner"] = with_zero(files["2.1"], "control_noise_refiner.", folder / "quiet.safetensors")
    files["silent"] = with_zero(files["2.1"], "", folder / "silent.safetensors")
    return files


def with_zero(path: Path, prefix: str, target: Path) -> Path:
    """A copy of a control file with every ``after_proj`` under ``prefix`` zero."""
    state = load_file(str(path))
    for key in state:
        if key.startswith(prefix) and ".after_proj." in key:
            state[key] = torch.zeros_like(state[key])
    return save_safetensors(state, target)


def shapes() -> dict[str, np.ndarray]:
    """Canny-, depth- and pose-like control images."""
    return control_images(SIZE)


def ours(folder: Path, control: Path | None, **inputs) -> torch.Tensor:
    pipe = ZImagePipeline.from_pretrained(folder)
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False,
               control_path=control, **inputs)  # fmt: skip
    return out.latents[:, :, 0]


def diffusers_pipeline(folder: Path, control: Path, cls: type = ZImageControlNetPipeline):
    """diffusers' control pipeline on the folder's components and the control file (config as ours reads it)."""
    state = load_file(str(control))
    config = control_config(release_of(state), tiny_transformer_config(), "tiny")
    controlnet = ZImageControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    state = {k: v for k, v in state.items() if k in controlnet.state_dict()}  # 2.0: the unused refiner
    controlnet.load_state_dict(state, strict=True)
    return cls(**diffusers_components(folder), controlnet=controlnet.eval())


def theirs(pipe, control_image: np.ndarray, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="latent",
                    control_image=Image.fromarray(control_image), latents=seeded_noise(LATENT, SEED, "cpu"),
                    **inputs).images  # fmt: skip


def report(name: str, a: torch.Tensor, b: torch.Tensor) -> float:
    diff = max_diff(a, b)
    print(f"{name}: max abs difference {diff:.3g} (latents up to {b.abs().max():.3g})")
    return diff


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_1_0_matches_diffusers_control_pipeline(folder, controls, guidance):
    image = shapes()["canny"]
    expected = theirs(diffusers_pipeline(folder, controls["1.0"]), image, guidance_scale=guidance,
                      controlnet_conditioning_scale=0.75)  # fmt: skip
    got = ours(folder, controls["1.0"], mode="control", control_video=image, guidance_scale=guidance)
    assert report(f"1.0 control, guidance {guidance}", got, expected) <= TOLERANCE


def videox_fun_control_only() -> dict[str, Image.Image]:
    """What VideoX-Fun's Z-Image control scripts and nodes give its pipeline without an inpaint image: a black
    image (``torch.zeros``) under an all-white mask (``torch.ones * 255``)."""
    return {"image": Image.new("RGB", (SIZE, SIZE)), "mask_image": Image.new("RGB", (SIZE, SIZE), (255, 255, 255))}


def test_2_1_control_matches_diffusers_on_videox_funs_control_only_inputs(folder, controls):
    image, quiet = shapes()["depth"], controls["2.1 quiet refiner"]
    inpaint = diffusers_pipeline(folder, quiet, ZImageControlNetInpaintPipeline)
    expected = theirs(inpaint, image, guidance_scale=0.0, **videox_fun_control_only())
    got = ours(folder, quiet, mode="control", control_video=image, guidance_scale=0.0)
    assert report("2.1 control (refiner after_proj zero)", got, expected) <= TOLERANCE
    # diffusers' control pipeline pads the mask and masked-image channels with zeros: another context.
    padded = theirs(diffusers_pipeline(folder, quiet), image, guidance_scale=0.0)
    assert report("2.1 control vs diffusers' zero padding (by design)", got, padded) > 1e-3
    # With trained refiner projections the release's refiner hints reach the main stream (diffusers' do not).
    inpaint = diffusers_pipeline(folder, controls["2.1"], ZImageControlNetInpaintPipeline)
    expected = theirs(inpaint, image, guidance_scale=0.0, **videox_fun_control_only())
    got = ours(folder, controls["2.1"], mode="control", control_video=image, guidance_scale=0.0)
    assert report("2.1 control, refiner hints in the main stream (by design)", got, expected) > 1e-3


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_the_2_x_control_context_is_videox_funs_control_only_recipe(folder, controls, version):
    """The control mode's context against ``ZImageControlPipeline.__call__``'s formulas written out on diffusers'
    VAE, fed as VideoX-Fun's scripts feed it: mask 0, the masked-image channels the latents of a grey picture."""
    pipe, control = ZImagePipeline.from_pretrained(folder), shapes()["pose"]
    pipe.use_control(controls[version])
    inputs = {"control_video": control}
    vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()
    with torch.no_grad():
        got = pipe.control_context(pipe.resolve_settings("control", inputs, height=SIZE, width=SIZE), inputs)

        def latents(pixels: torch.Tensor) -> torch.Tensor:  # (1, 16, h, w)
            return (vae.encode(pixels).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor

        generate = torch.ones(1, 1, SIZE, SIZE)  # the all-white mask, binarised: 1 = regenerate
        grey = torch.full((1, 3, SIZE, SIZE), -1.0) * (generate < 0.5)  # zeros preprocessed to -1, then masked: 0
        pixels = torch.from_numpy(control).permute(2, 0, 1)[None].float() / 255 * 2 - 1  # (1, 3, H, W)
        masked = latents(grey)
        mask = F.interpolate(1 - generate, size=masked.shape[-2:], mode="nearest")  # (1, 1, h, w) of zeros
        expected = torch.cat([latents(pixels), mask, masked], dim=1)[:, :, None]  # (1, 33, 1, h, w)
    padded = torch.cat([expected[:, :16], torch.zeros_like(expected[:, 16:])], dim=1)  # diffusers' zero padding
    gap, from_zeros = max_diff(got, expected), max_diff(got, padded)
    print(f"{version} control context {tuple(got.shape)} vs VideoX-Fun's control-only recipe: max abs difference "
          f"{gap:.2g}; from zeros in the mask and masked-image channels {from_zeros:.2g}")  # fmt: skip
    assert got.shape == expected.shape and gap <= TOLERANCE
    assert from_zeros > 1e-2  # the grey picture's latents, not zeros: this test tells the two recipes apart


def test_2_1_inpaint_matches_diffusers_inpaint_pipeline(folder, controls):
    picture = shapes()["depth"][..., ::-1].copy()
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:24, 4:20] = 255  # white = regenerate
    pipe = diffusers_pipeline(folder, controls["2.1 quiet refiner"], ZImageControlNetInpaintPipeline)
    expected = theirs(pipe, shapes()["pose"], image=Image.fromarray(picture), mask_image=Image.fromarray(mask),
                      guidance_scale=0.0)  # fmt: skip
    got = ours(folder, controls["2.1 quiet refiner"], image=picture, mask=mask, control_video=shapes()["pose"],
               guidance_scale=0.0)  # fmt: skip  # mode inferred: control_inpaint
    assert report("2.1 control_inpaint (refiner after_proj zero)", got, expected) <= TOLERANCE


def test_after_proj_zero_gives_the_base_models_output(folder, controls):
    base = ours(folder, None, mode="t2i", guidance_scale=0.0)
    for image in shapes().values():
        silent = ours(folder, controls["silent"], mode="control", control_video=image, guidance_scale=0.0)
        assert max_diff(silent, base) == 0.0


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.1"])
def test_a_control_image_moves_the_output(folder, controls, version):
    base = ours(folder, None, mode="t2i", guidance_scale=0.0)
    outputs = {name: ours(folder, controls[version], mode="control", control_video=image, guidance_scale=0.0)
               for name, image in shapes().items()}  # fmt: skip
    assert all(max_diff(out, base) > 1e-3 for out in outputs.values())
    assert max_diff(outputs["canny"], outputs["pose"]) > 1e-3 and max_diff(outputs["canny"], outputs["depth"]) > 1e-3
    scaled = ours(folder, controls[version], mode="control", control_video=shapes()["canny"], guidance_scale=0.0,
                  control_context_scale=0.0)  # fmt: skip
    assert max_diff(scaled, base) == 0.0  # scale 0: no hint reaches the main stream


def test_refusals_are_one_line(folder, controls, tmp_path):
    pipe = ZImagePipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="needs a Z-Image Fun control file") as caught:
        pipe(PROMPT, mode="control", control_video=shapes()["canny"], progress=False)
    assert len(str(caught.value).splitlines()) == 1
    picture, mask = shapes()["depth"], shapes()["canny"]
    with pytest.raises(ValueError, match=r"control_inpaint' needs a 2\.x Fun control file"):
        pipe(PROMPT, mode="control_inpaint", image=picture, mask=mask, control_path=controls["1.0"], progress=False)
    qwen = save_safetensors({"control_blocks.0.img_mlp.net.0.proj.weight": torch.zeros(2, 2),
                             "control_img_in.weight": torch.zeros(2, 2)}, tmp_path / "qwen.safetensors")  # fmt: skip
    with pytest.raises(ValueError, match="a Qwen-Image Fun control file") as caught:
        pipe(PROMPT, mode="control", control_video=shapes()["canny"], control_path=qwen, progress=False)
    assert len(str(caught.value).splitlines()) == 1


# -- videox-fun generate and the example on the built-in Z-Image-Turbo-Fun-Control-Tiny-Random ---------------------
CLI = ["--model", "Z-Image-Turbo-Fun-Control-Tiny-Random", "--steps", "2", "--height", "32", "--width", "32", "--quiet"]


@pytest.fixture
def images(tmp_path, monkeypatch) -> dict[str, Path]:
    """Control images and an inpaint image / mask as files; the built-ins cached under tmp_path."""
    from videox_fun.registry import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return write_pngs(tmp_path, {**shapes(), "mask": shapes()["canny"][..., :1].repeat(3, 2)})


def test_generate_control_and_control_inpaint_write_pngs(images, tmp_path):
    from helpers import read_png, read_sidecar

    from videox_fun.cli import main

    out = tmp_path / "pose_out.png"
    flags = ["--control-video", str(images["pose"]), "--control-context-scale", "0.9"]
    assert main(["generate", "--prompt", "a person", *flags, "--output", str(out), *CLI]) == 0
    record = read_sidecar(out)
    assert read_png(out).shape == (32, 32, 3) and record["mode"] == "control"
    assert record["control_context_scale"] == 0.9 and record["control"].startswith("Fun-Controlnet-Union 2.1")
    out = tmp_path / "inpaint_out.png"
    flags = ["--image", str(images["depth"]), "--mask", str(images["mask"]), "--control-video", str(images["canny"])]
    assert main(["generate", "--prompt", "x", *flags, "--output", str(out), *CLI]) == 0
    assert read_sidecar(out)["mode"] == "control_inpaint"


def test_another_bases_control_file_is_one_line(images, tmp_path, capsys):
    from helpers import assert_one_line_refusal

    from videox_fun.cli import main
    from videox_fun.registry import resolve_model

    flux2 = save_safetensors({"control_transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2),
                              "control_img_in.weight": torch.zeros(2, 2)}, tmp_path / "flux2.safetensors")  # fmt: skip
    resolve_model(CLI[1])  # built first: its build's progress bars are not the refusal's output
    args = ["generate", "--prompt", "x", "--control-video", str(images["canny"]), "--control-path", str(flux2)]
    assert_one_line_refusal(main, capsys, [*args, *CLI], "a FLUX.2 Fun control file (control_transformer_blocks.*)")


def test_the_example_script_writes_a_png(images, tmp_path):
    import os
    import subprocess
    import sys

    from videox_fun.registry import CACHE_ENV

    script = Path(__file__).resolve().parents[2] / "examples" / "z_image" / "predict_control.py"
    out = tmp_path / "example.png"
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    flags = ["--prompt", "x", "--control-video", str(images["depth"]), "--steps", "1", "--height", "32", "--width",
             "32", "--output", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
