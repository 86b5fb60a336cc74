"""The chunked loaders (one component per file, from ComfyUI's folders), without ComfyUI: VideoX-Fun's sockets, the
Wan variant told from tensor shapes, and runs on real single files of the tiny models against the folder loader."""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from videox_fun.io.files import save_safetensors
from videox_fun.models.wan.keys import original_config_to_diffusers
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import PRESETS, tiny_config, variant_of
from videox_fun.registry import resolve_model
from videox_fun.runtime.fp8 import FP8, Float8Linear, dequantize_fp8_state

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the pack is the repository's top-level ``comfyui`` package
    sys.path.insert(0, str(REPO))
pack = importlib.import_module("comfyui.nodes")
pack_models = importlib.import_module("comfyui.models")
sf = importlib.import_module("comfyui.single_files")
NODES = pack.NODE_CLASS_MAPPINGS

# VideoX-Fun's chunked loaders (aigc-apps/VideoX-Fun, comfyui/wan2_1/nodes.py; registered in
# comfyui/comfyui_nodes.py), written down as facts: required inputs in order, optional inputs, outputs (type, name).
VIDEOX_FUN_CHUNKED = {
    "LoadWanTransformerModel": (
        ["model_name", "precision"], [], [("TransformerModel", "transformer"), ("STRING", "model_name")]
    ),
    "LoadWanVAEModel": (["model_name", "precision"], [], [("VAEModel", "vae")]),
    "LoadWanTextEncoderModel": (
        ["model_name", "precision"], [], [("TextEncoderModel", "text_encoder"), ("Tokenizer", "tokenizer")]
    ),
    "LoadWanClipEncoderModel": (["model_name", "precision"], [], [("ClipEncoderModel", "clip_encoder")]),
    "CombineWanPipeline": (
        ["transformer", "vae", "text_encoder", "tokenizer", "model_name", "GPU_memory_mode", "model_type"],
        ["clip_encoder"],
        [("FunModels", "funmodels")],
    ),
}  # fmt: skip
# Their widgets' choices and defaults there: precision fp16 / bf16 (bf16), model_type Inpaint / Control (Inpaint),
# GPU_memory_mode default model_cpu_offload; the CLIP loader lists clip_vision/ and text_encoders/.
TINY, TINY_STEM = "Wan2.1-Fun-Tiny-InP", "wan2.1_fun_tiny_inp"  # as the conftest's comfy_models writes it
TINY_VARIANTS = {"t2v": "T2V", "inp": "InP", "control": "Control", "control_ref": "Control V1.1 (reference image)",
                 "camera": "Control-Camera", "ti2v": "TI2V"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VIDEOX_FUN_CHUNKED))
def test_chunked_nodes_have_videox_funs_sockets(name: str) -> None:
    required, optional, outputs = VIDEOX_FUN_CHUNKED[name]
    cls = NODES[name]
    spec = cls.INPUT_TYPES()
    assert list(spec["required"]) == required and list(spec.get("optional", {})) == optional
    assert list(zip(cls.RETURN_TYPES, cls.RETURN_NAMES, strict=True)) == outputs
    if "precision" in spec["required"]:
        choices, options = spec["required"]["precision"]
        assert {"fp16", "bf16"} <= set(choices) and options["default"] == "bf16"
    if name == "CombineWanPipeline":
        assert spec["required"]["model_type"] == (["Inpaint", "Control"], {"default": "Inpaint"})
        assert spec["required"]["GPU_memory_mode"][1]["default"] == "model_cpu_offload"
    assert cls.__doc__ and name in pack.NODE_DISPLAY_NAME_MAPPINGS


