"""The image families' chunked loader nodes (Z-Image, FLUX.2, Qwen-Image: one component per file, from ComfyUI's
folders), without ComfyUI: VideoX-Fun's sockets; runs on tiny random models written as ComfyUI single files
(``comfyui.write_single_files``: Z-Image's original transformer names, ldm ``ae.safetensors``, ``model.``-prefixed
Qwen3; BFL's FLUX.2 names and the Mistral language model alone; Qwen-Image's diffusers transformer, Wan-original VAE,
Qwen2.5-VL checkpoint names; tokenizers / processor in ``Fun_Models/``) against the whole-folder loader; a Fun control
file of ``model_patches/`` joined to the transformer file (Load*ControlNetInModel) against the whole-folder loader +
Load*ControlNetInPipeline; ``.sft`` files read as safetensors; one-line refusals; the released-size layouts against
diffusers' own converters on the meta device.

Measured (fp32, CPU, 64x64, 2 steps): the chunked chain's image equals the whole-folder loader's exactly, max abs
diff 0.0 of the [0, 1] float image for Z-Image-Turbo (cfg 1.5), FLUX.2 (embedded guidance 3), Qwen-Image (true CFG 2)
and Qwen-Image-Edit (with LoadQwenImageProcessor); with a tiny control file through Load*ControlNetInModel the
control sampler's control_inpaint image equals the folder loader + Load*ControlNetInPipeline's, max abs diff 0.0 for
Z-Image-Turbo (Fun-Controlnet-Union 2.1), FLUX.2 and Qwen-Image.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pack = importlib.import_module("comfyui.nodes")
pack_models = importlib.import_module("comfyui.models")
sf = importlib.import_module("comfyui.single_files")
NODES = pack.NODE_CLASS_MAPPINGS
SIZE, STEPS, SEED, PROMPT = 64, 2, 43, "a red square on a blue background"

# VideoX-Fun's chunked loaders of the image families (aigc-apps/VideoX-Fun at 804a425,
# comfyui/{z_image,flux2,qwenimage}/nodes.py, named in comfyui/comfyui_nodes.py), written down as facts: required
# inputs in order, optional inputs, outputs (type, name), display name.
_TRANSFORMER = (["model_name", "precision"], [], [("TransformerModel", "transformer"), ("STRING", "model_name")])
_VAE = (["model_name", "precision"], [], [("VAEModel", "vae")])
_TEXT = (["model_name", "precision"], [], [("TextEncoderModel", "text_encoder"), ("Tokenizer", "tokenizer")])
_COMBINE = ["transformer", "vae", "text_encoder", "tokenizer", "model_name", "GPU_memory_mode"]
VIDEOX_FUN_CHUNKED: dict[str, tuple[list[str], list[str], list[tuple[str, str]], str]] = {
    "LoadZImageTransformerModel": (*_TRANSFORMER, "Load ZImage Transformer Model"),
    "LoadZImageVAEModel": (*_VAE, "Load ZImage VAE Model"),
    "LoadZImageTextEncoderModel": (*_TEXT, "Load ZImage TextEncoder Model"),
    "CombineZImagePipeline": (_COMBINE, ["processor"], [("FunModels", "funmodels")], "Combine ZImage Pipeline"),
    "LoadFlux2TransformerModel": (*_TRANSFORMER, "Load FLUX2 Transformer Model"),
    "LoadFlux2VAEModel": (*_VAE, "Load FLUX2 VAE Model"),
    "LoadFlux2TextEncoderModel": (*_TEXT, "Load FLUX2 Text Encoder Model"),
    "CombineFlux2Pipeline": (_COMBINE, [], [("FunModels", "funmodels")], "Combine FLUX2 Pipeline"),
    "LoadQwenImageTransformerModel": (
        ["model_name", "zero_cond_t", "precision"],
        [],
        _TRANSFORMER[2],
        "Load QwenImage Transformer Model",
    ),
    "LoadQwenImageVAEModel": (*_VAE, "Load QwenImage VAE Model"),
    "LoadQwenImageTextEncoderModel": (*_TEXT, "Load QwenImage TextEncoder Model"),
    "LoadQwenImageProcessor": ([], [], [("Processor", "processor")], "Load QwenImage Processor"),
    "CombineQwenImagePipeline": (_COMBINE, ["processor"], [("FunModels", "funmodels")], "Combine QwenImage Pipeline"),
}
# Their widgets there: precision fp16 / bf16 (default bf16), zero_cond_t False / True (False), GPU_memory_mode default
# model_cpu_offload.


@pytest.mark.parametrize("name", sorted(VIDEOX_FUN_CHUNKED))
def test_chunked_image_nodes_have_videox_funs_sockets(name: str) -> None:
    required, optional, outputs, display = VIDEOX_FUN_CHUNKED[name]
    cls = NODES[name]
    spec = cls.INPUT_TYPES()
    assert list(spec["required"]) == required and list(spec.get("optional", {})) == optional
    assert list(zip(cls.RETURN_TYPES, cls.RETURN_NAMES, strict=True)) == outputs
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[name] == display and cls.__doc__
    if "precision" in spec["required"]:
        choices, options = spec["required"]["precision"]
        assert {"fp16", "bf16"} <= set(choices) and options["default"] == "bf16"
    if "zero_cond_t" in spec["required"]:
        assert spec["required"]["zero_cond_t"] == ([False, True], {"default": False})
    if "GPU_memory_mode" in spec["required"]:
        assert spec["required"]["GPU_memory_mode"][1]["default"] == "model_cpu_offload"


# -- tiny models as ComfyUI single files --------------------------------------------------------------------------

# (family, builder module, variant, the whole-folder loader, the chunked nodes' prefix, file stem)
TINY = {
    "zimage": ("videox_fun.models.zimage.tiny:build_tiny_zimage_folder", "turbo", "LoadZImageModel", "ZImage",
               "z_image_turbo_tiny"),
    "flux2": ("videox_fun.models.flux2.tiny:build_tiny_flux2_folder", "dev", "LoadFlux2Model", "Flux2",
              "flux2_dev_tiny"),
    "qwenimage": ("videox_fun.models.qwenimage.tiny:build_tiny_qwenimage_folder", "t2i", "LoadQwenImageModel",
                  "QwenImage", "qwen_image_tiny"),
    "qwenimage-edit": ("videox_fun.models.qwenimage.tiny:build_tiny_qwenimage_folder", "edit", "LoadQwenImageModel",
                       "QwenImage", "qwen_image_edit_tiny"),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """A ComfyUI ``models/`` tree and a function that builds a tiny model (seeded random weights) and writes it there
    as single files, as ``python -m comfyui.write_single_files FOLDER models/ --name STEM`` does (each once):
    ``(models tree, the model's folder)``."""
    base = tmp_path_factory.mktemp("image_chunked")
    root, folders = base / "models", {}

    def tiny(key: str) -> tuple[Path, Path]:
        if key not in folders:
            builder, variant, _, _, stem = TINY[key]
            module, function = builder.split(":")
            build = getattr(importlib.import_module(module), function)
            folders[key] = build(base / "folders" / f"{stem}-{variant}", variant, seed=3)
            sf.export_single_files(folders[key], root, stem)
        return root, folders[key]

    return tiny


def install_comfy(monkeypatch: pytest.MonkeyPatch, install: Callable[[Path], types.ModuleType], root: Path) -> None:
    """ComfyUI's folder_paths over ``root`` (the conftest's), with ``models/Fun_Models`` registered as the pack
    registers it inside ComfyUI (where the tokenizer and processor folders are found)."""
    module = install(root)
    module.folder_names_and_paths[sf.host.FUN_MODELS_KEY] = ([str(root / "Fun_Models")], set())
    module.get_folder_paths = lambda kind: module.folder_names_and_paths[kind][0]
    monkeypatch.setitem(sys.modules, "folder_paths", module)


@pytest.fixture
def comfy(tiny_models: Callable[[str], tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch,
          folder_paths_over: Callable[[Path], types.ModuleType]) -> Iterator[Callable[[str], Path]]:  # fmt: skip
    """A function giving a tiny model's folder, its single files found by the loader nodes as inside ComfyUI; the
    held pipeline dropped after."""

    def model(key: str) -> Path:
        root, folder = tiny_models(key)
        install_comfy(monkeypatch, folder_paths_over, root)
        return folder

    yield model
    pack_models.release_pipeline()


def chunked(
    prefix: str, stem: str, processor: bool = False, model_name: str | None = None, control: str | None = None
) -> Any:
    """The chunked loaders and Combine*Pipeline of one family, by file names as ComfyUI's lists give them; with
    ``control`` (a file of ``model_patches/``) Load*ControlNetInModel joins it to the transformer."""
    transformer, label = NODES[f"Load{prefix}TransformerModel"]().loadmodel(f"{stem}.safetensors", "fp32")
    if control is not None:
        node = f"Load{prefix}ControlNetInModel"
        config = NODES[node].INPUT_TYPES()["required"]["config"][1]["default"]
        (transformer,) = NODES[node]().loadmodel(config=config, model_name=control, transformer=transformer)
    (vae,) = NODES[f"Load{prefix}VAEModel"]().loadmodel(f"{stem}_vae.safetensors", "fp32")
    text_encoder, tokenizer = NODES[f"Load{prefix}TextEncoderModel"]().loadmodel(f"{stem}_text_encoder.safetensors",
                                                                                 "fp32")  # fmt: skip
    extra = {"processor": NODES["LoadQwenImageProcessor"]().loadmodel()[0]} if processor else {}
    (models,) = NODES[f"Combine{prefix}Pipeline"]().loadmodel(
        model_name=model_name or label, GPU_memory_mode="model_full_load", transformer=transformer, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, **extra,
    )  # fmt: skip
    return models


def sampler_image(models: Any, sampler: str, **widgets: Any) -> torch.Tensor:
    """The IMAGE [1, 64, 64, 3] a sampler node gives for the tests' settings (its other widgets at their defaults,
    TeaCache off)."""
    required = NODES[sampler].INPUT_TYPES()["required"]
    defaults = {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1 and "default" in spec[1]}
    settings = defaults | {"prompt": PROMPT, "width": SIZE, "height": SIZE, "steps": STEPS, "seed": SEED} | widgets
    if "enable_teacache" in required:
        settings["enable_teacache"] = False
    (image,) = NODES[sampler]().process(funmodels=models, **settings)
    assert image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(image).all()
    return image


# family key, sampler, widgets
# The edit run encodes its picture at the release's 1024x1024 pixels (what a model of single files reads, with no
# folder config to say otherwise): 8 s a run on one core, so it is marked slow.
RUNS = [
    pytest.param("zimage", "ZImageT2ISampler", {"cfg": 1.5, "shift": 3, "negative_prompt": "blurry"}, id="zimage"),
    pytest.param("flux2", "Flux2T2ISampler", {"cfg": 3.0}, id="flux2"),
    pytest.param("qwenimage", "QwenImageT2VSampler", {"cfg": 2.0, "negative_prompt": "blurry"}, id="qwenimage"),
    pytest.param("qwenimage-edit", "QwenImageEditSampler", {"cfg": 2.0, "negative_prompt": "blurry"},
                 marks=pytest.mark.slow, id="qwenimage-edit"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "sampler", "widgets"), RUNS)
def test_chunked_loaders_give_the_whole_folder_loaders_image(
    comfy: Callable[[str], Path], key: str, sampler: str, widgets: dict[str, Any]
) -> None:
    """The tiny model's single files through Load*TransformerModel / VAEModel / TextEncoderModel (and
    LoadQwenImageProcessor for the edit model), Combine*Pipeline and the family's sampler: the same image as the
    whole-folder loader's with the same seed, bit for bit in fp32; the joined transformer has the LoRA reader of
    the variant's diffusers pipeline."""
    folder = comfy(key)
    _, variant, loader, prefix, stem = TINY[key]
    edit = variant == "edit"
    if edit:  # the picture to change: noise, seeded
        widgets = {**widgets, "image": torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))}
    (folder_models,) = NODES[loader]().loadmodel(GPU_memory_mode="model_full_load", model=str(folder),
                                                 precision="fp32")  # fmt: skip
    reference = sampler_image(folder_models, sampler, **widgets)
    for kind, name in (("Transformer", f"{stem}.safetensors"), ("VAE", f"{stem}_vae.safetensors"),
                       ("TextEncoder", f"{stem}_text_encoder.safetensors")):  # fmt: skip
        assert name in NODES[f"Load{prefix}{kind}Model"].INPUT_TYPES()["required"]["model_name"][0]
    models = chunked(prefix, stem, processor=edit)
    family = "qwenimage" if key.startswith("qwenimage") else key
    assert models.family == family and models.recognised.variant == folder_models.recognised.variant
    assert models.recognised.modes == folder_models.recognised.modes
    image = sampler_image(models, sampler, **widgets)
    # LoRA files of other layouts merge through the variant's diffusers reader, as on the folder's transformer.
    assert callable(getattr(pack_models._HELD.loaded.pipe.transformer, "lora_state_dict", None))
    difference = float((image - reference).abs().max())
    print(f"\n{key} ({models.recognised.variant}): chunked vs whole-folder loader, max abs diff {difference}")
    assert difference == 0.0 and reference.std() > 0.01  # equal, and not a blank image


