"""Model configs: the shipped YAML files parse, typos are refused, layouts are recognised."""

from __future__ import annotations

from pathlib import Path

import pytest

from videox_fun.config import ModelConfig, config_for_folder, load_model_config
from videox_fun.registry import resolve_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("wan2.*/*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    config = load_model_config(path)
    assert config.pipeline == "Wan"
    assert config.defaults.num_frames % 4 == 1 and config.defaults.height % 16 == 0


def test_unknown_fields_are_refused(tmp_path):
    (tmp_path / "bad.yaml").write_text("vae_subpth: x\n")
    with pytest.raises(ValueError, match="vae_subpth"):
        load_model_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("defaults:\n  step: 3\n")
    with pytest.raises(ValueError, match="step"):
        load_model_config(tmp_path / "bad2.yaml")


# The shape of VideoX-Fun's config/wan2.1/wan_civitai.yaml (its users pass it with --config).
VIDEOX_FUN_YAML = """\
format: civitai
pipeline: Wan
transformer_additional_kwargs:
  transformer_subpath: ./
  dict_mapping:
    in_dim: in_channels
vae_kwargs:
  vae_subpath: Wan2.1_VAE.pth
  temporal_compression_ratio: 4
text_encoder_kwargs:
  text_encoder_subpath: models_t5_umt5-xxl-enc-bf16.pth
  tokenizer_subpath: google/umt5-xxl
  text_length: 512
scheduler_kwargs:
  scheduler_subpath: null
  shift: 5.0
image_encoder_kwargs:
  image_encoder_subpath: my_clip.pth
"""


def test_videox_fun_nested_yaml_is_read(tmp_path):
    (tmp_path / "wan_civitai.yaml").write_text(VIDEOX_FUN_YAML)
    config = load_model_config(tmp_path / "wan_civitai.yaml")
    assert (config.format, config.transformer_subpath, config.vae_subpath) == ("civitai", "./", "Wan2.1_VAE.pth")
    assert config.tokenizer_subpath == "google/umt5-xxl" and config.image_encoder_subpath == "my_clip.pth"
    experts = "  transformer_low_noise_model_subpath: ./low_noise_model\n"
    experts += "  transformer_high_noise_model_subpath: ./high_noise_model\n  boundary: 0.875"
    (tmp_path / "wan22.yaml").write_text(VIDEOX_FUN_YAML.replace("  transformer_subpath: ./", experts))
    wan22 = load_model_config(tmp_path / "wan22.yaml")
    assert (wan22.transformer_subpath, wan22.transformer_2_subpath) == ("./high_noise_model", "./low_noise_model")
    assert wan22.boundary == 0.875
    (tmp_path / "typo.yaml").write_text(VIDEOX_FUN_YAML + "vae_kwarg: {}\n")
    with pytest.raises(ValueError, match="vae_kwarg"):
        load_model_config(tmp_path / "typo.yaml")


def test_layout_is_recognised(tmp_path):
    assert config_for_folder(tmp_path) == ModelConfig()  # original (civitai) layout by default
    (tmp_path / "model_index.json").write_text("{}")
    assert config_for_folder(tmp_path).vae_subpath == "vae"
    assert config_for_folder(tmp_path).transformer_2_subpath is None


def test_wan22_two_expert_layouts_are_recognised(tmp_path):
    diffusers = tmp_path / "diffusers"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text('{"transformer_2": ["diffusers", "WanTransformer3DModel"], '
                                                '"boundary_ratio": 0.9}')  # fmt: skip
    (diffusers / "transformer_2").mkdir()
    (diffusers / "transformer_2" / "config.json").write_text("{}")
    config = config_for_folder(diffusers)
    assert (config.transformer_subpath, config.transformer_2_subpath, config.boundary) == (
        "transformer",
        "transformer_2",
        0.9,
    )
    for model_type, shift, boundary in (("t2v", 12.0, 0.875), ("i2v", 5.0, 0.9)):
        original = tmp_path / model_type
        for expert in ("high_noise_model", "low_noise_model"):
            (original / expert).mkdir(parents=True)
            (original / expert / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
        config = config_for_folder(original)
        assert (config.transformer_subpath, config.transformer_2_subpath) == ("high_noise_model", "low_noise_model")
        assert (config.boundary, config.defaults.shift, config.defaults.steps) == (boundary, shift, 40)


def test_model_lookup_by_folder_name(tmp_path, monkeypatch):
    (tmp_path / "Wan2.1-Fun-1.3B-InP").mkdir()
    monkeypatch.setenv("VIDEOX_FUN_MODELS", str(tmp_path))
    assert resolve_model("Wan2.1-Fun-1.3B-InP") == tmp_path / "Wan2.1-Fun-1.3B-InP"
    with pytest.raises(FileNotFoundError, match=r"Wan2\.1-Fun-14B-InP"):
        resolve_model("Wan2.1-Fun-14B-InP")


def test_wan22_ti2v_5b_original_folder_is_recognised(tmp_path):
    (tmp_path / "Wan2.2_VAE.pth").write_bytes(b"")
    config = config_for_folder(tmp_path)
    assert (config.vae_subpath, config.image_encoder_subpath) == ("Wan2.2_VAE.pth", None)
    defaults = config.defaults
    assert (defaults.height, defaults.width, defaults.num_frames, defaults.fps) == (704, 1280, 121, 24)
    assert (defaults.steps, defaults.shift, defaults.guidance_scale) == (50, 5.0, 5.0)


def test_broken_config_files_fail_in_one_line_naming_the_file(tmp_path):
    (tmp_path / "videox_fun.yaml").write_text("format: civitai\nfoo: [unclosed\n")
    with pytest.raises(ValueError, match=r"videox_fun\.yaml:3:1: model config is not valid YAML: expected") as info:
        config_for_folder(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42\xff\xfe\x80")  # --config pointed at a video
    with pytest.raises(ValueError, match=r"clip\.mp4: a model config must be UTF-8 text"):
        config_for_folder(tmp_path, override=tmp_path / "clip.mp4")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"list\.yaml: a model config is a mapping"):
        load_model_config(tmp_path / "list.yaml")

    diffusers = tmp_path / "diffusers"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text('{"transformer": ["diffusers", "WanTransformer3DModel"],}')
    with pytest.raises(ValueError, match=r"model_index\.json:1:56: diffusers model index is not valid JSON"):
        config_for_folder(diffusers)
    two = tmp_path / "a14b"
    for sub in ("high_noise_model", "low_noise_model"):
        (two / sub).mkdir(parents=True)
        (two / sub / "config.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"high_noise_model/config\.json:1:2: model config is not valid JSON"):
        config_for_folder(two)
