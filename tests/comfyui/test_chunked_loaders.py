"""The chunked loader nodes (one component per file, from ComfyUI's folders), without ComfyUI: VideoX-Fun's sockets,
and runs on real single files of the tiny models against the folder loader. What the library reads from such files
(the variant from tensor shapes, the layouts, fp8) is tested in tests/models/test_single_files.py."""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from videox_fun.io.files import save_safetensors
from videox_fun.models.loading import config_metadata, read_header, read_state_dict
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config
from videox_fun.runtime.fp8 import Float8Linear, dequantize_fp8_state

# The pack is the repository's top-level ``comfyui`` package, on sys.path through this folder's conftest.
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
    header = read_header(comfy_folders / "diffusion_models" / f"{TINY_STEM}_fp8_scaled.safetensors")
    assert "scaled_fp8" in header.tensors and any(k.endswith(".scale_weight") for k in header.tensors)
    widened = dequantize_fp8_state(read_state_dict(header.path))  # the same weights in fp32
    save_safetensors(widened, comfy_folders / "diffusion_models" / "widened.safetensors", header.metadata)
    assert torch.equal(sampler_run(chunked("widened.safetensors", vae, text)), fp8)
    difference = (fp8 - reference).abs()
    print(f"\nfp8_scaled vs full precision: mean |diff| {difference.mean():.4f}, max {difference.max():.3f}")
    assert difference.mean() < 0.01

    pack_models.release_pipeline()


def test_chunked_i2v_with_a_clip_file_matches_the_folder_loader(
    tmp_path: Path, folder_paths_over: Callable[[Path], types.ModuleType], caplog: pytest.LogCaptureFixture
) -> None:
    """An i2v model with a CLIP branch (tiny, random weights): its vision tower from clip_vision/ in ComfyUI's
    (transformers') names, a start image through WanFunInpaintSampler, the same video as from its folder. Without
    a clip_encoder it is joined all the same, the log naming the node it needs for an input image."""
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
    with caplog.at_level(logging.WARNING, logger="videox_fun.comfyui"):
        models = chunked("clip_inp.safetensors", "clip_inp_vae.safetensors", "clip_inp/umt5.safetensors")
    assert models.recognised.family.parts.image_encoder is None and "LoadWanClipEncoderModel" in caplog.text


def test_combine_checks_what_the_files_are(comfy_folders: Path, tmp_path: Path) -> None:
    """CombineWanPipeline refuses parts that do not fit, and the loaders refuse files of another kind, saying why."""
    vae, text = f"{TINY_STEM}_vae.safetensors", f"{TINY_STEM}/umt5.safetensors"
    with pytest.raises(ValueError, match="choose model_type Inpaint"):
        chunked(f"{TINY_STEM}.safetensors", vae, text, model_type="Control")
    wide = tiny_config("ti2v", text_dim=64)  # a Wan2.2-style transformer (48 latent channels) with a Wan2.1 VAE
    model = WanTransformer3DModel.from_config(wide)
    metadata = config_metadata("transformer", model.config)
    save_safetensors(model.state_dict(), comfy_folders / "diffusion_models" / "ti2v.safetensors", metadata)
    with pytest.raises(ValueError, match=r"needs a Wan2.2 \(48 channels\) VAE"):
        chunked("ti2v.safetensors", vae, text)
    with pytest.raises(FileNotFoundError, match="not in ComfyUI's vae folders"):
        pack.LoadWanVAEModel().loadmodel("missing.safetensors", "fp32")
    lonely = tmp_path / "umt5.safetensors"  # no tokenizer.json anywhere near
    lonely.write_bytes((comfy_folders / "text_encoders" / text).read_bytes())
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl"):
        sf.find_tokenizer(lonely)
