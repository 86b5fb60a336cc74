"""The Wan transformer: parity with diffusers, released sizes, loading formats, Fun extensions."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_close_to_rounding, diffusers_twin
from model_helpers import random_model
from safetensors.torch import load_file, save_file

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.keys import diffusers_to_original_keys, original_to_diffusers_keys
from videox_fun.models.wan.transformer import WanTransformer3DModel, read_transformer_weights, rope_axis_dims
from videox_fun.models.wan.variants import PRESETS, tiny_config, variant_of


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_matches_diffusers_with_same_weights(variant, tmp_path):
    # diffusers splits i2v context at (length - 512), so the parity configs use the released text_len.
    model = random_model(tiny_config(variant, text_len=512))
    reference = diffusers_twin(model, tmp_path)
    torch.manual_seed(1)
    b, f, h, w = 2, 3, 8, 10
    x = torch.randn(b, 16, f, h, w)
    t = torch.tensor([999.0, 250.0])
    text = torch.randn(b, 20, 32)
    y = torch.randn(b, 20, f, h, w) if variant == "i2v" else None
    clip = torch.randn(b, 257, 1280) if variant == "i2v" else None
    with torch.no_grad():
        ours = model(x, t, text, clip_fea=clip, y=y)
        padded = torch.nn.functional.pad(text, (0, 0, 0, 512 - 20))  # released contexts are zero-padded
        theirs = reference(
            x if y is None else torch.cat([x, y], 1), t, padded, encoder_hidden_states_image=clip, return_dict=False
        )[0]
    assert ours.shape == (b, 16, f, h, w)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_per_token_timesteps_match_diffusers(tmp_path):
    model = random_model(tiny_config("t2v", text_len=512))
    reference = diffusers_twin(model, tmp_path)
    x = torch.randn(1, 16, 2, 4, 4)
    t = torch.linspace(0, 900, 2 * 2 * 2)[None]  # (B, L): one timestep per token
    text = torch.randn(1, 512, 32)
    with torch.no_grad():
        ours = model(x, t, text)
        theirs = reference(x, t, text, return_dict=False)[0]
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("preset", "count"),
    [
        ("Wan2.1-T2V-1.3B", 1_418_996_800),
        ("Wan2.1-T2V-14B", 14_288_491_584),
        ("Wan2.1-I2V-14B-480P", 16_394_878_784),
        ("Wan2.1-Fun-1.3B-InP", 1_564_428_608),
        ("Wan2.2-TI2V-5B", 4_999_787_712),
        ("Wan2.2-T2V-A14B", 14_288_491_584),  # per expert; two of them make the 27B
        ("Wan2.2-I2V-A14B", 14_288_901_184),  # T2V-14B + 20 more input channels of the patch embedding
    ],
)
def test_released_parameter_counts(preset, count):
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(PRESETS[preset])
    assert sum(p.numel() for p in model.parameters()) == count


def test_rope_split_of_released_head_dim():
    assert rope_axis_dims(128) == (44, 42, 42)


def test_key_tables_round_trip():
    state = random_model(tiny_config("i2v")).state_dict()
    assert diffusers_to_original_keys(original_to_diffusers_keys(state)).keys() == state.keys()


def test_sharded_original_folder_loads(tmp_path):
    model = random_model(tiny_config("i2v"))
    model.save_original(tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_diffusers_folder_loads(tmp_path):
    model = random_model(tiny_config("i2v", text_len=512))
    reference = diffusers_twin(model, tmp_path)
    reference.save_pretrained(tmp_path / "diffusers_layout")
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "diffusers_layout")
    x, t, text = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 512, 32)
    extra = {"clip_fea": torch.randn(1, 257, 1280), "y": torch.randn(1, 20, 2, 4, 4)}
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, text, **extra), model(x, t, text, **extra), atol=1e-6)


def test_original_prefix_is_stripped(tmp_path):
    model = random_model(tiny_config("t2v"))
    model.save_original(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in load_file(str(file)).items()}, str(file))
    WanTransformer3DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda s: s.pop("blocks.1.ffn.2.weight"), "blocks.1.ffn.2.weight"),
        (lambda s: s.__setitem__("head.head.weight", torch.zeros(3, 3)), "head.head.weight"),
        (lambda s: s.__setitem__("blocks.0.extra.weight", torch.zeros(3)), "blocks.0.extra.weight"),
    ],
)
def test_bad_checkpoint_names_the_key(tmp_path, damage, named):
    model = random_model(tiny_config("t2v"))
    model.save_original(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    damage(state)
    save_file(state, str(file))
    with pytest.raises(CheckpointMismatchError, match=named.replace(".", r"\.")):
        WanTransformer3DModel.from_pretrained(tmp_path)


def test_wrong_channel_count_names_the_variant():
    model = random_model(tiny_config("control"))
    with pytest.raises(ValueError, match="48 input channels"):
        model(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), torch.randn(1, 4, 32))


def test_reference_latent_adds_a_frame_of_tokens_and_removes_it():
    model = random_model(tiny_config("control_ref"))
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 32, 2, 4, 4)
    ref = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        with_ref = model(x, torch.tensor([500.0]), torch.randn(1, 4, 32), y=y, ref_latent=ref)
        without = model(x, torch.tensor([500.0]), torch.randn(1, 4, 32), y=y)
    assert with_ref.shape == without.shape == (1, 16, 2, 4, 4)
    assert not torch.allclose(with_ref, without)


def test_camera_adapter_adds_ray_features():
    model = random_model(tiny_config("camera"))
    x, y, t, text = (
        torch.randn(1, 16, 2, 4, 4),
        torch.randn(1, 16, 2, 4, 4),
        torch.tensor([500.0]),
        torch.randn(1, 4, 32),
    )
    rays = torch.randn(1, 24, 2, 32, 32)  # pixel-size Pluecker rays, 4 frames packed per latent frame
    other_rays = torch.randn(1, 24, 2, 32, 32)
    with torch.no_grad():
        out = model(x, t, text, y=y, camera=rays)
        assert out.shape == (1, 16, 2, 4, 4)
        # The rays steer the video: other rays, or none, give another output.
        assert (model(x, t, text, y=y, camera=other_rays) - out).abs().max() > 1e-3
        without = model(x, t, text, y=y)
        assert (without - out).abs().max() > 1e-3
        # They enter as the adapter's features added to the patch-embedded tokens: each latent
        # frame's tokens get the features of that frame's rays.
        tokens, grid, _ = model.embed_video(x, y, rays, None)
        plain, plain_grid, _ = model.embed_video(x, y, None, None)
        assert grid == plain_grid == (2, 2, 2)
        features = torch.cat([model.control_adapter(rays[:, :, [f]]) for f in range(grid[0])], dim=2)
        assert features.shape == (1, model.config.dim, *grid)
        assert_close_to_rounding(tokens, plain + features.flatten(2).transpose(1, 2))
        # So an adapter with zero weights adds nothing: the output is that of the model without rays.
        for param in model.control_adapter.parameters():
            param.zero_()
        assert torch.equal(model(x, t, text, y=y, camera=rays), without)


def test_fun_extras_found_in_weights_are_enabled(tmp_path):
    model = random_model(tiny_config("control_ref"))
    model.save_original(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("add_ref_conv")  # released Fun configs do not always declare it
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert WanTransformer3DModel.from_pretrained(tmp_path).config.add_ref_conv


def test_variants_are_read_off_the_config():
    assert variant_of(PRESETS["Wan2.1-Fun-1.3B-InP"]).modes == ("t2v", "i2v", "flf2v", "inpaint", "v2v")
    assert variant_of(PRESETS["Wan2.1-Fun-V1.1-1.3B-Control"]).ref_image
    assert variant_of(PRESETS["Wan2.1-Fun-V1.1-1.3B-Control-Camera"]).camera
    assert variant_of(PRESETS["Wan2.1-T2V-14B"]).modes == ("t2v", "v2v")


def test_wan22_i2v_without_clip_loads_from_its_release_config_and_matches_diffusers(tmp_path):
    model = random_model(tiny_config("i2v", text_len=512, image_dim=None))
    assert not model.uses_clip and not any(k.startswith("img_emb.") for k in model.state_dict())
    model.save_original(tmp_path / "expert")
    config = json.loads((tmp_path / "expert" / "config.json").read_text())
    del config["image_dim"]  # as released: model_type i2v, and no img_emb weights
    (tmp_path / "expert" / "config.json").write_text(json.dumps(config))
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "expert")
    assert loaded.config.model_type == "i2v" and not loaded.uses_clip
    reference = diffusers_twin(loaded, tmp_path)
    assert reference.config.image_dim is None
    torch.manual_seed(1)
    x, y, t, text = (
        torch.randn(1, 16, 2, 4, 6),
        torch.randn(1, 20, 2, 4, 6),
        torch.tensor([900.0]),
        torch.randn(1, 7, 32),
    )
    with torch.no_grad():
        ours = loaded(x, t, text, y=y)
        padded = torch.nn.functional.pad(text, (0, 0, 0, 512 - 7))
        theirs = reference(torch.cat([x, y], 1), t, padded, return_dict=False)[0]
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_weights_read_alike_from_every_shared_layout(tmp_path):
    model = random_model(tiny_config("i2v"))
    reference = model.state_dict()
    model.save_original(tmp_path / "sharded", max_shard_bytes=20_000)  # several shards + index
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    diffusers_names = {f"transformer.{k}": v for k, v in original_to_diffusers_keys(reference).items()}
    save_file(diffusers_names, str(tmp_path / "diffusers.safetensors"))
    comfy = {f"model.diffusion_model.{k}": v for k, v in reference.items()}
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    for source in ("sharded", "diffusers.safetensors", "comfy.safetensors"):
        state = read_transformer_weights(tmp_path / source)
        assert state.keys() == reference.keys(), source
        assert all(torch.equal(state[k], reference[k]) for k in reference), source
