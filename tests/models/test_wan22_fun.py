"""The Wan2.2-Fun releases (A14B and 5B InP, Control, Control-Camera): released counts on the meta device, their
variants and modes, and the camera adapter's unshuffle following the VAE (8 for dim 5120, 16 for dim 3072)."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import random_model

from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import PRESETS, tiny_config, variant_of

# Parameters per transformer (each A14B expert is one), as VideoX-Fun's releases count them.
RELEASED_COUNTS = {
    "Wan2.2-Fun-A14B-InP": 14_288_901_184,
    "Wan2.2-Fun-A14B-Control": 14_289_561_664,
    "Wan2.2-Fun-A14B-Control-Camera": 14_792_233_024,
    "Wan2.2-Fun-5B-InP": 5_000_426_688,
    "Wan2.2-Fun-5B-Control": 5_001_609_408,
    "Wan2.2-Fun-5B-Control-Camera": 5_245_802_688,
}
INP_MODES = ("t2v", "i2v", "flf2v", "inpaint", "v2v")
CONTROL_MODES = ("control", "inpaint", "i2v", "t2v", "v2v")
CAMERA_MODES = ("camera", "v2v")


def meta_model(name: str) -> WanTransformer3DModel:
    """A released transformer built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return WanTransformer3DModel.from_config(PRESETS[name])


@pytest.mark.parametrize(("preset", "count"), sorted(RELEASED_COUNTS.items()))
def test_released_parameter_counts(preset: str, count: int) -> None:
    assert sum(p.numel() for p in meta_model(preset).parameters()) == count


@pytest.mark.parametrize(
    ("preset", "channels", "modes", "first_frame"),
    [
        ("Wan2.2-Fun-A14B-InP", ("mask", "masked_video"), INP_MODES, False),
        ("Wan2.2-Fun-A14B-Control", ("control", "mask", "masked_video"), CONTROL_MODES, False),
        ("Wan2.2-Fun-A14B-Control-Camera", ("mask", "masked_video"), CAMERA_MODES, False),
        # 5B: the Wan2.2 VAE compresses 16x, and VideoX-Fun's pipelines then hold a known first frame.
        ("Wan2.2-Fun-5B-InP", ("mask", "masked_video"), INP_MODES, True),
        ("Wan2.2-Fun-5B-Control", ("control", "mask", "masked_video"), CONTROL_MODES, True),
        ("Wan2.2-Fun-5B-Control-Camera", ("mask", "masked_video"), CAMERA_MODES, True),
    ],
)
def test_variants_and_their_modes(preset: str, channels: tuple, modes: tuple, first_frame: bool) -> None:
    variant = variant_of(PRESETS[preset])
    assert tuple(kind for kind, _ in variant.channels) == channels
    assert variant.modes == modes and variant.first_frame == first_frame
    assert variant.ref_image == preset.endswith("-Control")  # ref_conv on the Control releases only
    assert variant.camera == preset.endswith("-Camera")
    width = PRESETS[preset]["out_dim"]
    assert dict(variant.channels)["masked_video"] == width  # 48 for 5B: 100 = 48 + 4 + 48


def test_released_layouts() -> None:
    a14b, a14b_camera = meta_model("Wan2.2-Fun-A14B-Control"), meta_model("Wan2.2-Fun-A14B-Control-Camera")
    five, five_camera = meta_model("Wan2.2-Fun-5B-Control"), meta_model("Wan2.2-Fun-5B-Control-Camera")
    assert not a14b.uses_clip and not five.uses_clip  # Wan2.2's experts and 5B have no CLIP branch
    assert a14b.patch_embedding.in_channels == 52 and five.patch_embedding.in_channels == 148
    assert a14b.ref_conv.in_channels == 16 and five.ref_conv.in_channels == 48  # a reference latent of the VAE
    assert a14b_camera.control_adapter.unshuffle.downscale_factor == 8  # dim 5120: Wan2.1 VAE, 8x
    assert five_camera.control_adapter.unshuffle.downscale_factor == 16  # dim 3072: Wan2.2 VAE, 16x
    assert five_camera.control_adapter.conv.in_channels == 24 * 16 * 16


def test_5b_camera_adapter_meets_the_token_grid() -> None:
    """Pluecker rays at pixel size reach the 5B token grid (pixels / 32) through the 16x unshuffle."""
    model = random_model(tiny_config("5b_camera"))
    frames, height, width = 2, 64, 96  # latents (48, 2, 4, 6) of the 16x VAE
    x, y = torch.randn(1, 48, frames, 4, 6), torch.randn(1, 52, frames, 4, 6)
    rays = torch.randn(1, 24, frames, height, width)
    with torch.no_grad():
        with_rays = model(x, torch.tensor([500.0]), torch.randn(1, 8, 32), y=y, camera=rays)
        without = model(x, torch.tensor([500.0]), torch.randn(1, 8, 32), y=y)
    assert with_rays.shape == x.shape and not torch.allclose(with_rays, without)


def test_camera_adapter_width_read_off_a_5b_checkpoint_without_the_field(tmp_path) -> None:
    """A 5B Control-Camera config.json naming no adapter fields loads: the adapter's input width comes from
    its weight with the 5B unshuffle (24 rays x 16 x 16), not Wan2.1's 8 x 8."""
    config = tiny_config("5b_camera")
    model = random_model(config)
    model.save_original(tmp_path)
    bare = {k: v for k, v in config.items() if k not in ("add_control_adapter", "downscale_factor_control_adapter")}
    (tmp_path / "config.json").write_text(json.dumps(bare))
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.in_dim_control_adapter == 24
    assert loaded.control_adapter.unshuffle.downscale_factor == 16
