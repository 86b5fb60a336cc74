"""LoRA files of the image families (FLUX.1, FLUX.2, Qwen-Image, Z-Image) in the layouts people share (kohya /
sd-scripts, ComfyUI, ai-toolkit, peft), merged into our transformer as diffusers' pipeline loads and fuses them.

Each file is written from the tiny model's own original (BFL / Z-Image) module names and shapes, rank 4 with alpha 3
where the layout carries alpha; the reference is diffusers' ``load_lora_weights`` + ``fuse_lora`` on diffusers' own
transformer class read from the same folder, and every weight of the two transformers is compared (fp32).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path

import diffusers
import pytest
import torch
from flux_helpers import diffusers_to_bfl as flux_to_bfl
from helpers import read_png, read_sidecar
from safetensors.torch import load_file, save_file

from videox_fun.families import recognise
from videox_fun.models.flux.tiny import build_tiny_flux_folder
from videox_fun.models.flux2.single_files import diffusers_to_bfl as flux2_to_bfl
from videox_fun.models.flux2.tiny import build_tiny_flux2_folder
from videox_fun.models.lora import merge_lora
from videox_fun.models.qwenimage.tiny import build_tiny_qwenimage_folder
from videox_fun.models.zimage.single_files import diffusers_to_original as zimage_to_original
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder

RANK, ALPHA = 4, 3.0
FP32_TOLERANCE = 1e-6  # the same fp32 products on both sides; what is left is summation order

# How each layout names one module's tensors: (down, up, alpha or None when the layout carries no alpha).
LAYOUTS: dict[str, Callable[[str], tuple[str, str, str | None]]] = {
    "kohya": lambda m: (f"lora_unet_{m.replace('.', '_')}.lora_down.weight",
                        f"lora_unet_{m.replace('.', '_')}.lora_up.weight", f"lora_unet_{m.replace('.', '_')}.alpha"),
    "comfyui": lambda m: (f"diffusion_model.{m}.lora_down.weight", f"diffusion_model.{m}.lora_up.weight",
                          f"diffusion_model.{m}.alpha"),
    "ai-toolkit": lambda m: (f"diffusion_model.{m}.lora_A.weight", f"diffusion_model.{m}.lora_B.weight", None),
    "peft": lambda m: (f"base_model.model.{m}.lora_A.weight", f"base_model.model.{m}.lora_B.weight", None),
    "peft-default": lambda m: (f"diffusion_model.{m}.lora_A.default.weight",
                               f"diffusion_model.{m}.lora_B.default.weight", f"diffusion_model.{m}.alpha"),
    "dotted": lambda m: (f"diffusion_model.{m}.lora.down.weight", f"diffusion_model.{m}.lora.up.weight",
                         f"diffusion_model.{m}.alpha"),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ImageFamily:
    """A tiny folder builder, diffusers' pipeline and transformer classes, and the original module names."""

    build: Callable[[Path], Path]
    pipeline: type
    transformer: type
    to_original: Callable[[dict], dict]  # diffusers-named weights -> the original layout's
    adapted: Callable[[str, str], bool]  # (module, layout): an original module diffusers' converter maps
    layouts: tuple[str, ...]


def kohya_flux2_maps(module: str, layout: str) -> bool:
    """diffusers' kohya FLUX.2 converter maps no modulation layer nor guidance_in (its ai-toolkit one does)."""
    return layout != "kohya" or not ("modulation" in module or "guidance_in" in module)


