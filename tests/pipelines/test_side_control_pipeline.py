"""FLUX.2 and Qwen-Image with a Fun control file (VideoX-Fun's side-stream control): the control and control_inpaint
modes on tiny folders, the control stream's ``after_proj`` zero giving the base model's output, control images
(canny-, depth-, pose-like) and an inpaint image + mask moving it, one-line refusals, ``videox-fun generate`` on the
built-in tiny control models and the examples.

No diffusers pipeline runs these releases (diffusers' ``QwenImageControlNetPipeline`` is InstantX's ControlNet,
another design), so there is no parity check here; ``tests/models/test_fun_control.py`` checks the transformer with
the side stream against VideoX-Fun's control forward written out, and the control mode's context is checked here
against VideoX-Fun's control-only recipe written out on diffusers' VAE (mask 0, the masked-image channels the
latents of a grey picture; measured max abs difference 0 FLUX.2, 6e-8 Qwen-Image, fp32; 1.9 / 0.91 from zero
latents there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from control_helpers import control_images, write_pngs
from diffusers import AutoencoderKLFlux2, AutoencoderKLQwenImage
from diffusers import Flux2Pipeline as DiffusersFlux2
from diffusers import QwenImagePipeline as DiffusersQwen
from helpers import assert_one_line_refusal, max_diff, read_png, read_sidecar
from safetensors.torch import load_file

from videox_fun.io.files import save_safetensors
from videox_fun.models.flux2.tiny import build_tiny_control_file as build_flux2_control
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.qwenimage.tiny import build_tiny_control_file as build_qwen_control
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.pipelines.flux2 import Flux2Pipeline
from videox_fun.pipelines.qwenimage import QwenImagePipeline

SIZE, STEPS, SEED, PROMPT = 32, 2, 7, "a red circle"
BASES = {  # base: (folder builder and variant, control file builder, pipeline, built-in control model, example)
    "FLUX.2": (build_tiny_flux2_folder, "dev", build_flux2_control, Flux2Pipeline, "Flux2-Fun-Control-Tiny-Random",
               "flux2"),
    "Qwen-Image": (build_tiny_qwenimage_folder, "t2i", build_qwen_control, QwenImagePipeline,
                   "Qwen-Image-Fun-Control-Tiny-Random", "qwenimage"),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(BASES))
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny folder of the base (no control file in its config) and control files beside it: the release's layout
    (mask and masked image), control only, and one with every after_proj zero."""
    build_folder, variant, build_control, pipeline, *_ = BASES[request.param]
    folder = build_folder(tmp_path_factory.mktemp("side_control") / request.param, variant, seed=3)
    files = {"union": build_control(folder / "union.safetensors", seed=11),
             "control only": build_control(folder / "control-only.safetensors", inpaint=False, seed=12)}  # fmt: skip
    state = load_file(str(files["union"]))
    silent = {key: torch.zeros_like(value) if ".after_proj." in key else value for key, value in state.items()}
    files["silent"] = save_safetensors(silent, folder / "silent.safetensors")
    return {"name": request.param, "folder": folder, "pipe": pipeline.from_pretrained(folder), "files": files}


def shapes() -> dict[str, np.ndarray]:
    """Canny-, depth- and pose-like control images."""
    return control_images(SIZE)


def inpaint_inputs() -> dict[str, np.ndarray]:
    """An image and a mask (white = regenerate)."""
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:24, 4:20] = 255
    return {"image": shapes()["depth"][..., ::-1].copy(), "mask": mask}


def run(base: dict, control: str | None, **inputs) -> torch.Tensor:
    """The final latents of one call (the control file ``control`` of the base's, loaded for it)."""
    path = None if control is None else base["files"][control]
    out = base["pipe"](PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, seed=SEED, progress=False,
                       control_path=path, **inputs)  # fmt: skip
    return out.latents[:, :, 0]


def test_after_proj_zero_gives_the_base_models_output(base):
    plain = run(base, None, mode="t2i")
    for image in shapes().values():
        assert max_diff(run(base, "silent", mode="control", control_video=image), plain) == 0.0
    silent = run(base, "silent", mode="control_inpaint", control_video=shapes()["pose"], **inpaint_inputs())
    assert max_diff(silent, plain) == 0.0


@pytest.mark.parametrize("control", ["union", "control only"])
def test_a_control_image_moves_the_output(base, control):
    plain = run(base, None, mode="t2i")
    outputs = {name: run(base, control, mode="control", control_video=image) for name, image in shapes().items()}
    moved = {name: max_diff(out, plain) for name, out in outputs.items()}
    print(f"{base['name']} {control}: moved from t2i by {moved}")
    assert all(value > 1e-3 for value in moved.values())
    assert max_diff(outputs["canny"], outputs["pose"]) > 1e-3 and max_diff(outputs["canny"], outputs["depth"]) > 1e-3
    scaled = run(base, control, mode="control", control_video=shapes()["canny"], control_context_scale=0.0)
    assert max_diff(scaled, plain) == 0.0  # scale 0: no hint reaches the main stream


