"""WanVAE against diffusers' AutoencoderKLWan with the same weights, and both checkpoint layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.vae import (
    WAN22_VAE_CONFIG,
    WanVAE,
    has_nested_levels,
    tiny_vae_config,
    tiny_wan22_vae_config,
    wan_vae_to_diffusers,
    wan_vae_to_original,
)


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    return WanVAE.from_config(tiny_vae_config()).eval()


def _video(frames: int = 5, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1  # (B, 3, F, H, W)


def _statistics(model: AutoencoderKLWan) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)
    return mean, std


@torch.no_grad()
def test_encode_decode_equal_diffusers_plus_normalisation(vae: WanVAE) -> None:
    raw: AutoencoderKLWan = vae.model
    mean, std = _statistics(raw)
    assert mean.abs().sum() > 0 and not torch.allclose(std, torch.ones_like(std))  # the real Wan2.1 numbers
    video = _video()

    latents = vae.encode(video)
    expected = (raw.encode(video).latent_dist.mode() - mean) / std
    assert latents.shape == (1, 16, 2, 4, 4)
    # not bit-equal: on a CPU ours runs the convolutions on oneDNN (models/cpu_kernels.py)
    assert (latents - expected).abs().max().item() < 1e-5

    sampled = vae.encode(video, generator=torch.Generator().manual_seed(7), sample=True)
    posterior = raw.encode(video).latent_dist
    expected_sample = (posterior.sample(generator=torch.Generator().manual_seed(7)) - mean) / std
    assert (sampled - expected_sample).abs().max().item() < 1e-5
    assert not torch.equal(sampled, latents)

    decoded = vae.decode(latents)
    expected_video = raw.decode(latents * std + mean).sample.clamp(-1, 1)
    assert decoded.shape == video.shape
    assert (decoded - expected_video).abs().max().item() < 1e-5
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_properties_and_frame_counts(vae: WanVAE) -> None:
    assert (vae.z_dim, vae.temporal_compression, vae.spatial_compression) == (16, 4, 8)
    for k in (0, 1, 2, 4):
        assert vae.latent_shape(4 * k + 1, 64, 48) == (k + 1, 8, 6)
    with torch.no_grad():
        assert vae.encode(_video(frames=9, height=16, width=24)).shape == (1, 16, 3, 2, 3)
    with pytest.raises(ValueError, match="4k\\+1 frames; got 6 \\(use 5 or 9\\)"):
        vae.latent_shape(6, 32, 32)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(_video(frames=1, height=20, width=32))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 4, 1, 2, 2))
    # a Wan2.2-style config: 16x spatial from the patch size, 48 latent channels
    with torch.device("meta"):
        wan22 = WanVAE(
            AutoencoderKLWan(
                base_dim=160,
                decoder_base_dim=256,
                z_dim=48,
                is_residual=True,
                in_channels=12,
                out_channels=12,
                patch_size=2,
                latents_mean=[0.0] * 48,
                latents_std=[1.0] * 48,
            )
        )
    assert (wan22.z_dim, wan22.temporal_compression, wan22.spatial_compression, wan22.video_channels) == (
        48,
        4,
        16,
        3,
    )


def test_original_layout_round_trip(vae: WanVAE, tmp_path: Path) -> None:
    state = vae.model.state_dict()
    original = wan_vae_to_original(state, vae.config)
    # names of the original Wan2.1 module (wan/modules/vae.py): flat Sequentials, residual.N, head.N
    for key in (
        "encoder.conv1.weight",
        "conv1.weight",
        "conv2.bias",
        "encoder.downsamples.5.time_conv.weight",
        "encoder.downsamples.3.shortcut.weight",
        "encoder.middle.1.to_qkv.weight",
        "decoder.head.2.bias",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.upsamples.11.resample.1.weight",
        "decoder.upsamples.14.residual.6.weight",
    ):
        assert key in original, key
    assert wan_vae_to_diffusers(original).keys() == state.keys()

    path = vae.save_original(tmp_path / "Wan2.1_VAE.pth")
    assert json.loads((tmp_path / "config.json").read_text())["base_dim"] == 8
    loaded_file = torch.load(path, weights_only=True)
    assert loaded_file.keys() == original.keys()

    for source in (path, tmp_path):  # the file, or the model folder that holds it
        reloaded = WanVAE.from_pretrained(source)
        for key, value in reloaded.model.state_dict().items():
            assert torch.equal(value, state[key]), key
    video = _video()
    with torch.no_grad():
        latents = vae.encode(video)
        assert torch.equal(reloaded.encode(video), latents)
        assert torch.equal(reloaded.decode(latents), vae.decode(latents))

    as_safetensors = vae.save_original(tmp_path / "st" / "vae.safetensors")
    assert load_file(as_safetensors).keys() == original.keys()
    assert WanVAE.from_pretrained(as_safetensors).model.state_dict().keys() == state.keys()


def test_full_size_key_conversion_is_invertible() -> None:
    with torch.device("meta"):
        model = AutoencoderKLWan()  # the Wan2.1 VAE: 194 tensors, 126,892,531 parameters
    state = model.state_dict()
    original = wan_vae_to_original(state, model.config)
    assert len(original) == 194 and sum(v.numel() for v in original.values()) == 126_892_531
    assert wan_vae_to_diffusers(original).keys() == state.keys()
    with pytest.raises(CheckpointMismatchError, match=r"extra\.weight"):
        wan_vae_to_original({**state, "extra.weight": torch.zeros(1)}, model.config)


def test_missing_or_unconverted_keys_are_named(vae: WanVAE, tmp_path: Path) -> None:
    original = wan_vae_to_original(vae.model.state_dict(), vae.config)
    (tmp_path / "config.json").write_text(json.dumps(tiny_vae_config()))

    missing = {k: v for k, v in original.items() if k != "decoder.upsamples.4.shortcut.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    # the strict check speaks diffusers names: the converted name of the dropped key
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing keys: decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.weight",
    ):
        WanVAE.from_pretrained(tmp_path / "missing.pth")

    stray = {**original, "decoder.upsamples.99.residual.0.gamma": torch.ones(1)}
    torch.save(stray, tmp_path / "stray.pth")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: decoder\.upsamples\.99"):
        WanVAE.from_pretrained(tmp_path / "stray.pth")

    misshaped = {**original, "conv2.weight": torch.zeros(16, 16, 1, 1, 2)}
    torch.save(misshaped, tmp_path / "misshaped.pth")
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped keys: post_quant_conv\.weight"):
        WanVAE.from_pretrained(tmp_path / "misshaped.pth")


def test_diffusers_folder_loads_strictly(vae: WanVAE, tmp_path: Path) -> None:
    folder = vae.save_pretrained(tmp_path / "model" / "vae")
    for source in (folder, tmp_path / "model"):  # the vae folder or the diffusers model root
        reloaded = WanVAE.from_pretrained(source, dtype=torch.bfloat16)
        assert reloaded.dtype == torch.bfloat16
        assert all(torch.equal(v, vae.model.state_dict()[k].bfloat16()) for k, v in reloaded.model.state_dict().items())

    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.extra.weight"] = torch.zeros(2)  # diffusers' from_pretrained would only warn
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: decoder\.extra\.weight"):
        WanVAE.from_pretrained(folder)


def test_a_transformer_config_beside_the_vae_is_not_taken_for_its_config(vae: WanVAE, tmp_path: Path) -> None:
    # Wan release folders hold the DiT's config.json next to Wan2.1_VAE.pth.
    vae.save_original(tmp_path / "Wan2.1_VAE.pth", write_config=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t2v", "dim": 1536, "num_layers": 30}))
    vae.save_original(tmp_path / "Wan2.1_VAE.pth")  # and saving does not overwrite it
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "t2v"
    # so the Wan2.1 defaults (base_dim 96) are used, which these tiny weights do not fit
    with pytest.raises(
        CheckpointMismatchError,
        match=r"decoder\.conv_out\.weight \(checkpoint \(3, 8, 3, 3, 3\), model \(3, 96, 3, 3, 3\)\)",
    ):
        WanVAE.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        WanVAE.from_pretrained(tmp_path / "nothing_here")
    (tmp_path / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(FileNotFoundError, match="cannot tell which file"):
        WanVAE.from_pretrained(tmp_path)


@torch.no_grad()
def test_tiling_delegates_to_diffusers_and_stays_close(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = WanVAE.from_config(tiny_vae_config()).eval()
    # Tiles are seamless only for a decoder whose reach stays inside the tile overlap; a random
    # one's global mid-block attention and deep residual stacks see the whole frame, so make them
    # pass-through (as a trained VAE's nearly are, locally) and keep the convolutions random.
    for attention in vae.model.decoder.mid_block.attentions:
        attention.proj.weight.zero_()
        attention.proj.bias.zero_()
    for name, parameter in vae.model.decoder.named_parameters():
        if ".conv2." in name:
            parameter.zero_()
    latents = torch.randn(1, 16, 2, 12, 12, generator=torch.Generator().manual_seed(3))  # 96x96 pixels

    whole = vae.decode(latents)
    vae.enable_tiling(tile_size=64, tile_stride=32)
    assert vae.tiling
    tiled = vae.decode(latents)
    assert vae.tiling

    raw = vae.model  # the same call straight to diffusers' tiled decoder
    mean, std = _statistics(raw)
    expected = raw.tiled_decode(latents * std + mean).sample.clamp(-1, 1)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)  # ours: oneDNN convolutions on a CPU

    assert tiled.shape == whole.shape == (1, 3, 5, 96, 96)
    difference = (tiled - whole).abs()
    spread = (whole - whole.mean()).abs().mean()
    assert difference.mean() < 0.05 * spread and difference.max() < 0.2
    assert not torch.equal(tiled, whole)  # it really went through tiles

    video = _video(frames=5, height=96, width=96)
    tiled_latents = vae.encode(video)
    torch.testing.assert_close(tiled_latents, (raw.tiled_encode(video)[:, :16] - mean) / std, atol=1e-5, rtol=0)
    vae.disable_tiling()
    assert vae.encode(video).shape == tiled_latents.shape == (1, 16, 2, 12, 12)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.enable_tiling(tile_size=60)


def diffusers_name_as_convert_script_gives(key: str) -> str:
    """The diffusers name of an original Wan2.2 VAE key by the rules of diffusers' own converter
    (scripts/convert_wan_to_diffusers.py, convert_vae_22): fixed names, string replaces, dropped indices."""
    parts = key.split(".")
    if len(parts) == 2:  # the convolutions around the latent
        return {"conv1": "quant_conv", "conv2": "post_quant_conv"}[parts[0]] + "." + parts[1]
    side, block, rest = parts[0], parts[1], parts[2:]
    if block == "conv1":
        return f"{side}.conv_in.{rest[0]}"
    if block == "head":
        return f"{side}.{ {'0': 'norm_out', '2': 'conv_out'}[rest[0]] }.{rest[1]}"
    if block == "middle" and rest[0] == "1":
        return f"{side}.mid_block.attentions.0." + ".".join(rest[1:])
    if block == "middle":
        name = f"{side}.mid_block.resnets.{int(rest[0]) // 2}." + ".".join(rest[1:])
    elif "residual" in key or "shortcut" in key:
        name = (
            f"{side}.{ {'downsamples': 'down_blocks', 'upsamples': 'up_blocks'}[block] }.{rest[0]}.resnets."
            + ".".join(rest[2:])
        )
    else:  # the resampler: its list index is dropped
        sampler = {"downsamples": "down_blocks.{}.downsampler", "upsamples": "up_blocks.{}.upsampler"}[block]
        return f"{side}.{sampler.format(rest[0])}." + ".".join(rest[3:])
    for old, new in ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                     (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut.")):  # fmt: skip
        name = name.replace(old, new)
    return name


def test_wan22_vae_original_layout_round_trip_agrees_with_diffusers_converter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = WanVAE.from_config(tiny_wan22_vae_config()).eval()
    state = vae.model.state_dict()
    original = wan_vae_to_original(state, vae.config)
    assert has_nested_levels(original)
    expected = [
        "encoder.downsamples.1.downsamples.2.time_conv.weight",
        "decoder.upsamples.0.upsamples.3.resample.1.weight",
    ]
    expected += ["decoder.upsamples.2.upsamples.0.shortcut.weight", "encoder.middle.2.residual.6.weight"]
    assert all(key in original for key in expected)
    assert {diffusers_name_as_convert_script_gives(k) for k in original} == set(state)

    path = vae.save_original(tmp_path / "Wan2.2_VAE.pth")
    for source in (path, tmp_path):
        reloaded = WanVAE.from_pretrained(source)
        assert all(torch.equal(value, state[key]) for key, value in reloaded.model.state_dict().items())
    video = _video(frames=5, height=32, width=32)
    with torch.no_grad():
        latents = vae.encode(video)
        assert latents.shape == (1, 48, 2, 2, 2)
        assert torch.equal(reloaded.decode(latents), vae.decode(latents))


def test_released_wan22_vae_structure_converts_both_ways() -> None:
    with torch.device("meta"):
        model = AutoencoderKLWan(**WAN22_VAE_CONFIG)
    state = model.state_dict()
    original = wan_vae_to_original(state, model.config)
    assert len(original) == len(state) and has_nested_levels(original)
    assert {diffusers_name_as_convert_script_gives(k) for k in original} == set(state)


def test_a_bare_wan22_vae_file_is_read_with_the_released_config(tmp_path: Path) -> None:
    vae = WanVAE.from_config(tiny_wan22_vae_config())
    path = vae.save_original(tmp_path / "Wan2.2_VAE.pth", write_config=False)  # as released: no config.json
    # Nested levels say Wan2.2: the released config (decoder input width 1024) is taken, so these tiny
    # weights mis-shape against it, while every key name converts (none is missing or unexpected).
    with pytest.raises(
        CheckpointMismatchError,
        match=r"mis-shaped keys: decoder\.conv_in\.bias \(checkpoint \(32,\), model \(1024,\)\)",
    ) as err:
        WanVAE.from_pretrained(path)
    assert "missing keys" not in str(err.value) and "unexpected keys" not in str(err.value)
