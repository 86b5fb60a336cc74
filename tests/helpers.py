"""Helpers shared by tests in several folders: a PyAV decode, a Wan-Animate preprocessing folder, a free port, a
seeded tiny transformer, max differences, and diffusers' own model and pipeline holding the weights of ours.

Importable as ``helpers`` from every test module: ``tests/conftest.py`` puts this folder on ``sys.path``.
Helpers used by one folder only stay there (``runtime/parallel_harness.py``, ``training/training_helpers.py``,
``models/model_helpers.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import av
import numpy as np
import torch
from diffusers import WanAnimateTransformer3DModel as DiffusersAnimate
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel as DiffusersWan
from diffusers import WanVACETransformer3DModel as DiffusersVace

from videox_fun.io.video import write_video
from videox_fun.models.wan.keys import animate_config_to_diffusers, original_config_to_diffusers
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.pipelines.schedulers import make_scheduler
from videox_fun.pipelines.wan import WanPipeline

# The bound of a wait that only catches a hang (a server that never answers, a child that never exits, a job
# that never starts). The suite must pass on a 2-core machine shared with another CPU-heavy job (issue #22),
# where a server's start alone took over 120 s; a test that passes never waits it out, so generous costs nothing.
HANG_GUARD_S = 600


def decode_video(path: str | Path) -> np.ndarray:
    """Every frame of the first video stream as RGB, decoded by PyAV itself (not our reader): (F, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def frame_count_and_size(path: str | Path) -> tuple[int, tuple[int, int]]:
    """Frame count and (height, width) of a video file, from :func:`decode_video`."""
    frames = decode_video(path)
    return len(frames), frames.shape[1:3]


def write_animate_sources(folder: Path, frames: int, size: int) -> Path:
    """A preprocessing folder as Wan-Animate's writes it (replacement files too), random pixels: ``frames`` pose,
    background and mask frames of ``size`` x ``size``, 512 x 512 face crops, a 24 x 40 reference; the person (white in
    the mask) is the square of pixels 6 to 21 (a 4 x 4 latent grid of 32 x 32 samples pixels 0, 8, 16, 24)."""
    rng = np.random.default_rng(0)
    write_video(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), folder / "src_pose.mp4")
    write_video(rng.integers(0, 256, (frames, 512, 512, 3), dtype=np.uint8), folder / "src_face.mp4")
    write_video(rng.integers(0, 256, (1, 24, 40, 3), dtype=np.uint8), folder / "src_ref.png")
    write_video(rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), folder / "src_bg.mp4")
    mask = np.zeros((frames, size, size, 3), dtype=np.uint8)
    mask[:, 6:22, 6:22] = 255
    write_video(mask, folder / "src_mask.mp4")
    return folder


def seeded_transformer(config: Mapping, seed: int = 0) -> WanTransformer3DModel:
    """A Wan transformer of ``config`` in eval mode, its initial weights drawn after ``torch.manual_seed(seed)``.

    The global generator is left where the initialisation leaves it, so what a test draws next is reproducible too.
    """
    torch.manual_seed(seed)
    return WanTransformer3DModel.from_config(config).eval()


def meta_model(model_class: type, config: Mapping) -> torch.nn.Module:
    """A model of ``config`` built on the meta device (no memory): released-size counts and shapes."""
    with torch.device("meta"):
        return model_class.from_model_config(config)


def parameter_count(model: torch.nn.Module) -> int:
    """How many parameters a model has."""
    return sum(p.numel() for p in model.parameters())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two tensors, computed in float32."""
    return (a.float() - b.float()).abs().max().item()


def assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor, epsilons: float = 16.0) -> None:
    """``actual`` equals ``expected`` up to float rounding: within ``epsilons`` machine epsilons of their dtype
    times the largest magnitude in ``expected``.

    For two computations of one result in different orders (a convolution over a whole clip against one
    per frame): their rounding differs by a few epsilons of the largest term, whatever the element, so a
    fixed absolute tolerance fails on small elements of a large tensor on one machine and passes on another.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    tolerance = epsilons * torch.finfo(expected.dtype).eps * max(scale, 1.0)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tolerance)