def meta_state(config: dict) -> dict[str, torch.Tensor]:
    """The names and shapes of a transformer of ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return dict(WanTransformer3DModel.from_config(config).state_dict())


@pytest.mark.parametrize("release", sorted(PRESETS))
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
    assert sf.transformer_config(sf.transformer_names(prefixed), None, Path(release)) == found


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_variant_of_tiny_files_with_their_metadata(variant: str, tmp_path: Path) -> None:
    """Tiny transformers' heads (not 128 wide) are in no shape: the file's metadata says them, and without it the
    loader says so instead of guessing; the variant is the config's, and the loader node reads the file's header."""
    config = tiny_config(variant)
    model = WanTransformer3DModel.from_config(config)
    metadata = sf.config_metadata("transformer", model.config)
    path = save_safetensors(model.state_dict(), tmp_path / f"{variant}.safetensors", metadata)
    transformer, label = pack.LoadWanTransformerModel().loadmodel(str(path), "fp32")
    assert transformer.variant.name == TINY_VARIANTS[variant] and transformer.variant == variant_of(config)
    assert label.startswith(f"{variant} [{TINY_VARIANTS[variant]}") and not transformer.fp8
    diffusers = original_config_to_diffusers(config)  # a config in diffusers' field names reads the same
    assert sf.transformer_config(meta_state(config), diffusers, path)["num_heads"] == config["num_heads"]
    bare = save_safetensors(model.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="head count is not in its shapes"):
        pack.LoadWanTransformerModel().loadmodel(str(bare), "fp32")


def sampler_run(models: object, sampler: str = "WanFunT2VSampler", **media: torch.Tensor) -> torch.Tensor:
    """A short run through a sampler node (2 steps, 5 frames, no step cache: the loaders are what differs)."""
    size = {"width": 64, "height": 64, "is_image": False} if sampler == "WanFunT2VSampler" else {"base_resolution": 64}
    (images,) = NODES[sampler]().process(
        funmodels=models, prompt="a red square moving right", negative_prompt="", video_length=5, seed=43, steps=2,
        cfg=1.5, scheduler="Flow", shift=3, teacache_threshold=0.1, enable_teacache=False, num_skip_start_steps=5,
        teacache_offload=False, cfg_skip_ratio=0.0, **size, **media,
    )  # fmt: skip
    assert images.shape == (5, 64, 64, 3) and torch.isfinite(images).all()
    return images


def chunked(transformer: str, vae: str, text_encoder: str, clip: str | None = None, model_type: str = "Inpaint"):
    """The chunked loaders and CombineWanPipeline, by file names as ComfyUI's lists give them."""
    found, model_name = pack.LoadWanTransformerModel().loadmodel(transformer, "fp32")
    (vae_file,) = pack.LoadWanVAEModel().loadmodel(vae, "fp32")
    text, tokenizer = pack.LoadWanTextEncoderModel().loadmodel(text_encoder, "fp32")
    image = pack.LoadWanClipEncoderModel().loadmodel(clip, "fp32")[0] if clip else None
    combine = pack.CombineWanPipeline().loadmodel
    return combine(model_name, "model_full_load", model_type, found, vae_file, text, tokenizer, image)[0]


def fp8_scaled_umt5(folder: Path, target: Path) -> Path:
    """The tiny umT5 of ``folder`` as ComfyUI's ``umt5_xxl_fp8_e4m3fn_scaled`` stores it, in ``target``: its linears
    in float8 with per-tensor scales, the ``scaled_fp8`` marker, and a ``spiece_model`` byte tensor (ComfyUI's
    tokenizer; ignored here: tokenizer.json is read). The tokenizer files go beside it."""
    from safetensors.torch import load_file
    from transformers import UMT5Config, UMT5EncoderModel

    found = sf.read_text_encoder(folder / "umt5.safetensors", "float32")
    state = load_file(str(found.path))
    model = UMT5EncoderModel(UMT5Config(**found.config))
    model.load_state_dict({**state, "encoder.embed_tokens.weight": state["shared.weight"]})
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            layer = Float8Linear.from_linear(module, scaled=True)
            state[f"{name}.weight"], state[f"{name}.scale_weight"] = layer.weight.data, layer.scale_weight
    state |= {"scaled_fp8": torch.empty(0, dtype=FP8), sf.TOKENIZER_KEY: torch.arange(16, dtype=torch.uint8)}
    target.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (target / name).write_text((folder / name).read_text())
    return save_safetensors(state, target / "umt5_fp8_scaled.safetensors")


def test_chunked_loaders_match_the_folder_loader(comfy_folders: Path) -> None:
    """The packaged tiny model as ComfyUI single files, through the chunked loaders, CombineWanPipeline and
    WanFunT2VSampler: the same video as LoadWanFunModel's with the same seed, bit for bit in full precision;
    the fp8_scaled transformer exactly as its dequantised weights, and within 0.01 (mean) of full precision."""
    (folder_models,) = pack.LoadWanFunModel().loadmodel(TINY, "model_full_load", "auto", "fp32", "Inpaint")
    reference = sampler_run(folder_models)

    vae, text = f"{TINY_STEM}_vae.safetensors", f"{TINY_STEM}/umt5.safetensors"
    for node, name in ((pack.LoadWanTransformerModel, f"{TINY_STEM}_fp8_scaled.safetensors"),
                       (pack.LoadWanVAEModel, vae), (pack.LoadWanTextEncoderModel, text)):  # fmt: skip
        assert name in node.INPUT_TYPES()["required"]["model_name"][0]  # listed from ComfyUI's folders
    models = chunked(f"{TINY_STEM}.safetensors", vae, text)
    assert models.family == "wan" and models.recognised.variant == "InP" and "i2v" in models.recognised.modes
    assert torch.equal(sampler_run(models), reference)

    fp8_models = chunked(f"{TINY_STEM}_fp8_scaled.safetensors", vae, text)
    fp8 = sampler_run(fp8_models)
    assert isinstance(pack_models._HELD.loaded.pipe.transformer.blocks[0].ffn[0], Float8Linear)  # kept in fp8
    header = sf.read_header(comfy_folders / "diffusion_models" / f"{TINY_STEM}_fp8_scaled.safetensors")
    assert "scaled_fp8" in header.tensors and any(k.endswith(".scale_weight") for k in header.tensors)
    widened = dequantize_fp8_state(sf.read_state_dict(header.path))  # the same weights in fp32
    save_safetensors(widened, comfy_folders / "diffusion_models" / "widened.safetensors", header.metadata)
    assert torch.equal(sampler_run(chunked("widened.safetensors", vae, text)), fp8)
    difference = (fp8 - reference).abs()
    print(f"\nfp8_scaled vs full precision: mean |diff| {difference.mean():.4f}, max {difference.max():.3f}")
    assert difference.mean() < 0.01

    # Wan's original umT5 file (models_t5_umt5-xxl-enc-bf16.pth names), and ComfyUI's fp8_scaled one.
    from videox_fun.models.wan.text_encoder import WanTextEncoder

    encoder = WanTextEncoder.from_pretrained(resolve_model(TINY) / "text_encoder")
    torch.save(encoder.original_state_dict(), comfy_folders / "text_encoders" / TINY_STEM / "umt5_original.pth")
    assert torch.equal(
        sampler_run(chunked(f"{TINY_STEM}.safetensors", vae, f"{TINY_STEM}/umt5_original.pth")), reference
    )
    fp8_scaled_umt5(comfy_folders / "text_encoders" / TINY_STEM, comfy_folders / "text_encoders" / "umt5_fp8")
    text_fp8 = sampler_run(chunked(f"{TINY_STEM}.safetensors", vae, "umt5_fp8/umt5_fp8_scaled.safetensors"))
    assert (text_fp8 - reference).abs().mean() < 0.01
    pack_models.release_pipeline()


