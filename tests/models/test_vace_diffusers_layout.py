"""Wan VACE in diffusers' layout: a ``WanVACETransformer3DModel`` folder (``vace_blocks.N.proj_in`` / ``proj_out``,
``attn1`` / ``attn2``...) saved by diffusers loads into ours strictly and gives the same output; a diffusers
``WanVACEPipeline`` folder is recognised as a VACE model and samples as the original-layout folder does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanVACEPipeline, WanVACETransformer3DModel
from helpers import diffusers_vace_twin
from safetensors.torch import load_file, save_file

from videox_fun.families import recognise
from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.wan.keys import (
    diffusers_config_to_original,
    diffusers_to_original_keys,
    original_config_to_diffusers,
    original_to_diffusers_keys,
)
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.vace import WanVACETransformer3DModel as OurVace
from videox_fun.models.wan.variants import PRESETS, tiny_config
from videox_fun.pipelines.schedulers import make_scheduler
from videox_fun.pipelines.wan import WanPipeline

TEXT_LEN = 512  # diffusers' configs carry no text_len: a diffusers folder loads with the releases' 512


def random_vace(seed: int = 0) -> OurVace:
    """A tiny VACE model (hints after layers 0 and 2) whose every parameter is random."""
    torch.manual_seed(seed)
    model = OurVace.from_config(tiny_config("vace", text_len=TEXT_LEN)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def inputs() -> dict[str, torch.Tensor]:
    """Latents (1, 16, 3, 8, 10), a timestep, a text context (1, 20, 32) and a VACE context (1, 96, 3, 8, 10)."""
    generator = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(1, 16, 3, 8, 10, generator=generator),
        "t": torch.tensor([600.0]),
        "context": torch.randn(1, 20, 32, generator=generator),
        "vace_context": torch.randn(1, 96, 3, 8, 10, generator=generator),
    }


@pytest.fixture()
def diffusers_folder(tmp_path: Path) -> tuple[OurVace, WanVACETransformer3DModel, Path]:
    """Our random VACE model, diffusers' twin holding its weights (through diffusers' converter), and the twin
    saved by diffusers' save_pretrained."""
    ours = random_vace()
    theirs = diffusers_vace_twin(ours, tmp_path / "twin")
    theirs.save_pretrained(tmp_path / "diffusers_layout")
    return ours, theirs, tmp_path / "diffusers_layout"


def test_key_names_are_diffusers_own_both_ways() -> None:
    config = PRESETS["Wan2.1-VACE-1.3B"]
    with torch.device("meta"):
        ours = OurVace.from_config(config)
        theirs = WanVACETransformer3DModel.from_config(original_config_to_diffusers(config))
    renamed = original_to_diffusers_keys(ours.state_dict())
    assert set(renamed) == set(theirs.state_dict())
    assert "vace_blocks.0.proj_in.weight" in renamed and "vace_blocks.14.proj_out.bias" in renamed
    assert diffusers_to_original_keys(renamed).keys() == ours.state_dict().keys()
    back = diffusers_config_to_original(theirs.config)
    assert (back["vace_layers"], back["vace_in_dim"], back["model_type"]) == (list(range(0, 30, 2)), 96, "vace")


def test_diffusers_folder_loads_strictly_and_gives_the_same_output(diffusers_folder) -> None:
    ours, theirs, folder = diffusers_folder
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "WanVACETransformer3DModel"
    loaded = WanTransformer3DModel.from_pretrained(folder)  # the class is read off the config: VACE
    assert isinstance(loaded, OurVace) and loaded.vace_layers == ours.vace_layers == [0, 2]
    assert loaded.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.state_dict().items())
    given = inputs()
    with torch.no_grad():
        from_folder, own = loaded(**given), ours(**given)
        padded = torch.nn.functional.pad(given["context"], (0, 0, 0, TEXT_LEN - 20))  # as our model pads it
        reference = theirs(
            given["x"], given["t"], padded, control_hidden_states=given["vace_context"], return_dict=False
        )[0]
    diff_own, diff_diffusers = (from_folder - own).abs().max().item(), (from_folder - reference).abs().max().item()
    print(f"diffusers-layout VACE folder: max |ours - original| = {diff_own:.2e}, |ours - diffusers| = "
          f"{diff_diffusers:.2e}")  # fmt: skip
    assert diff_own == 0.0 and diff_diffusers <= 1e-4


def test_a_missing_vace_key_fails_naming_it(diffusers_folder) -> None:
    """diffusers' proj_out of VACE block 1 missing: the strict check names it as our model calls it."""
    _, _, folder = diffusers_folder
    file = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    state.pop("vace_blocks.1.proj_out.weight")
    save_file(state, str(file))
    with pytest.raises(CheckpointMismatchError, match=r"vace_blocks\.1\.after_proj\.weight"):
        WanTransformer3DModel.from_pretrained(folder)


def test_diffusers_vace_pipeline_folder_is_recognised_and_samples_as_the_original(tmp_path: Path) -> None:
    original = build_tiny_model_folder(tmp_path / "vace", "vace")
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "text_len": TEXT_LEN}))
    ours = WanPipeline.from_pretrained(original)
    root = tmp_path / "diffusers_pipeline"
    WanVACEPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=ours.vae.model,
        scheduler=make_scheduler("Flow", shift=3.0),
        transformer=diffusers_vace_twin(ours.transformer, tmp_path / "twin"),
    ).save_pretrained(str(root))
    found = recognise(root)
    assert (found.family.name, found.variant) == ("wan", "VACE") and {"r2v", "vace"} <= set(found.modes)
    loaded = WanPipeline.from_pretrained(root)
    assert isinstance(loaded.transformer, OurVace)
    settings = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "progress": False}
    control = (torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    run = {"mode": "control", "control_video": control, "seed": 3, "shift": 3.0, "sampler": "Flow", **settings}
    first, second = ours("a cyan disc", **run).latents, loaded("a cyan disc", **run).latents
    assert (first - second).abs().max().item() <= 1e-5
