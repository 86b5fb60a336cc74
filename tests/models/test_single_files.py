"""Wan models from single files, one per component (no ComfyUI): the variant from tensor shapes, the file layouts
people keep (original, ComfyUI's, diffusers', fp8_scaled), the parts checked to fit, and loading against the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videox_fun.families.wan import SingleFileWanFamily, recognise_single_files
from videox_fun.io.files import save_safetensors
from videox_fun.models.loading import config_metadata, count_blocks, read_header, read_state_dict, torch_dtype
from videox_fun.models.wan import single_files as sf
from videox_fun.models.wan.keys import original_config_to_diffusers, original_to_diffusers_keys
from videox_fun.models.wan.text_encoder import WanTextEncoder
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import (
    WanTransformer3DModel,
    read_transformer_weights,
    transformer_state_to_original,
)
from videox_fun.models.wan.variants import PRESETS, tiny_config, variant_of
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.runtime.fp8 import FP8, Float8Linear, dequantize_fp8_state

TINY, STEM = "Wan2.1-Fun-Tiny-InP", "wan2.1_fun_tiny_inp"
RELEASES = sorted(PRESETS)
TINY_VARIANTS = {"t2v": "T2V", "inp": "InP", "control": "Control", "control_ref": "Control V1.1 (reference image)",
                 "camera": "Control-Camera", "ti2v": "TI2V", "vace": "VACE", "animate": "Animate"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_pipe() -> WanPipeline:
    """The packaged tiny InP model, from its folder (the reference every single file is held to)."""
    return WanPipeline.from_pretrained(TINY)


@pytest.fixture(scope="module")
def tiny_files(tiny_pipe: WanPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as single files (an fp8_scaled transformer too) in a ``models/`` tree."""
    root = tmp_path_factory.mktemp("single_files")
    sf.write_single_files(tiny_pipe, root, STEM, fp8=True)
    return root


def meta_state(config: dict) -> dict[str, torch.Tensor]:
    """The names and shapes of a transformer of ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return dict(WanTransformer3DModel.class_for_config(config).from_config(config).state_dict())


def write_transformer(config: dict, path: Path, with_config: bool = True) -> Path:
    """A seeded transformer of ``config`` as a single file, its config in the metadata (``with_config``)."""
    model = WanTransformer3DModel.class_for_config(config).from_config(config)
    return save_safetensors(
        model.state_dict(), path, config_metadata("transformer", model.config) if with_config else None
    )


def read_parts(root: Path, transformer: str = f"{STEM}.safetensors", text: str = "umt5.safetensors") -> sf.WanParts:
    """The tiny files of ``root`` read from their headers, in full precision."""
    text_path = root / "text_encoders" / STEM / text
    return sf.WanParts(
        sf.read_transformer_file(root / "diffusion_models" / transformer, "float32"),
        sf.read_vae_file(root / "vae" / f"{STEM}_vae.safetensors", "float32"),
        sf.read_text_encoder_file(text_path, "float32"),
        sf.find_tokenizer(text_path),
        name=STEM,
    )


def assert_same_weights(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert ours_state.keys() == reference_state.keys()
    assert all(torch.equal(ours_state[k], reference_state[k]) for k in reference_state)


@pytest.mark.parametrize("release", RELEASES)
def test_variant_and_release_from_the_shapes_of_every_release(release: str) -> None:
    """A released transformer's config (and so its variant) comes back from its tensor names and shapes alone."""
    preset = PRESETS[release]
    state = meta_state(preset)
    found = sf.transformer_config(state, None, Path(f"{release}.safetensors"))
    fields = ("model_type", "in_dim", "out_dim", "dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len")
    assert {k: found[k] for k in fields} == {k: preset[k] for k in fields}
    assert bool(found.get("add_ref_conv")) == bool(preset.get("add_ref_conv"))
    assert bool(found.get("add_control_adapter")) == bool(preset.get("add_control_adapter"))
    assert variant_of(found) == variant_of(preset)
    assert release in sf.matching_releases(found)
    sf.check_transformer(found, state, Path(release))  # every name and shape of the file, strictly
    # ComfyUI's prefix and diffusers' names read the same.
    prefixed = {f"model.diffusion_model.{k}": v for k, v in state.items()}
    assert sf.transformer_config(transformer_state_to_original(prefixed), None, Path(release)) == found
    if preset["model_type"] == "animate":
        return  # diffusers' Wan-Animate names are not converted (its own converter reads the original names)
    diffusers = {f"transformer.{k}": v for k, v in original_to_diffusers_keys(state).items()}
    assert sf.transformer_config(transformer_state_to_original(diffusers), None, Path(release)) == found


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_variant_of_tiny_files_with_their_metadata(variant: str, tmp_path: Path) -> None:
    """Tiny transformers' heads (not 128 wide) are in no shape: the file's metadata says them, and without it the
    reader says so instead of guessing; the variant is the config's."""
    config = tiny_config(variant)
    path = write_transformer(config, tmp_path / f"{variant}.safetensors")
    transformer = sf.read_transformer_file(path, "float32")
    assert transformer.variant.name == TINY_VARIANTS[variant] and transformer.variant == variant_of(config)
    assert transformer.label.startswith(f"{variant} [{TINY_VARIANTS[variant]}") and not transformer.fp8
    diffusers = original_config_to_diffusers(config)  # a config in diffusers' field names reads the same
    assert sf.transformer_config(meta_state(config), diffusers, path)["num_heads"] == config["num_heads"]
    bare = write_transformer(config, tmp_path / "bare.safetensors", with_config=False)
    with pytest.raises(ValueError, match="head count is not in its shapes"):
        sf.read_transformer_file(bare, "float32")