def test_chunked_i2v_with_a_clip_file_matches_the_folder_loader(
    tmp_path: Path, folder_paths_over: Callable[[Path], types.ModuleType]
) -> None:
    """An i2v model with a CLIP branch (tiny, random weights): its vision tower from clip_vision/ in ComfyUI's
    (transformers') names, a start image through WanFunInpaintSampler, the same video as from its folder."""
    folder = build_tiny_model_folder(tmp_path / "Wan2.1-Fun-Tiny-Random-Clip-InP", "inp", with_clip=True)
    models_dir = tmp_path / "models"
    exported = sf.export_single_files(folder, models_dir, "clip_inp")
    folder_paths_over(models_dir)
    assert exported.clip_vision and "clip_inp_clip.safetensors" in pack.LoadWanClipEncoderModel.INPUT_TYPES()[
        "required"]["model_name"][0]  # fmt: skip
    start = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    (folder_models,) = pack.LoadWanFunModel().loadmodel(str(folder), "model_full_load", "auto", "fp32", "Inpaint")
    reference = sampler_run(folder_models, "WanFunInpaintSampler", start_img=start)
    models = chunked("clip_inp.safetensors", "clip_inp_vae.safetensors", "clip_inp/umt5.safetensors",
                     "clip_inp_clip.safetensors")  # fmt: skip
    assert models.recognised.family.parts.image_encoder is not None
    assert torch.equal(sampler_run(models, "WanFunInpaintSampler", start_img=start), reference)
    assert pack_models._HELD.loaded.pipe.image_encoder is not None
    pack_models.release_pipeline()


def test_combine_checks_what_the_files_are(comfy_folders: Path, tmp_path: Path) -> None:
    """CombineWanPipeline refuses parts that do not fit, and the loaders refuse files of another kind, saying why."""
    vae, text = f"{TINY_STEM}_vae.safetensors", f"{TINY_STEM}/umt5.safetensors"
    with pytest.raises(ValueError, match="choose model_type Inpaint"):
        chunked(f"{TINY_STEM}.safetensors", vae, text, model_type="Control")
    wide = tiny_config("ti2v", text_dim=64)  # a Wan2.2-style transformer (48 latent channels) with a Wan2.1 VAE
    model = WanTransformer3DModel.from_config(wide)
    metadata = sf.config_metadata("transformer", model.config)
    save_safetensors(model.state_dict(), comfy_folders / "diffusion_models" / "ti2v.safetensors", metadata)
    with pytest.raises(ValueError, match=r"needs a Wan2.2 \(48 channels\) VAE"):
        chunked("ti2v.safetensors", vae, text)
    with pytest.raises(ValueError, match="not a Wan transformer"):
        sf.read_transformer(comfy_folders / "vae" / vae, "float32")  # a VAE file where the transformer goes
    with pytest.raises(FileNotFoundError, match="not in ComfyUI's vae folders"):
        pack.LoadWanVAEModel().loadmodel("missing.safetensors", "fp32")
    lonely = tmp_path / "umt5.safetensors"  # no tokenizer.json anywhere near
    lonely.write_bytes((comfy_folders / "text_encoders" / text).read_bytes())
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl"):
        sf.find_tokenizer(lonely)


def test_metadata_config_must_be_json(tmp_path: Path) -> None:
    path = save_safetensors({"x": torch.zeros(1)}, tmp_path / "bad.safetensors", {"config": "{not json"})
    with pytest.raises(ValueError, match="not a JSON object"):
        sf.read_header(path).config_entry("transformer")
    assert (
        sf.read_header(save_safetensors({"x": torch.zeros(1)}, tmp_path / "none.safetensors")).config_entry("vae")
        is None
    )
    assert json.loads(sf.config_metadata("vae", {"z_dim": 16, "_class_name": "x"})["config"]) == {"vae": {"z_dim": 16}}