def test_an_inpaint_image_and_mask_move_the_output(base):
    control = run(base, "union", mode="control", control_video=shapes()["pose"])
    inpaint = run(base, "union", control_video=shapes()["pose"], **inpaint_inputs())  # mode inferred
    other = {**inpaint_inputs(), "image": shapes()["canny"]}
    moved = max_diff(inpaint, control), max_diff(run(base, "union", control_video=shapes()["pose"], **other), inpaint)
    print(f"{base['name']} control_inpaint: moved from control by {moved[0]:.3g}, by another image {moved[1]:.3g}")
    assert min(moved) > 1e-3
    assert max_diff(run(base, "union", mode="control_inpaint", **inpaint_inputs()), inpaint) > 1e-3  # no control


# -- the control mode's context: VideoX-Fun's control-only recipe ----------------------------------------------------
def videox_fun_pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1], as VideoX-Fun's image processors scale them (2 x / 255 - 1)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1


def videox_fun_control_only(name: str, folder: Path, control: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(VideoX-Fun's control-only context (1, N, C + m + C), its masked-image part) written out from
    ``Flux2ControlPipeline`` / ``QwenImageControlPipeline.__call__`` on diffusers' VAE, fed as its predict scripts
    and nodes feed them without an inpaint image: ``inpaint_image = zeros``, ``mask_image = ones * 255``."""
    generate = torch.ones(1, 1, SIZE, SIZE)  # the all-white mask, binarised: 1 = regenerate
    grey = torch.full((1, 3, SIZE, SIZE), -1.0) * (generate < 0.5)  # zeros preprocessed to -1, then masked: 0
    keep = 1 - generate  # mask_condition = 1 - mask, taken at the VAE's latent grid below
    if name == "FLUX.2":
        vae = AutoencoderKLFlux2.from_pretrained(str(folder / "vae")).eval()
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        patchify, pack = DiffusersFlux2._patchify_latents, DiffusersFlux2._pack_latents

        def tokens(pixels: torch.Tensor) -> torch.Tensor:  # (1, N, 128)
            return pack((patchify(vae.encode(pixels).latent_dist.mode()) - mean) / std)

        control, masked = tokens(videox_fun_pixels(control)), tokens(grey)
        mask = pack(patchify(F.interpolate(keep, size=(SIZE // 8, SIZE // 8), mode="nearest")))  # (1, N, 4)
        return torch.cat([control, mask, masked], dim=2), masked
    vae = AutoencoderKLQwenImage.from_pretrained(str(folder / "vae")).eval()
    channels = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1)

    def grid(pixels: torch.Tensor) -> torch.Tensor:  # (1, 16, 1, h, w)
        return (vae.encode(pixels[:, :, None]).latent_dist.mode() - mean) * inverse_std

    h = SIZE // 8
    control, masked = grid(videox_fun_pixels(control)), grid(grey)
    mask = F.interpolate(keep, size=(h, h), mode="nearest")[:, :, None]  # (1, 1, 1, h, w)
    context = torch.cat([control, mask, masked], dim=1)  # (1, 33, 1, h, w)
    return DiffusersQwen._pack_latents(context, 1, context.shape[1], h, h), masked  # (1, N, 132)


def test_the_control_modes_context_is_videox_funs_control_only_recipe(base):
    pipe, control = base["pipe"], shapes()["pose"]
    pipe.use_control(base["files"]["union"])
    inputs = {"control_video": control}
    with torch.no_grad():
        ours = pipe.control_context(pipe.resolve_settings("control", inputs, height=SIZE, width=SIZE), inputs)
        expected, masked = videox_fun_control_only(base["name"], base["folder"], control)
    latent = pipe.vae.latent_channels
    packed = 4 if base["name"] == "Qwen-Image" else 1  # latent pixels per token
    zero_latents = ours.clone()
    zero_latents[..., -latent * packed :] = 0  # the masked image's part as zero latents (diffusers-style padding)
    gap, from_zeros = max_diff(ours, expected), max_diff(ours, zero_latents)
    print(f"{base['name']} control context {tuple(ours.shape)} vs VideoX-Fun's control-only recipe: max abs "
          f"difference {gap:.2g}; from zero masked-image latents {from_zeros:.2g} (grey's latents up to "
          f"{masked.abs().max():.2g})")  # fmt: skip
    assert ours.shape == expected.shape and gap <= 1e-5
    assert from_zeros > 1e-2  # the grey picture's latents, not zeros: this test tells the two recipes apart


def test_the_sidecar_records_the_control(base):
    out = base["pipe"](PROMPT, mode="control", control_video=shapes()["canny"], height=SIZE, width=SIZE,
                       num_inference_steps=STEPS, progress=False, control_path=base["files"]["union"],
                       control_context_scale=0.5)  # fmt: skip
    assert out.settings["mode"] == "control" and out.settings["control_context_scale"] == 0.5
    assert out.settings["control"].endswith("Fun-Controlnet-Union (2 control blocks)")
    assert out.settings["control_path"] == str(base["files"]["union"])


def test_refusals_are_one_line(base, tmp_path):
    pipe = BASES[base["name"]][3].from_pretrained(base["folder"])  # no control file loaded yet
    with pytest.raises(ValueError, match=f"needs a {base['name']} Fun control file") as caught:
        pipe(PROMPT, mode="control", control_video=shapes()["canny"], progress=False)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(ValueError, match="control_inpaint' needs a Fun control file that reads a mask") as caught:
        pipe(PROMPT, mode="control_inpaint", control_path=base["files"]["control only"], progress=False,
             **inpaint_inputs())  # fmt: skip
    assert len(str(caught.value).splitlines()) == 1
    keys = ("control_layers.0.after_proj.weight", "control_all_x_embedder.2-1.weight")
    zimage = save_safetensors({key: torch.zeros(2, 2) for key in keys}, tmp_path / "z.safetensors")
    with pytest.raises(ValueError, match="a Z-Image Fun control file") as caught:
        pipe(PROMPT, mode="control", control_video=shapes()["canny"], control_path=zimage, progress=False)
    assert len(str(caught.value).splitlines()) == 1


# -- videox-fun generate and the examples on the built-in tiny control models ------------------------------------
def cli(name: str) -> list[str]:
    return ["--model", BASES[name][4], "--steps", "2", "--height", "32", "--width", "32", "--quiet"]


@pytest.fixture
def images(tmp_path, monkeypatch) -> dict[str, Path]:
    """Control images and an inpaint image / mask as files; the built-ins cached under tmp_path."""
    from videox_fun.registry import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return write_pngs(tmp_path, {**shapes(), **inpaint_inputs()})


@pytest.mark.parametrize("name", BASES)
def test_generate_control_and_control_inpaint_write_pngs(images, tmp_path, name):
    from videox_fun.cli import main

    out = tmp_path / "edges_out.png"
    flags = ["--control-video", str(images["canny"]), "--control-context-scale", "0.6"]
    assert main(["generate", "--prompt", "a red circle", *flags, "--output", str(out), *cli(name)]) == 0
    record = read_sidecar(out)
    assert read_png(out).shape == (32, 32, 3) and record["mode"] == "control"
    assert record["control_context_scale"] == 0.6 and "Fun-Controlnet-Union" in record["control"]
    out = tmp_path / "inpaint_out.png"
    flags = ["--image", str(images["image"]), "--mask", str(images["mask"]), "--control-video", str(images["pose"])]
    assert main(["generate", "--prompt", "x", *flags, "--output", str(out), *cli(name)]) == 0
    assert read_sidecar(out)["mode"] == "control_inpaint" and read_png(out).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("name", "keys", "said"),
    [
        ("FLUX.2", ["control_layers.0.after_proj.weight", "control_all_x_embedder.2-1.weight"],
         "a Z-Image Fun control file (control_all_x_embedder.*), not a FLUX.2 Fun control file"),
        ("Qwen-Image", ["control_transformer_blocks.0.after_proj.weight", "control_img_in.weight"],
         "a FLUX.2 Fun control file (control_transformer_blocks.*), not a Qwen-Image Fun control file"),
    ],
)  # fmt: skip
def test_another_bases_control_file_is_one_line(images, tmp_path, capsys, name, keys, said):
    from videox_fun.cli import main
    from videox_fun.registry import resolve_model

    other = save_safetensors({key: torch.zeros(2, 2) for key in keys}, tmp_path / "other.safetensors")
    resolve_model(cli(name)[1])  # built first: its build's progress bars are not the refusal's output
    args = ["generate", "--prompt", "x", "--control-video", str(images["canny"]), "--control-path", str(other)]
    assert_one_line_refusal(main, capsys, [*args, *cli(name)], said)


@pytest.mark.parametrize("name", BASES)
def test_the_example_script_writes_a_png(images, tmp_path, name):
    from videox_fun.registry import CACHE_ENV

    script = Path(__file__).resolve().parents[2] / "examples" / BASES[name][5] / "predict_control.py"
    out = tmp_path / "example.png"
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    flags = ["--prompt", "x", "--control-video", str(images["depth"]), "--steps", "2", "--height", "32", "--width",
             "32", "--output", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert read_png(out).shape == (32, 32, 3)