FAMILIES = {
    # FLUX.1's kohya converter splits single-block linear1 at the released widths only: the tiny model's is left out.
    "flux": ImageFamily(
        build_tiny_flux_folder, diffusers.FluxPipeline, diffusers.FluxTransformer2DModel, flux_to_bfl,
        lambda m, _: m.startswith("double_blocks.") or m.endswith(("linear2", "modulation.lin")), ("kohya", "comfyui"),
    ),
    "flux2": ImageFamily(
        build_tiny_flux2_folder, diffusers.Flux2Pipeline, diffusers.Flux2Transformer2DModel, flux2_to_bfl,
        kohya_flux2_maps, ("kohya", "ai-toolkit", "peft"),
    ),
    "qwenimage": ImageFamily(
        build_tiny_qwenimage_folder, diffusers.QwenImagePipeline, diffusers.QwenImageTransformer2DModel, dict,
        lambda m, _: True, ("comfyui", "kohya", "peft-default"),
    ),
    # diffusers' Z-Image converter keeps the original x_embedder / final_layer names, which its transformer lacks.
    "zimage": ImageFamily(
        build_tiny_zimage_folder, diffusers.ZImagePipeline, diffusers.ZImageTransformer2DModel, zimage_to_original,
        lambda m, _: not m.startswith(("x_embedder", "final_layer")), ("kohya", "dotted"),
    ),
}  # fmt: skip
CASES = [(family, layout) for family, spec in FAMILIES.items() for layout in spec.layouts]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> Callable[[str], tuple[Path, torch.nn.Module]]:
    """A family's tiny folder and our transformer as the family loads it (with its LoRA reader), built once."""
    cache: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in cache:
            folder = FAMILIES[name].build(tmp_path_factory.mktemp(name))
            recognised = recognise(folder)
            pipe = recognised.family.load(recognised, torch.device("cpu"), torch.float32)
            cache[name] = folder, pipe.transformers[0]
        return cache[name]

    return get


def original_modules(family: str, model: torch.nn.Module, layout: str) -> dict[str, tuple[int, int]]:
    """The original layout's Linear modules of ``model`` that diffusers' converter of ``layout`` maps: name ->
    (out, in)."""
    original = FAMILIES[family].to_original(model.state_dict())
    return {
        key.removesuffix(".weight"): tuple(value.shape)
        for key, value in original.items()
        if key.endswith(".weight")
        and value.dim() == 2
        and FAMILIES[family].adapted(key.removesuffix(".weight"), layout)
    }


