"""The Qwen-Image models: the released transformer's parameter count on the meta device, the tiny tokenizer's
template prefixes (the release's 34 / 64 dropped tokens), strict loading that names bad keys, and one-line
refusals of folders the family cannot serve."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import meta_model, parameter_count
from safetensors.torch import load_file, save_file

from videox_fun.families import recognise
from videox_fun.models.loading import CheckpointMismatchError
from videox_fun.models.qwenimage.text_encoder import EDIT_TEMPLATE, T2I_TEMPLATE, load_qwen_vl
from videox_fun.models.qwenimage.tiny import build_qwen_tokenizer, build_tiny_qwenimage_folder
from videox_fun.models.qwenimage.transformer import QwenImageTransformer
from videox_fun.models.wan.tiny import TOY_VOCABULARY

# model-facts: QwenImageTransformer2DModel with the released config (Qwen-Image and every Edit release).
RELEASED_COUNT = 20_430_401_088
RELEASED_CONFIG = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
                   "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
                   "axes_dims_rope": (16, 56, 56)}  # fmt: skip


def test_released_parameter_count_on_the_meta_device():
    model = meta_model(QwenImageTransformer, RELEASED_CONFIG)
    assert parameter_count(model) == RELEASED_COUNT


def test_the_tiny_tokenizer_drops_the_release_template_prefixes():
    """Every template word is one token, as in the released vocabulary: the system part diffusers drops is exactly
    34 tokens (T2I) and 64 (Edit, up to the user turn's image)."""
    tokenizer = build_qwen_tokenizer(TOY_VOCABULARY)
    t2i_prefix = T2I_TEMPLATE.text.split("{}")[0]
    edit_prefix = EDIT_TEMPLATE.text.split("<|vision_start|>")[0]
    assert len(tokenizer(t2i_prefix).input_ids) == T2I_TEMPLATE.drop == 34
    assert len(tokenizer(edit_prefix).input_ids) == EDIT_TEMPLATE.drop == 64
    assert tokenizer.decode(tokenizer("a red circle").input_ids) == "a red circle"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_qwenimage_folder(tmp_path_factory.mktemp("qwenimage") / "Tiny-Qwen-Image", "t2i", seed=5)


def copy_of(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "copy"))


def test_the_folder_loads_strictly_and_names_bad_keys(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    loaded = QwenImageTransformer.from_pretrained(folder / "transformer")
    assert not loaded.training and all(not p.is_meta for p in loaded.parameters())
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({**state, "extra.weight": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointMismatchError, match=re.escape("unexpected keys")):
        QwenImageTransformer.from_pretrained(folder / "transformer")
    encoder = folder / "text_encoder" / "model.safetensors"
    weights = load_file(str(encoder))
    dropped = next(key for key in weights if "layers.1." in key)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(encoder), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_qwen_vl(folder / "text_encoder")


def test_a_folder_with_another_familys_vae_fails_in_one_line(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="the VAE is a AutoencoderKL") as err:
        recognise(folder)
    assert "\n" not in str(err.value) and "needs an AutoencoderKLQwenImage" in str(err.value)


def test_a_layered_folder_is_refused_in_one_line(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageLayeredPipeline"}))
    with pytest.raises(ValueError, match="Qwen-Image-Layered") as err:
        recognise(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("variant", "modes", "name"), [("t2i", ("t2i", "i2i", "inpaint", "control", "control_inpaint"),
                                                         "Qwen-Image"),
                                                        ("edit", ("edit",), "Qwen-Image-Edit"),
                                                        ("edit-plus", ("edit",), "Qwen-Image-Edit-2509")])  # fmt: skip
def test_the_variant_and_its_modes_are_read_off_model_index(tmp_path, variant, modes, name):
    found = recognise(build_tiny_qwenimage_folder(tmp_path / variant, variant))
    assert (found.family.name, found.variant, found.modes) == ("qwenimage", name, modes)
    assert (found.defaults.steps, found.defaults.guidance_scale, found.defaults.negative_prompt) == (50, 4.0, " ")