def state_dict_max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest absolute difference over all tensors of two state dicts, which must have the same keys."""
    assert a.keys() == b.keys(), sorted(set(a.keys()) ^ set(b.keys()))
    return max(max_diff(a[key], b[key]) for key in a)


def diffusers_twin(model: WanTransformer3DModel, tmp_path: Path, name: str = "ours") -> DiffusersWan:
    """diffusers' own transformer with ``model``'s weights, read from our original-layout file.

    Through diffusers' ``from_single_file``, its own reader of the released layout.
    """
    folder = tmp_path / name
    model.save_original(folder)
    config_dir = folder / "diffusers_config"
    config_dir.mkdir()
    config = {"_class_name": "WanTransformer3DModel", **original_config_to_diffusers(dict(model.config))}
    (config_dir / "config.json").write_text(json.dumps(config))
    single_file = folder / "diffusion_pytorch_model.safetensors"
    return DiffusersWan.from_single_file(str(single_file), config=str(config_dir), torch_dtype=torch.float32).eval()


def diffusers_vace_twin(model: WanTransformer3DModel, folder: Path) -> DiffusersVace:
    """diffusers' VACE transformer holding a VACE ``model``'s weights, read from our original-layout file by
    diffusers' own single-file converter."""
    model.save_original(folder)
    config_dir = folder / "diffusers_config"
    config_dir.mkdir()
    config = {
        "_class_name": "WanVACETransformer3DModel",
        **original_config_to_diffusers(dict(model.config)),
        "vace_layers": list(model.config.vace_layers),
        "vace_in_channels": model.config.vace_in_dim,
    }
    (config_dir / "config.json").write_text(json.dumps(config))
    single_file = str(folder / "diffusion_pytorch_model.safetensors")
    return DiffusersVace.from_single_file(single_file, config=str(config_dir), torch_dtype=torch.float32).eval()


def diffusers_animate_twin(model: WanTransformer3DModel, folder: Path) -> DiffusersAnimate:
    """diffusers' Wan-Animate transformer holding an Animate ``model``'s weights, read from our original-layout file by
    diffusers' own single-file converter (which keys on ``motion_encoder.dec.direction.weight``)."""
    model.save_original(folder)
    config_dir = folder / "diffusers_config"
    config_dir.mkdir()
    config = {"_class_name": "WanAnimateTransformer3DModel", **animate_config_to_diffusers(dict(model.config))}
    (config_dir / "config.json").write_text(json.dumps(config))
    single_file = str(folder / "diffusion_pytorch_model.safetensors")
    return DiffusersAnimate.from_single_file(single_file, config=str(config_dir), torch_dtype=torch.float32).eval()


def diffusers_pipeline(ours: WanPipeline, tmp_path: Path, **experts) -> DiffusersWanPipeline:
    """diffusers' WanPipeline holding the same weights as ``ours`` (``experts``: transformer_2, boundary_ratio)."""
    return DiffusersWanPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", shift=3.0),
        transformer=diffusers_twin(ours.transformer, tmp_path, "high" if experts else "ours"),
        **experts,
    )


def sharpen_vae_posterior(folder: Path) -> None:
    """Make a diffusers-layout folder's ``AutoencoderKL`` posterior deterministic: log-variance channels = -30
    (diffusers clamps there, std 3e-7), so diffusers' posterior samples equal our posterior modes."""
    from safetensors.torch import load_file, save_file

    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    half = state["encoder.conv_out.bias"].shape[0] // 2
    state["encoder.conv_out.weight"][half:] = 0.0
    state["encoder.conv_out.bias"][half:] = -30.0
    save_file(state, str(path))


# -- image CLIs (PNG outputs with a JSON sidecar) --------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    """An image file's RGB pixels (H, W, 3) uint8, checked to be a PNG."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """uint8 (H, W, 3) pixels as a PNG file."""
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def read_sidecar(path: Path) -> dict:
    """The JSON sidecar written beside an output."""
    return json.loads(Path(path).with_suffix(".json").read_text())


def assert_one_line_refusal(main, capsys, args: list[str], message: str) -> None:
    """``main(args)`` exits 2 with ``message`` as the only line on stderr (what ran before it is dropped)."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