def write_lora(path: Path, modules: dict[str, tuple[int, int]], layout: str, seed: int = 0) -> Path:
    """A rank-4 LoRA of random down / up weights on ``modules`` in ``layout`` (alpha 3 where the layout has one)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_features, in_features) in sorted(modules.items()):
        down, up, alpha = LAYOUTS[layout](module)
        tensors[down] = torch.randn(RANK, in_features, generator=generator) * 0.1  # (rank, in)
        tensors[up] = torch.randn(out_features, RANK, generator=generator) * 0.1  # (out, rank)
        if alpha is not None:
            tensors[alpha] = torch.tensor(ALPHA)
    save_file(tensors, str(path))
    return path


def diffusers_fused(family: str, folder: Path, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """diffusers' transformer read from ``folder`` after its pipeline's ``load_lora_weights(path)`` + ``fuse_lora``:
    its weights, and the modules it put a LoRA on."""
    spec = FAMILIES[family]
    model = spec.transformer.from_pretrained(str(folder / "transformer"), torch_dtype=torch.float32)
    others = [name for name in inspect.signature(spec.pipeline.__init__).parameters if name != "self"]
    pipe = spec.pipeline(**(dict.fromkeys(others) | {"transformer": model}))  # no text encoder, VAE or scheduler
    pipe.load_lora_weights(str(path))
    adapted = sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A"))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    return model.state_dict(), adapted


@pytest.mark.parametrize(("family", "layout"), CASES)
def test_a_shared_layout_merges_as_diffusers_fuses_it(family, layout, loaded, tmp_path):
    folder, base = loaded(family)
    modules = original_modules(family, base, layout)
    path = write_lora(tmp_path / f"{layout}.safetensors", modules, layout)
    ours = copy.deepcopy(base)
    merged = merge_lora(ours, path)
    theirs, adapted = diffusers_fused(family, folder, path)
    assert merged == adapted  # the same layers, each of the file's modules on at least one
    assert len(merged) >= len(modules)
    gap = max((ours.state_dict()[key] - value).abs().max().item() for key, value in theirs.items())
    moved = max((ours.state_dict()[key] - value).abs().max().item() for key, value in base.state_dict().items())
    print(f"{family} {layout}: {len(modules)} file modules -> {len(merged)} layers, max |ours - diffusers| {gap:.2e}")
    assert moved > 1e-2  # the LoRA changes the weights
    assert gap <= FP32_TOLERANCE
    assert ours.state_dict().keys() == theirs.keys()


def bogus_module(family: str) -> str:
    """An original-layout module name this architecture does not have, inside a real block."""
    return {"flux": "double_blocks.0.img_attn.bogus", "flux2": "double_blocks.0.img_attn.bogus",
            "qwenimage": "transformer_blocks.0.attn.bogus", "zimage": "layers.0.attention.bogus"}[family]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_a_key_that_names_no_module_fails_in_one_line_naming_it(family, loaded, tmp_path):
    _, base = loaded(family)
    layout = FAMILIES[family].layouts[0]
    modules = original_modules(family, base, layout) | {bogus_module(family): (8, 32)}
    path = write_lora(tmp_path / "bogus.safetensors", modules, layout)
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ValueError, match="bogus") as error:
        merge_lora(base, path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert all(torch.equal(value, base.state_dict()[key]) for key, value in before.items())  # nothing half-merged


@pytest.mark.parametrize(
    ("family", "layout", "module", "message"),
    [
        # diffusers' FLUX.1 converter maps these outside `transformer.`, so its own loader would ignore them.
        ("flux", "kohya", "img_in", r"outside the transformer.*x_embedder"),
        # ... and splits single-block linear1 at the released widths (3 x 3072 + 12288) only.
        ("flux", "kohya", "single_blocks.0.linear1", r"cannot read it: .*assert sum\(dims\)"),
        # FLUX.2's kohya converter warns and drops the modulation layers: refused instead.
        ("flux2", "kohya", "double_stream_modulation_img.lin", r"leave part of it out: .*double_stream_modulation"),
        # Z-Image's converter splits a fused qkv only in the kohya / dotted layouts.
        ("zimage", "comfyui", "layers.0.attention.qkv", r"layers\.0\.attention\.qkv\.lora_A"),
    ],
)  # fmt: skip
def test_what_diffusers_would_not_merge_fails_in_one_line(family, layout, module, message, loaded, tmp_path):
    _, base = loaded(family)
    shape = tuple(FAMILIES[family].to_original(base.state_dict())[f"{module}.weight"].shape)
    path = write_lora(tmp_path / "lora.safetensors", {module: shape}, layout)
    with pytest.raises(ValueError, match=message) as error:
        merge_lora(base, path)
    assert "\n" not in str(error.value)


def test_text_encoder_and_non_finite_tensors_fail_naming_the_key(loaded, tmp_path):
    _, base = loaded("flux")
    path = write_lora(tmp_path / "comfyui.safetensors", original_modules("flux", base, "comfyui"), "comfyui")
    tensors = load_file(str(path))
    # ComfyUI's text-encoder LoRA, which diffusers' FLUX.1 reader drops without a word (T5) or loads elsewhere.
    te_key = "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight"
    save_file({**tensors, te_key: torch.zeros(RANK, 8)}, str(tmp_path / "te.safetensors"))
    with pytest.raises(ValueError, match=r"text-encoder LoRA.*SelfAttention\.q\.lora_down"):
        merge_lora(base, tmp_path / "te.safetensors")
    tensors["diffusion_model.double_blocks.1.txt_mlp.0.lora_up.weight"][0, 0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"double_blocks\.1\.txt_mlp\.0\.lora_up\.weight holds non-finite"):
        merge_lora(base, path)


def test_generate_merges_a_kohya_flux_lora_end_to_end(loaded, tmp_path):
    from videox_fun.cli import main

    folder, base = loaded("flux")
    path = write_lora(tmp_path / "kohya.safetensors", original_modules("flux", base, "kohya"), "kohya")
    fast = ["--model", str(folder), "--prompt", "a red circle", "--steps", "2", "--height", "32", "--width", "32",
            "--seed", "0", "--quiet"]  # fmt: skip
    images = {}
    for name, flags in (
        ("plain", []),
        ("lora", ["--lora-path", str(path)]),
        ("zero", ["--lora-path", str(path), "--lora-weight", "0"]),
    ):
        out = tmp_path / f"{name}.png"
        assert main(["generate", *fast, *flags, "--output", str(out)]) == 0
        images[name] = read_png(out)
    assert read_sidecar(tmp_path / "lora.png")["loras"] == [{"path": str(path), "weight": 1.0}]
    assert (images["zero"] == images["plain"]).all()
    assert (images["lora"] != images["plain"]).any()
