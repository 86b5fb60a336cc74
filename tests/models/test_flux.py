"""The FLUX.1 transformer: released parameter counts on the meta device, BFL single files read through diffusers'
own converter (the same model as the diffusers folder), and one-line refusals of other files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flux_helpers import diffusers_to_bfl
from helpers import meta_model, parameter_count
from safetensors.torch import load_file, save_file

from videox_fun.models.flux.tiny import build_tiny_flux_folder
from videox_fun.models.flux.transformer import FluxTransformer, bfl_to_diffusers, config_from_state

# model-facts: FluxTransformer2DModel with the released configs (diffusers' defaults; guidance_embeds for dev).
RELEASED = {"dev": 11_901_408_320, "schnell": 11_891_178_560}


def released_config(variant: str) -> dict:
    return {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": variant == "dev", "axes_dims_rope": (16, 56, 56)}  # fmt: skip


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_released_parameter_counts_on_the_meta_device(variant):
    model = meta_model(FluxTransformer, released_config(variant))
    assert parameter_count(model) == RELEASED[variant]


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_a_released_size_bfl_state_converts_to_the_released_model(variant):
    """On the meta device (no memory): the BFL keys of the released model go through diffusers' converter
    unpadded, and their shapes give back the released config and count."""
    expected = meta_model(FluxTransformer, released_config(variant)).state_dict()
    converted = bfl_to_diffusers({"model.diffusion_model." + k: v for k, v in diffusers_to_bfl(expected).items()})
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    config = config_from_state(converted)
    assert config["guidance_embeds"] == (variant == "dev") and tuple(config["axes_dims_rope"]) == (16, 56, 56)
    assert parameter_count(meta_model(FluxTransformer, config)) == RELEASED[variant]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_flux_folder(tmp_path_factory.mktemp("flux") / "Tiny-Flux", "dev", seed=5)


def test_a_bfl_file_of_the_tiny_model_is_the_diffusers_folder_model(tiny, tmp_path):
    folder_state = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    bfl = tmp_path / "flux1-tiny.safetensors"
    save_file(diffusers_to_bfl(folder_state), str(bfl))
    read = FluxTransformer.read_weights(bfl)  # diffusers' converter, linear1 padded to its sizes and cropped back
    assert read.keys() == folder_state.keys()
    assert all(torch.equal(read[k], folder_state[k]) for k in read)
    config = json.loads((tiny / "transformer" / "config.json").read_text())
    from_file = FluxTransformer.from_single_file(bfl, config)
    from_folder = FluxTransformer.from_pretrained(tiny / "transformer")
    inputs = {"hidden_states": torch.randn(1, 4, 64), "encoder_hidden_states": torch.randn(1, 5, 32),
              "pooled_projections": torch.randn(1, 32), "timestep": torch.tensor([0.5]),
              "guidance": torch.tensor([3.5]), "img_ids": torch.zeros(4, 3), "txt_ids": torch.zeros(5, 3)}  # fmt: skip
    folder_weights = from_folder.state_dict()
    assert all(torch.equal(value, folder_weights[name]) for name, value in from_file.state_dict().items())
    with torch.no_grad():  # the same weights; tensors cut from the converter's views may take other BLAS paths
        torch.testing.assert_close(from_file(**inputs).sample, from_folder(**inputs).sample, rtol=0, atol=1e-5)


def test_other_files_fail_in_one_line(tiny, tmp_path):
    state = diffusers_to_bfl(load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors")))
    flux2 = {k: v for k, v in state.items() if "_mod." not in k}  # FLUX.2 keeps modulation outside the blocks
    with pytest.raises(ValueError, match=re.escape("not a FLUX.1 transformer")):
        bfl_to_diffusers(flux2)
    with pytest.raises(ValueError, match=re.escape("keys a FLUX.1 transformer does not have: extra.weight")):
        bfl_to_diffusers({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=re.escape("not a complete FLUX.1 BFL transformer")):
        bfl_to_diffusers({k: v for k, v in state.items() if not k.startswith("txt_in.")})
    with pytest.raises(ValueError, match=re.escape("heads of 16 channels are not FLUX.1's")):
        FluxTransformer.from_single_file(save_bfl(state, tmp_path / "tiny.safetensors"))


def save_bfl(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file(state, str(path))
    return path
