"""The Wan VACE transformer: parity with diffusers' WanVACETransformer3DModel, released sizes, strict loading.

Parity: diffusers' own ``WanVACETransformer3DModel`` reads our original-layout file through its single-file
converter; on tiny random configs (every parameter random, the hint projections too) the two outputs differ
by at most 1e-4 in fp32.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import diffusers_vace_twin
from safetensors.torch import load_file, save_file

from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.vace import WanVACETransformer3DModel, vace_layers_from_weights
from videox_fun.models.wan.variants import PRESETS, tiny_config, variant_of

TEXT_LEN = 32  # tiny_config's text_len: our model pads prompts to it, diffusers' takes them as given


def random_vace(seed: int = 0, **overrides) -> WanVACETransformer3DModel:
    """A tiny VACE model (4 layers, hints after layers 0 and 2) whose every parameter is random."""
    torch.manual_seed(seed)
    model = WanVACETransformer3DModel.from_config(tiny_config("vace", **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def inputs(batch: int = 2, frames: int = 3, height: int = 8, width: int = 10) -> dict[str, torch.Tensor]:
    """Latents (B, 16, F, H, W), timesteps, a text context (B, 20, 32) and a VACE context (B, 96, F, H, W)."""
    torch.manual_seed(1)
    return {
        "x": torch.randn(batch, 16, frames, height, width),
        "t": torch.tensor([999.0, 250.0][:batch]),
        "context": torch.randn(batch, 20, 32),
        "vace_context": torch.randn(batch, 96, frames, height, width),
    }


@pytest.mark.parametrize("scale", [1.0, 0.5, [0.3, 1.7]])
def test_matches_diffusers_vace_with_same_weights(scale, tmp_path):
    model = random_vace()
    reference = diffusers_vace_twin(model, tmp_path)
    given = inputs()
    their_scale = torch.tensor(scale) if isinstance(scale, list) else torch.full((2,), scale)
    with torch.no_grad():
        ours = model(given["x"], given["t"], given["context"], given["vace_context"], vace_context_scale=scale)
        padded = torch.nn.functional.pad(given["context"], (0, 0, 0, TEXT_LEN - 20))  # as our model pads it
        theirs = reference(
            given["x"],
            given["t"],
            padded,
            control_hidden_states=given["vace_context"],
            control_hidden_states_scale=their_scale,
            return_dict=False,
        )[0]
    assert ours.shape == given["x"].shape
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("preset", "count"),
    [
        ("Wan2.1-VACE-1.3B", 2_153_972_032),
        ("Wan2.1-VACE-14B", 17_337_592_896),
        ("Wan2.2-VACE-Fun-A14B", 17_337_592_896),  # per expert
    ],
)
def test_released_parameter_counts(preset, count):
    with torch.device("meta"):
        model = WanVACETransformer3DModel.from_config(PRESETS[preset])
    assert sum(p.numel() for p in model.parameters()) == count


def test_released_layers_and_key_names():
    with torch.device("meta"):
        model = WanVACETransformer3DModel.from_config(PRESETS["Wan2.1-VACE-1.3B"])
    assert model.vace_layers == list(range(0, 30, 2))
    names = set(model.state_dict())
    expected = ("vace_patch_embedding.weight", "vace_blocks.0.before_proj.weight", "vace_blocks.14.after_proj.bias")
    assert set(expected) <= names
    assert "vace_blocks.1.before_proj.weight" not in names  # only the first VACE block takes the video tokens
    assert model.vace_patch_embedding.in_channels == 96
    assert PRESETS["Wan2.1-VACE-14B"]["vace_layers"] == [0, 5, 10, 15, 20, 25, 30, 35]


def test_zero_projections_leave_the_base_model_unchanged():
    # The release initialises before_proj / after_proj at zero: the hints are then zero and the VACE model
    # is the T2V model it was built on, whatever its context.
    model = random_vace()
    with torch.no_grad():
        for block in model.vace_blocks:
            block.after_proj.weight.zero_()
            block.after_proj.bias.zero_()
        base = WanTransformer3DModel.from_config(tiny_config("t2v", num_layers=4)).eval()
        missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
        assert not missing and all(key.startswith("vace_") for key in unexpected)
        given = inputs()
        assert torch.allclose(model(**given), base(given["x"], given["t"], given["context"]), atol=1e-6)


def test_the_stack_in_slices_equals_the_whole_stack():
    # The first-block cache runs block 0, then the rest: the hints computed at the start serve both calls.
    model = random_vace()
    given = inputs(batch=1)
    calls = []
    whole_stack = model.run_blocks

    def in_two(x, e0, context, context_img, rope, context_bias=None, blocks=slice(None)):
        calls.append(blocks)
        first = whole_stack(x, e0, context, context_img, rope, context_bias, blocks=slice(0, 1))
        return whole_stack(first, e0, context, context_img, rope, context_bias, blocks=slice(1, None))

    with torch.no_grad():
        expected = model(**given)
        model.run_blocks = in_two
        try:
            split = model(**given)
        finally:
            del model.run_blocks
    assert calls and torch.allclose(split, expected, atol=1e-6)


def test_context_must_cover_the_latents():
    model = random_vace()
    given = inputs(batch=1)
    with pytest.raises(ValueError, match="reference frames go in front of both"):
        model(given["x"], given["t"], given["context"], given["vace_context"][:, :, 1:])
    with pytest.raises(ValueError, match="needs vace_context"):
        model(given["x"], given["t"], given["context"])
    with pytest.raises(ValueError, match="2 VACE layers"):
        model(**given, vace_context_scale=[1.0, 1.0, 1.0])


def test_original_folder_loads_as_vace_and_names_a_missing_key(tmp_path):
    model = random_vace()
    model.save_original(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "VaceWanModel" and config["model_type"] == "vace"
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)  # the class is read off the config
    assert isinstance(loaded, WanVACETransformer3DModel) and variant_of(loaded.config).vace
    given = inputs(batch=1)
    with torch.no_grad():
        assert torch.allclose(loaded(**given), model(**given), atol=1e-5)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    state.pop("vace_blocks.1.after_proj.weight")
    save_file(state, str(file))
    with pytest.raises(CheckpointMismatchError, match=r"vace_blocks\.1\.after_proj\.weight"):
        WanTransformer3DModel.from_pretrained(tmp_path)


def test_vace_layers_are_read_off_the_weights_when_the_config_lacks_them(tmp_path):
    model = random_vace()
    model.save_original(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for field in ("vace_layers", "vace_in_dim", "model_type"):
        config.pop(field)  # a config.json as some single-file exports write it
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert isinstance(loaded, WanVACETransformer3DModel) and loaded.vace_layers == [0, 2]
    assert vace_layers_from_weights(15, 30) == list(range(0, 30, 2))
    with pytest.raises(CheckpointMismatchError, match="spread evenly"):
        vace_layers_from_weights(7, 30)