def control_file(root: Path, family: str) -> str:
    """A tiny Fun control file of the family in ``root``'s ``model_patches/`` (Z-Image's 2.1; FLUX.2's and
    Qwen-Image's reading a mask), written once, seeded: its name as ComfyUI lists it."""
    name = f"{family}_control.safetensors"
    path = root / "model_patches" / name
    if not path.is_file():
        build = importlib.import_module(f"videox_fun.models.{family}.tiny").build_tiny_control_file
        path.parent.mkdir(exist_ok=True)
        if family == "zimage":
            build(path, "2.1", seed=5)
        else:
            build(path, seed=5)
    return name


def control_media() -> dict[str, torch.Tensor]:
    """ComfyUI IMAGEs [1, 64, 64, 3] for control_inpaint: a control image and an image (seeded noise), a mask whose
    right half is regenerated."""
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, SIZE, SIZE, 3)
    mask[:, :, SIZE // 2 :] = 1.0
    return {"control_image": torch.rand(1, SIZE, SIZE, 3, generator=generator),
            "inpaint_image": torch.rand(1, SIZE, SIZE, 3, generator=generator), "mask_image": mask}  # fmt: skip


# family key, control sampler, its widgets (Z-Image's static shift; the true-CFG families' negative prompt)
CONTROL_RUNS = [
    pytest.param("zimage", "ZImageControlSampler", {"cfg": 1.5, "shift": 3, "negative_prompt": "blurry"}, id="zimage"),
    pytest.param("flux2", "Flux2ControlSampler", {"cfg": 3.0}, id="flux2"),
    pytest.param("qwenimage", "QwenImageControlSampler", {"cfg": 2.0, "negative_prompt": "blurry"}, id="qwenimage"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "sampler", "widgets"), CONTROL_RUNS)
def test_control_file_joined_to_the_transformer_file_gives_the_folder_loaders_control_image(
    comfy: Callable[[str], Path],
    tiny_models: Callable[[str], tuple[Path, Path]],
    key: str,
    sampler: str,
    widgets: dict[str, Any],
) -> None:
    """A Fun control file of model_patches/ through Load*ControlNetInModel (joined to the transformer file) and
    Combine*Pipeline: the control sampler (control_inpaint: control image, image, mask) gives the same image as the
    whole-folder loader + Load*ControlNetInPipeline with the same file, bit for bit in fp32, and the held pipeline
    runs that control file."""
    folder = comfy(key)
    _, _, loader, prefix, stem = TINY[key]
    name = control_file(tiny_models(key)[0], key)
    widgets = {**widgets, **control_media(), "control_context_scale": 0.6}
    (folder_models,) = NODES[loader]().loadmodel(GPU_memory_mode="model_full_load", model=str(folder),
                                                 precision="fp32")  # fmt: skip
    node = f"Load{prefix}ControlNetInPipeline"
    config = NODES[node].INPUT_TYPES()["required"]["config"][1]["default"]
    (folder_models,) = NODES[node]().loadmodel(config=config, model_name=name, funmodels=folder_models)
    reference = sampler_image(folder_models, sampler, **widgets)
    models = chunked(prefix, stem, control=name)
    assert models.control_path == folder_models.control_path
    image = sampler_image(models, sampler, **widgets)
    assert pack_models._HELD.loaded.pipe.control_path == Path(models.control_path)
    difference = float((image - reference).abs().max())
    print(f"\n{key} + {name}: chunked + {prefix} ControlNetInModel vs folder + ControlNetInPipeline, max abs diff "
          f"{difference}")  # fmt: skip
    assert difference == 0.0 and reference.std() > 0.01


def refused(error: type[Exception], call: Callable[[], Any], *parts: str) -> str:
    """The one-line message ``call`` fails with, checked to hold ``parts``."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message and all(part in message for part in parts), message
    return message


def test_files_of_another_family_or_kind_and_missing_parts_are_one_line(
    comfy: Callable[[str], Path],
    tiny_models: Callable[[str], tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    folder_paths_over: Callable[[Path], types.ModuleType],
    tmp_path: Path,
) -> None:
    """A FLUX.2 transformer given to the Z-Image loader, a FLUX.1 one to FLUX.2's, a VAE given as a transformer, a
    Qwen3 text encoder given to Qwen-Image, a missing file, a Combine without a text encoder, parts of two families
    joined, a text encoder whose tokenizer is nowhere: each refused in one line naming the node and the file."""
    for key in ("zimage", "flux2", "qwenimage"):
        comfy(key)
    root = tiny_models("zimage")[0]
    zimage, flux2, qwen = TINY["zimage"][4], TINY["flux2"][4], TINY["qwenimage"][4]
    refused(
        ValueError,
        lambda: NODES["LoadZImageTransformerModel"]().loadmodel(f"{flux2}.safetensors", "fp32"),
        "LoadZImageTransformerModel:",
        f"{flux2}.safetensors is a FLUX.2 transformer, not a Z-Image transformer",
    )
    from videox_fun.io.files import save_safetensors
    from videox_fun.models.flux.tiny import tiny_transformer_config
    from videox_fun.models.flux.transformer import FluxTransformer

    torch.manual_seed(0)
    flux1 = FluxTransformer.from_model_config(tiny_transformer_config()).state_dict()
    save_safetensors(flux1, root / "diffusion_models" / "flux1-dev.safetensors")
    refused(
        ValueError,
        lambda: NODES["LoadFlux2TransformerModel"]().loadmodel("flux1-dev.safetensors", "fp32"),
        "LoadFlux2TransformerModel:",
        "flux1-dev.safetensors is a FLUX.1 transformer, not a FLUX.2 transformer",
    )
    shutil.copy(root / "vae" / f"{zimage}_vae.safetensors", root / "diffusion_models" / "ae.safetensors")
    refused(
        ValueError,
        lambda: NODES["LoadFlux2TransformerModel"]().loadmodel("ae.safetensors", "fp32"),
        "LoadFlux2TransformerModel:",
        "ae.safetensors is a Z-Image VAE, not a FLUX.2 transformer",
    )
    refused(
        ValueError,
        lambda: NODES["LoadQwenImageVAEModel"]().loadmodel(f"{flux2}_vae.safetensors", "fp32"),
        "LoadQwenImageVAEModel:",
        "is a FLUX.2 VAE, not a Qwen-Image VAE",
    )
    refused(
        ValueError,
        lambda: NODES["LoadQwenImageTextEncoderModel"]().loadmodel(f"{zimage}_text_encoder.safetensors", "fp32"),
        "is a Z-Image text encoder, not a Qwen-Image text encoder",
    )
    refused(
        FileNotFoundError,
        lambda: NODES["LoadZImageTextEncoderModel"]().loadmodel("qwen_3_4b.safetensors", "fp32"),
        "LoadZImageTextEncoderModel:",
        "'qwen_3_4b.safetensors' is not in ComfyUI's text_encoders",
    )

    transformer, label = NODES["LoadZImageTransformerModel"]().loadmodel(f"{zimage}.safetensors", "fp32")
    (vae,) = NODES["LoadZImageVAEModel"]().loadmodel(f"{zimage}_vae.safetensors", "fp32")
    combine = NODES["CombineZImagePipeline"]().loadmodel
    refused(
        ValueError,
        lambda: combine(model_name=label, GPU_memory_mode="model_full_load", transformer=transformer, vae=vae),
        "CombineZImagePipeline: no text_encoder, tokenizer connected (from LoadZImageTextEncoderModel)",
    )
    text, tokenizer = NODES["LoadQwenImageTextEncoderModel"]().loadmodel(f"{qwen}_text_encoder.safetensors", "fp32")
    refused(
        ValueError,
        lambda: combine(
            model_name=label,
            GPU_memory_mode="model_full_load",
            transformer=transformer,
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
        ),
        "CombineZImagePipeline:",
        f"{qwen}_text_encoder.safetensors is a Qwen-Image text encoder; a Z-Image model needs its own",
    )

    bare = tmp_path / "models"  # a models tree whose text encoder has no tokenizer beside it or in Fun_Models/
    (bare / "text_encoders").mkdir(parents=True)
    lonely = bare / "text_encoders" / "qwen.safetensors"
    shutil.copy(root / "text_encoders" / f"{zimage}_text_encoder.safetensors", lonely)
    install_comfy(monkeypatch, folder_paths_over, bare)
    refused(
        FileNotFoundError,
        lambda: NODES["LoadZImageTextEncoderModel"]().loadmodel("qwen.safetensors", "fp32"),
        "LoadZImageTextEncoderModel: no Z-Image tokenizer",
        "put qwen3_tokenizer/ in a model folder",
    )
    refused(
        FileNotFoundError,
        lambda: NODES["LoadQwenImageProcessor"]().loadmodel(),
        "LoadQwenImageProcessor: no Qwen-Image image processor",
        "qwen2_processor/",
    )


def test_control_file_of_another_base_or_a_transformer_of_another_family_is_one_line(
    comfy: Callable[[str], Path], tiny_models: Callable[[str], tuple[Path, Path]]
) -> None:
    """Load*ControlNetInModel refuses in one line naming the node and the file: a FLUX.2 control file for a Z-Image
    transformer, a FLUX.2 transformer for a Z-Image control file, a control file not in model_patches/."""
    for key in ("zimage", "flux2"):
        comfy(key)
    root = tiny_models("zimage")[0]
    flux2_control = control_file(root, "flux2")
    zimage, flux2 = TINY["zimage"][4], TINY["flux2"][4]
    transformer, _ = NODES["LoadZImageTransformerModel"]().loadmodel(f"{zimage}.safetensors", "fp32")
    (flux2_transformer, _) = NODES["LoadFlux2TransformerModel"]().loadmodel(f"{flux2}.safetensors", "fp32")
    node = NODES["LoadZImageControlNetInModel"]()
    config = "z_image/z_image_control_2.1.yaml"
    refused(ValueError, lambda: node.loadmodel(config, flux2_control, transformer), "LoadZImageControlNetInModel:",
            flux2_control)  # fmt: skip
    refused(ValueError, lambda: node.loadmodel(config, control_file(root, "zimage"), flux2_transformer),
            "LoadZImageControlNetInModel:", f"{flux2}.safetensors is a FLUX.2 transformer; a Z-Image control file "
            "joins a Z-Image transformer")  # fmt: skip
    refused(FileNotFoundError, lambda: node.loadmodel(config, "missing.safetensors", transformer),
            "LoadZImageControlNetInModel:", "'missing.safetensors' is not in ComfyUI's model_patches")  # fmt: skip


def test_sft_files_read_as_safetensors(
    comfy: Callable[[str], Path], tiny_models: Callable[[str], tuple[Path, Path]], request: pytest.FixtureRequest
) -> None:
    """ComfyUI lists ``.sft`` files (BFL's FLUX.1 suffix) as safetensors: the same bytes under ``.sft`` read as the
    ``.safetensors`` file (the transformer's header, config and every weight, the VAE's); a ``.sft`` that is not
    safetensors is one line saying so."""
    comfy("zimage")
    root, stem = tiny_models("zimage")[0], TINY["zimage"][4]
    copies = [root / "diffusion_models" / "broken.sft"]
    for folder, suffix in (("diffusion_models", ""), ("vae", "_vae")):
        copies.append(
            Path(shutil.copy(root / folder / f"{stem}{suffix}.safetensors", root / folder / f"{stem}{suffix}.sft"))
        )

    def tidy() -> None:  # the module's models tree as the other tests find it
        for path in copies:
            path.unlink(missing_ok=True)

    request.addfinalizer(tidy)
    assert f"{stem}.sft" in NODES["LoadZImageTransformerModel"].INPUT_TYPES()["required"]["model_name"][0]
    loader = NODES["LoadZImageTransformerModel"]()
    (sft, _), (plain, _) = loader.loadmodel(f"{stem}.sft", "fp32"), loader.loadmodel(f"{stem}.safetensors", "fp32")
    assert sft.config == plain.config and sft.path.suffix == ".sft"
    reader = sf.image_reader("zimage")
    ours, theirs = (reader.load_transformer(f, torch.float32).state_dict() for f in (sft, plain))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    (vae_sft,) = NODES["LoadZImageVAEModel"]().loadmodel(f"{stem}_vae.sft", "fp32")
    assert vae_sft.config == NODES["LoadZImageVAEModel"]().loadmodel(f"{stem}_vae.safetensors", "fp32")[0].config
    (root / "diffusion_models" / "broken.sft").write_bytes(b"not a safetensors file")
    refused(ValueError, lambda: loader.loadmodel("broken.sft", "fp32"), "LoadZImageTransformerModel:",
            "broken.sft: truncated or not a safetensors file")  # fmt: skip


# -- the released layouts, on the meta device ------------------------------------------------------------------------


def test_released_layouts_read_back_as_diffusers_converters_read_them() -> None:
    """At the released sizes (built on the meta device: names and shapes only), what the writers give in ComfyUI's
    layouts is what diffusers' own converters read back, and the readers' conversions equal those converters: the
    Z-Image transformer (original names) and its FLUX.1 ``ae`` VAE (ldm names), the FLUX.2 transformer (BFL names),
    the Qwen-Image VAE (the Wan2.1 original names, renamed by the library's rules where diffusers' converter knows
    only the released block count); each transformer's config read off its shapes is the release's."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from videox_fun.models.flux2.single_files import FLUX2_FILES
    from videox_fun.models.flux2.transformer import Flux2Transformer
    from videox_fun.models.qwenimage.single_files import QWENIMAGE_FILES
    from videox_fun.models.wan.vae import wan_vae_to_original
    from videox_fun.models.zimage.single_files import FLUX_AE_CONFIG, ZIMAGE_FILES
    from videox_fun.models.zimage.transformer import ZImageTransformer

    def same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
        return sorted(ours) == sorted(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)

    released = {
        "zimage": (ZImageTransformer, {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840,
                   "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560,
                   "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}),
        "flux2": (Flux2Transformer, {"in_channels": 128, "num_layers": 8, "num_single_layers": 48,
                  "attention_head_dim": 128, "num_attention_heads": 48, "joint_attention_dim": 15360,
                  "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000}),
    }  # fmt: skip
    for reader, (cls, config) in ((ZIMAGE_FILES, released["zimage"]), (FLUX2_FILES, released["flux2"])):
        with torch.device("meta"):
            state = cls.from_model_config(config).state_dict()
        written = reader.transformer_file_state(state)
        assert reader.claims("transformer", list(written)) and not same(written, state)
        read = reader.transformer_state(written, Path(f"{reader.family}.safetensors"))
        assert same(read, state), reader.family
        found = reader.transformer_config(read, {})
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in found.items() if k in config} == config

    with torch.device("meta"):
        ae = AutoencoderKL.from_config({k: v for k, v in FLUX_AE_CONFIG.items() if not k.startswith("_")})
        qwen_vae = AutoencoderKLQwenImage()
    written = ZIMAGE_FILES.vae_file_state(ae.state_dict(), FLUX_AE_CONFIG)
    assert any(k.startswith("encoder.down.0.block.0.") for k in written)  # ae.safetensors' names
    assert written["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)  # attention as 1x1 convolutions
    assert same(ZIMAGE_FILES.vae_state(written, FLUX_AE_CONFIG), ae.state_dict())
    original = wan_vae_to_original(qwen_vae.state_dict(), dict(qwen_vae.config))
    assert "conv1.weight" in original and QWENIMAGE_FILES.claims("vae", list(original))
    ours = QWENIMAGE_FILES.vae_state(original, dict(qwen_vae.config))
    assert same(ours, qwen_vae.state_dict()) and same(ours, convert_wan_vae_to_diffusers(dict(original)))
