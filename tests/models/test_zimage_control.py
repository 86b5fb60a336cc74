"""The Z-Image Fun control model (VideoX-Fun's Z-Image-Turbo-Fun-Controlnet-Union): released parameter counts on
the meta device, the released keys, the release told from a file (1.0 / 2.0 / 2.1), 2.0's unused refiner dropped,
the transformer's modules linked (not owned), and one-line refusals of another base's control file."""

from __future__ import annotations

import pytest
import torch

from videox_fun.io.files import save_safetensors
from videox_fun.models.zimage.control import (
    ControlRelease,
    ZImageControl,
    check_is_zimage_control,
    control_config,
    control_parameter_count,
    read_control_release,
)
from videox_fun.models.zimage.tiny import build_tiny_control_file, tiny_control_release, tiny_transformer_config
from videox_fun.models.zimage.transformer import ZImageTransformer

# model-facts: Z-Image's released transformer config and count; the control releases' counts.
TRANSFORMER = {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
               "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
               "cap_feat_dim": 2560, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}  # fmt: skip
BASE_COUNT = 6_154_908_736
RELEASES = {  # name: (release, control-only count, count in all)
    "1.0": (ControlRelease("1.0", 16, 6, 3840), 1_550_778_368, 7_705_687_104),
    "2.1": (ControlRelease("2.1", 33, 15, 3840), 3_356_225_792, 9_511_134_528),
    "2.1-lite": (ControlRelease("2.1", 33, 3, 3840), 1_008_308_480, 7_163_217_216),
    "2.0 (diffusers drops the unused refiner)": (ControlRelease("2.0", 33, 15, 3840), 2_950_156_800, None),
}


@pytest.mark.parametrize("name", RELEASES)
def test_released_counts_on_the_meta_device(name):
    release, control_count, total = RELEASES[name]
    assert control_parameter_count(release, TRANSFORMER) == control_count
    with torch.device("meta"):
        base = sum(p.numel() for p in ZImageTransformer.from_model_config(TRANSFORMER).parameters())
    assert base == BASE_COUNT
    if total is not None:
        assert base + control_count == total


def test_the_places_and_keys_are_the_releases():
    config = control_config(RELEASES["1.0"][0], TRANSFORMER, "v1")
    assert config["control_layers_places"] == [0, 5, 10, 15, 20, 25] and config["control_in_dim"] == 16
    config = control_config(RELEASES["2.1"][0], TRANSFORMER, "2.1")
    assert config["control_layers_places"] == list(range(0, 30, 2))
    assert config["control_refiner_layers_places"] == [0, 1]
    with torch.device("meta"):
        keys = set(ZImageControl.from_model_config(config).state_dict())
    assert {key.split(".")[0] for key in keys} == {"control_layers", "control_all_x_embedder", "control_noise_refiner"}
    assert "control_all_x_embedder.2-1.weight" in keys and "control_layers.14.after_proj.weight" in keys
    assert "control_layers.0.before_proj.weight" in keys and "control_noise_refiner.1.after_proj.weight" in keys


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.1"])
def test_the_release_is_told_from_the_file(tmp_path, version):
    path = build_tiny_control_file(tmp_path / f"control-{version}.safetensors", version, seed=1)
    header = read_control_release(path)  # shapes only: 1.0 or 2.x
    assert header.version == ("1.0" if version == "1.0" else "2.x") and header.inpaint == (version != "1.0")
    transformer = ZImageTransformer.from_model_config(tiny_transformer_config()).eval()
    control = ZImageControl.from_file(path, transformer)
    assert control.release.version == version
    has_refiner = any(name.startswith("control_noise_refiner.") for name, _ in control.named_parameters())
    assert has_refiner == (version != "2.0")  # 2.0 ran that stage through control_layers: its refiner is dropped
    # Linked, not owned: the control model's parameters are the file's; the transformer's modules are read through.
    assert control.t_embedder is transformer.t_embedder and control.noise_refiner is transformer.noise_refiner
    assert all(name.startswith("control_") for name in control.state_dict())


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        (["control_transformer_blocks.0.attn.to_q.weight", "control_img_in.weight"], "a FLUX.2 Fun control file"),
        (["control_blocks.0.attn.to_q.weight", "control_img_in.weight"], "a Qwen-Image Fun control file"),
        (["layers.0.attention.to_q.weight", "cap_embedder.1.weight"], "not a Z-Image Fun control file"),
    ],
)
def test_another_models_file_is_one_line(tmp_path, keys, said):
    path = save_safetensors({key: torch.zeros(2, 2) for key in keys}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=said) as caught:
        read_control_release(path)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(ValueError, match=said):
        check_is_zimage_control(set(keys), "other")


def test_a_control_file_of_another_width_is_refused():
    wide = ControlRelease("2.1", 33, 2, 128)
    with pytest.raises(ValueError, match="128 wide, the transformer's 64"):
        control_config(wide, tiny_transformer_config(), "wide.safetensors")
    assert control_config(tiny_control_release(), tiny_transformer_config(), "tiny")["control_layers_places"] == [0, 1]