def test_headers_read_names_shapes_and_dtypes_without_the_data(tmp_path: Path) -> None:
    """safetensors and pickle files describe their tensors on the meta device alike; float8 is named."""
    state = {"blocks.0.w": torch.zeros(3, 4, dtype=torch.bfloat16), "blocks.1.w": torch.zeros(2).to(FP8)}
    torch.save(state, tmp_path / "file.pth")
    for path in (save_safetensors(state, tmp_path / "file.safetensors", {"x": "y"}), tmp_path / "file.pth"):
        header = read_header(path)
        assert {k: (tuple(t.shape), t.dtype, t.device.type) for k, t in header.tensors.items()} == {
            "blocks.0.w": ((3, 4), torch.bfloat16, "meta"), "blocks.1.w": ((2,), FP8, "meta")
        }  # fmt: skip
        assert count_blocks(header.tensors, "blocks.") == 2 and sf.is_fp8(header.tensors)
    assert read_header(tmp_path / "file.safetensors").metadata == {"x": "y"}
    assert torch_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype"):
        torch_dtype("Tensor")


def test_metadata_config_must_be_json(tmp_path: Path) -> None:
    path = save_safetensors({"x": torch.zeros(1)}, tmp_path / "bad.safetensors", {"config": "{not json"})
    with pytest.raises(ValueError, match="not a JSON object"):
        read_header(path).config_entry("transformer")
    assert (
        read_header(save_safetensors({"x": torch.zeros(1)}, tmp_path / "none.safetensors")).config_entry("vae") is None
    )
    assert json.loads(config_metadata("vae", {"z_dim": 16, "_class_name": "x"})["config"]) == {"vae": {"z_dim": 16}}


def test_single_files_load_as_the_folder(tiny_pipe: WanPipeline, tiny_files: Path) -> None:
    """The tiny model's single files, recognised from their headers and loaded by the single-file family: every
    component with the folder's weights exactly; the fp8_scaled transformer keeps its float8 linears and holds
    exactly its dequantised weights, which read back the same through the weights reader of ``--transformer-path``."""
    parts = read_parts(tiny_files)
    recognised = recognise_single_files(parts)
    assert isinstance(recognised.family, SingleFileWanFamily) and recognised.variant == "InP"
    assert "i2v" in recognised.modes and recognised.config.masked_fill == -1.0 and recognised.sizes.multiple == 16
    pipe = recognised.family.load(recognised, torch.device("cpu"), torch.float32)
    for name in ("transformer", "vae", "text_encoder"):
        assert_same_weights(getattr(pipe, name), getattr(tiny_pipe, name))
    assert pipe.image_encoder is None and pipe.model_name == STEM

    fp8_path = tiny_files / "diffusion_models" / f"{STEM}_fp8_scaled.safetensors"
    fp8 = sf.read_transformer_file(fp8_path, "float32")
    assert fp8.fp8 and fp8.config == parts.transformer.config
    loaded = sf.load_transformer(fp8, torch.float32)
    widened = dequantize_fp8_state(read_transformer_weights(fp8_path))
    layers = {name: m for name, m in loaded.named_modules() if isinstance(m, Float8Linear)}
    assert "blocks.0.ffn.0" in layers
    as_loaded = {
        **loaded.state_dict(),
        **{f"{n}.weight": m.dequantized_weight(torch.float32) for n, m in layers.items()},
    }
    as_loaded = {k: v for k, v in as_loaded.items() if not k.endswith(".scale_weight")}
    assert as_loaded.keys() == widened.keys() and all(torch.equal(as_loaded[k], widened[k]) for k in widened)


