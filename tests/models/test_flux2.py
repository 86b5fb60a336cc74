"""The FLUX.2 transformer, VAE and text encoder: the released parameter count on the meta device, BFL files read
through diffusers' own converter (the same model as the diffusers folder), one-line refusals of other files, the
VAE's patchify and BatchNorm normalisation, strict loading of the text encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import meta_model, parameter_count
from safetensors.torch import load_file, save_file

from videox_fun.models.flux2.single_files import diffusers_to_bfl
from videox_fun.models.flux2.text_encoder import Flux2TextEncoder
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.flux2.transformer import Flux2Transformer, bfl_to_diffusers, config_from_state
from videox_fun.models.flux2.vae import Flux2VAE, patchify, unpatchify
from videox_fun.models.loading import CheckpointMismatchError

# model-facts: Flux2Transformer2DModel at the released config (diffusers' defaults).
RELEASED_COUNT = 32_223_281_152
RELEASED_CONFIG = {"patch_size": 1, "in_channels": 128, "num_layers": 8, "num_single_layers": 48,
                   "attention_head_dim": 128, "num_attention_heads": 48, "joint_attention_dim": 15360,
                   "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32],
                   "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True}  # fmt: skip


def test_released_parameter_count_on_the_meta_device():
    assert parameter_count(meta_model(Flux2Transformer, RELEASED_CONFIG)) == RELEASED_COUNT


def test_a_released_size_bfl_state_converts_to_the_released_model():
    """On the meta device: BFL keys of the released model go through diffusers' converter, and their shapes give
    back the released config and count."""
    expected = meta_model(Flux2Transformer, RELEASED_CONFIG).state_dict()
    bfl = {"model.diffusion_model." + k: v for k, v in diffusers_to_bfl(expected).items()}
    bfl_names = {k.removeprefix("model.diffusion_model.") for k in bfl}
    assert {"img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "guidance_in.out_layer.weight",
            "double_stream_modulation_img.lin.weight", "single_stream_modulation.lin.weight",
            "final_layer.adaLN_modulation.1.weight"} <= bfl_names  # fmt: skip
    converted = bfl_to_diffusers(bfl)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    config = config_from_state(converted)
    assert {k: config[k] for k in RELEASED_CONFIG} == {**RELEASED_CONFIG, "axes_dims_rope": (32, 32, 32, 32)}
    assert parameter_count(meta_model(Flux2Transformer, config)) == RELEASED_COUNT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_flux2_folder(tmp_path_factory.mktemp("flux2") / "Tiny-FLUX.2", seed=5)


def ids(*sizes: int) -> torch.Tensor:
    """(prod(sizes), 4) (t, h, w, l) position ids."""
    return torch.cartesian_prod(*(torch.arange(n) for n in sizes))


def inputs() -> dict:
    """A 2x2 latent grid (4 tokens of 128) and 6 text tokens of 3 x 16 channels."""
    generator = torch.Generator().manual_seed(0)
    return {"hidden_states": torch.randn(1, 4, 128, generator=generator),
            "encoder_hidden_states": torch.randn(1, 6, 48, generator=generator), "timestep": torch.tensor([0.3]),
            "img_ids": ids(1, 2, 2, 1), "txt_ids": ids(1, 1, 1, 6), "guidance": torch.tensor([4.0])}  # fmt: skip


def test_a_bfl_file_of_the_tiny_model_is_the_diffusers_folder_model(tiny, tmp_path):
    folder_state = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    bfl = tmp_path / "flux2_tiny.safetensors"
    save_file(diffusers_to_bfl(folder_state), str(bfl))
    read = Flux2Transformer.read_weights(bfl)  # diffusers' converter
    assert read.keys() == folder_state.keys()
    assert all(torch.equal(read[k], folder_state[k]) for k in read)
    config = json.loads((tiny / "transformer" / "config.json").read_text())
    from_file = Flux2Transformer.from_single_file(bfl, config)
    from_folder = Flux2Transformer.from_pretrained(tiny / "transformer")
    folder_weights = from_folder.state_dict()
    assert all(torch.equal(value, folder_weights[name]) for name, value in from_file.state_dict().items())
    with torch.no_grad():
        assert torch.equal(from_file(**inputs()).sample, from_folder(**inputs()).sample)


def test_other_files_fail_in_one_line(tiny, tmp_path):
    state = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    flux1 = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(2, 2)}, str(flux1))
    with pytest.raises(
        ValueError, match=re.escape("without single_stream_modulation.lin.weight: a FLUX.1 transformer")
    ):
        Flux2Transformer.read_weights(flux1)
    zimage = tmp_path / "z_image.safetensors"
    save_file({"cap_embedder.1.weight": torch.zeros(2, 2)}, str(zimage))
    with pytest.raises(ValueError, match=re.escape("not a FLUX.2 transformer (no single_stream_modulation.linear")):
        Flux2Transformer.read_weights(zimage)
    with pytest.raises(ValueError, match=re.escape("heads of 16 channels are not FLUX.2's (128)")):
        config_from_state(state)
    extra = tmp_path / "extra.safetensors"
    save_file({**diffusers_to_bfl(state), "extra.weight": torch.zeros(1)}, str(extra))
    config = json.loads((tiny / "transformer" / "config.json").read_text())
    with pytest.raises(ValueError, match=re.escape("extra.weight")):
        Flux2Transformer.from_single_file(extra, config)


def test_the_vae_patchifies_and_normalises_as_diffusers(tiny):
    vae = Flux2VAE.from_pretrained(tiny / "vae")
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    latents = vae.encode(image)  # (1, 128, 2, 2)
    assert latents.shape == (1, 128, 2, 2) and (vae.latent_channels, vae.spatial_compression) == (128, 16)
    raw = vae.model.encode(image).latent_dist.mode()  # (1, 32, 4, 4)
    assert torch.equal(unpatchify(patchify(raw)), raw)
    bn = vae.model.bn
    expected = (patchify(raw) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-6)
    assert vae.decode(latents).shape == (1, 3, 32, 32)


def test_the_text_encoder_loads_strictly(tiny, tmp_path):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text((tiny / "text_encoder" / "config.json").read_text())
    state = load_file(str(tiny / "text_encoder" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layers.31." not in k}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        Flux2TextEncoder.from_pretrained(folder, tiny / "tokenizer")
