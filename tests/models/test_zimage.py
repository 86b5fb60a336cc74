"""The Z-Image transformer: the released parameter count on the meta device, original-layout single files read
through diffusers' own converter (the same model as the diffusers folder), and one-line refusals of other files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import meta_model, parameter_count
from safetensors.torch import load_file, save_file

from videox_fun.models.zimage.single_files import diffusers_to_original
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.models.zimage.transformer import ZImageTransformer, config_from_state, original_to_diffusers

# model-facts: ZImageTransformer2DModel at the released config (diffusers' defaults, axes_lens [1536, 512, 512]).
RELEASED_COUNT = 6_154_908_736
RELEASED_CONFIG = {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
                   "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
                   "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
                   "axes_lens": [1536, 512, 512]}  # fmt: skip


def test_released_parameter_count_on_the_meta_device():
    assert parameter_count(meta_model(ZImageTransformer, RELEASED_CONFIG)) == RELEASED_COUNT


def test_a_released_size_original_state_converts_to_the_released_model():
    """On the meta device: the original keys of the released model go through diffusers' converter, and their
    shapes give back the released config and count."""
    expected = meta_model(ZImageTransformer, RELEASED_CONFIG).state_dict()
    original = {"model.diffusion_model." + k: v for k, v in diffusers_to_original(expected).items()}
    converted = original_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    config = config_from_state(converted)
    assert {k: config[k] for k in RELEASED_CONFIG if k in config} == {
        k: v for k, v in RELEASED_CONFIG.items() if k in config
    }
    assert parameter_count(meta_model(ZImageTransformer, config)) == RELEASED_COUNT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_zimage_folder(tmp_path_factory.mktemp("zimage") / "Tiny-Z-Image", "turbo", seed=5)


def inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 1, 4, 4, generator=generator)]
    captions = [torch.randn(7, 32, generator=generator)]
    return latents, torch.tensor([0.3]), captions


def test_an_original_layout_file_of_the_tiny_model_is_the_diffusers_folder_model(tiny, tmp_path):
    folder_state = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    original = tmp_path / "z_image_tiny.safetensors"
    save_file({**diffusers_to_original(folder_state), "norm_final.weight": torch.ones(64)}, str(original))
    read = ZImageTransformer.read_weights(original)  # diffusers' converter (it drops the unused norm_final)
    assert read.keys() == folder_state.keys()
    assert all(torch.equal(read[k], folder_state[k]) for k in read)
    config = json.loads((tiny / "transformer" / "config.json").read_text())
    from_file = ZImageTransformer.from_single_file(original, config)
    from_folder = ZImageTransformer.from_pretrained(tiny / "transformer")
    folder_weights = from_folder.state_dict()
    assert all(torch.equal(value, folder_weights[name]) for name, value in from_file.state_dict().items())
    with torch.no_grad():  # the same weights; tensors cut from the converter's chunks may take other BLAS paths
        torch.testing.assert_close(from_file(*inputs()).sample[0], from_folder(*inputs()).sample[0], rtol=0, atol=1e-5)


def test_other_files_fail_in_one_line(tiny, tmp_path):
    state = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    flux_like = tmp_path / "flux1.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(2, 2)}, str(flux_like))
    with pytest.raises(ValueError, match=re.escape("not a Z-Image transformer (no cap_embedder.1.weight")):
        ZImageTransformer.read_weights(flux_like)
    with pytest.raises(ValueError, match=re.escape("heads of 32 channels are not Z-Image's (128)")):
        config_from_state(state)
    extra = tmp_path / "extra.safetensors"
    save_file({**diffusers_to_original(state), "extra.weight": torch.zeros(1)}, str(extra))
    config = json.loads((tiny / "transformer" / "config.json").read_text())
    with pytest.raises(ValueError, match=re.escape("extra.weight")):
        ZImageTransformer.from_single_file(extra, config)