def test_umt5_files_in_the_original_and_fp8_scaled_layouts(tiny_pipe: WanPipeline, tiny_files: Path) -> None:
    """Wan's original umT5 layout (``models_t5_umt5-xxl-enc-bf16.pth`` names) loads the folder's encoder exactly;
    ComfyUI's fp8_scaled one (float8 linears with scales, the ``scaled_fp8`` marker, a ``spiece_model`` tokenizer
    tensor, dropped) is widened by its scales, close to full precision."""
    folder = tiny_files / "text_encoders" / STEM
    reference = read_parts(tiny_files).text_encoder
    torch.save(tiny_pipe.text_encoder.original_state_dict(), folder / "umt5_original.pth")
    original = sf.read_text_encoder_file(folder / "umt5_original.pth", "float32")
    assert original.config == reference.config and not original.fp8
    assert_same_weights(sf.load_text_encoder(original, folder).model, tiny_pipe.text_encoder.model)

    state = read_state_dict(reference.path)
    for name, module in tiny_pipe.text_encoder.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            layer = Float8Linear.from_linear(module, scaled=True)
            state[f"{name}.weight"], state[f"{name}.scale_weight"] = layer.weight.data, layer.scale_weight
    marker = torch.empty(0, dtype=FP8)
    state |= {"scaled_fp8": marker, sf.TOKENIZER_KEY: torch.arange(16, dtype=torch.uint8)}
    path = save_safetensors(state, folder / "umt5_fp8_scaled.safetensors")
    fp8 = sf.read_text_encoder_file(path, "float32")
    assert fp8.fp8 and fp8.config == reference.config
    encoder = sf.load_text_encoder(fp8, folder)
    assert isinstance(encoder, WanTextEncoder)
    prompts = ["a red square moving right"]
    expected, found = tiny_pipe.text_encoder.encode(prompts), encoder.encode(prompts)
    assert (found - expected).abs().mean() < 0.05 * expected.abs().mean()


def test_clip_files_in_transformers_and_original_layouts(tmp_path: Path) -> None:
    """A tiny vision tower as ComfyUI keeps it (transformers' names, its config in the metadata) loads the
    folder's weights exactly; so does Wan's original layout, given the config its shapes cannot say."""
    folder = build_tiny_model_folder(tmp_path / "clip_inp", "inp", with_clip=True)
    pipe = WanPipeline.from_pretrained(folder)
    exported = sf.write_single_files(pipe, tmp_path / "models", "clip_inp")
    (path,) = exported.clip_vision
    found = sf.read_image_encoder_file(path, "float32")
    assert found.dim == pipe.image_encoder.dim
    assert_same_weights(sf.load_image_encoder(found).model, pipe.image_encoder.model)
    original = tmp_path / "models_clip.pth"
    torch.save(pipe.image_encoder.original_state_dict(), original)
    with pytest.raises(ValueError, match="not ViT-H/14"):
        sf.read_image_encoder_file(original, "float32")  # a tiny tower's heads are not ViT-H/14's 80 wide
    from_original = sf.load_image_encoder(sf.ImageEncoderFile(original, found.config, "float32"))
    assert_same_weights(from_original.model, pipe.image_encoder.model)


def test_parts_that_do_not_fit_and_files_of_another_kind(tiny_files: Path, tmp_path: Path) -> None:
    """A transformer reading text of another width than the encoder gives, a VAE file where the transformer goes, a
    text encoder without a tokenizer anywhere near: each refused, saying why (the VAE's channels: tests/comfyui)."""
    parts = read_parts(tiny_files)
    path = write_transformer(tiny_config("t2v", text_dim=48), tmp_path / "t2v.safetensors")
    wide = sf.WanParts(sf.read_transformer_file(path, "float32"), parts.vae, parts.text_encoder, parts.tokenizer)
    with pytest.raises(ValueError, match=r"reads 48-wide text; umt5\.safetensors gives 64"):
        recognise_single_files(wide)
    with pytest.raises(ValueError, match="not a Wan transformer"):
        sf.read_transformer_file(parts.vae.path, "float32")
    lonely = tmp_path / "umt5.safetensors"
    lonely.write_bytes(parts.text_encoder.path.read_bytes())
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl"):
        sf.find_tokenizer(lonely)
    release = tmp_path / "Fun_Models" / "Wan2.1-Fun-14B-InP" / "google" / "umt5-xxl"  # as VideoX-Fun keeps it
    release.mkdir(parents=True)
    (release / "tokenizer.json").write_text((parts.tokenizer / "tokenizer.json").read_text())
    assert sf.find_tokenizer(lonely, [tmp_path / "Fun_Models"]) == release


@pytest.mark.parametrize(
    ("name", "fill"),
    [("wan2.1_i2v_480p_14B_fp16.safetensors", 0.0), ("Wan2.1-Fun-14B-InP.safetensors", -1.0),
     ("wan2.1_t2v_1.3B_fp16.safetensors", -1.0)],
)  # fmt: skip
def test_masked_fill_from_the_file_name(name: str, fill: float) -> None:
    """Wan-AI's I2V and Fun's InP transformers share their shapes: the name tells their fill of unknown pixels."""
    assert sf.masked_fill_for(Path(name)) == fill


@pytest.mark.parametrize("variant", ["vace", "animate"])
def test_stream_models_load_from_single_files_as_their_class(variant: str, tmp_path: Path) -> None:
    """A VACE / Animate transformer file (ComfyUI's prefix too) loads as its own class with every weight."""
    config = tiny_config(variant)
    torch.manual_seed(0)
    model = WanTransformer3DModel.class_for_config(config).from_config(config)
    prefixed = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
    path = save_safetensors(prefixed, tmp_path / f"{variant}.safetensors", config_metadata("transformer", model.config))
    loaded = sf.load_transformer(sf.read_transformer_file(path, "float32"), torch.float32)
    assert type(loaded) is type(model) and variant_of(loaded.config).name == TINY_VARIANTS[variant]
    assert_same_weights(loaded, model)
