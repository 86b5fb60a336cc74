"""The image families' nodes (Z-Image, FLUX.2, Qwen-Image) without ComfyUI: VideoX-Fun's sockets, widget defaults,
outputs and display names; each sampler's image against the library's programmatic entry for the same seed and
settings on the built-in tiny random models (t2i, Fun control from a file of ``model_patches/``, control_inpaint,
Qwen-Image-Edit, Edit-2509 with one and two pictures, a Z-Image LoRA); one-line refusals.

Measured (fp32, CPU, 64x64, 2 steps): every node image equals :func:`videox_fun.api.load_pipeline` +
``generate`` exactly (max abs diff 0 of 255 levels), the control and LoRA runs included.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline
from videox_fun.registry import resolve_model

pack = importlib.import_module("comfyui.nodes")
image_nodes = importlib.import_module("comfyui.image_nodes")
pack_models = importlib.import_module("comfyui.models")
NODES = pack.NODE_CLASS_MAPPINGS
pytestmark = pytest.mark.usefixtures("builtin_cache")

# VideoX-Fun's image nodes (aigc-apps/VideoX-Fun at 804a425, comfyui/{z_image,flux2,qwenimage}/nodes.py, registered
# and named in comfyui/comfyui_nodes.py), written down as facts: required inputs in order with (type, default) of
# each widget (links as (type, None)), optional inputs in order, outputs (type, name), display name.
_LOADER = {"model": ("COMBO", None), "GPU_memory_mode": ("COMBO", "model_cpu_offload"), "precision": ("COMBO", "fp16")}
_LORA = {"funmodels": ("FunModels", None), "lora_name": ("COMBO", None), "strength_model": ("FLOAT", 1.0),
         "lora_cache": ("COMBO", False)}  # fmt: skip
_LINKS = {"funmodels": ("FunModels", None), "prompt": ("STRING_PROMPT", None)}
_NEGATIVE = {"negative_prompt": ("STRING_PROMPT", None)}
_TEACACHE = {"teacache_threshold": ("FLOAT", 0.25), "enable_teacache": ("COMBO", True),
             "num_skip_start_steps": ("INT", 5), "teacache_offload": ("COMBO", True),
             "cfg_skip_ratio": ("FLOAT", 0)}  # fmt: skip
_CONTROL = ["control_image", "inpaint_image", "mask_image"]
_FUN = [("FunModels", "funmodels")]
_IMAGES = [("IMAGE", "images")]


def _sampler(width: int, height: int, steps: int, cfg: float, shift: tuple[str, float]) -> dict[str, tuple]:
    return {"width": ("INT", width), "height": ("INT", height), "seed": ("INT", 43), "steps": ("INT", steps),
            "cfg": ("FLOAT", cfg), "scheduler": ("COMBO", "Flow"), "shift": shift}  # fmt: skip


def _control_in(config: str, sub_transformer: bool) -> dict[str, tuple]:
    sub = {"sub_transformer_name": ("COMBO", "transformer")} if sub_transformer else {}
    return {"config": ("COMBO", config), "model_name": ("COMBO", None), **sub, "funmodels": ("FunModels", None)}


def _control_in_model(config: str) -> dict[str, tuple]:  # the chunked workflows' node: a transformer in and out
    return {"config": ("COMBO", config), "model_name": ("COMBO", None), "transformer": ("TransformerModel", None)}


_TRANSFORMER = [("TransformerModel", "transformer")]


VIDEOX_FUN_IMAGE_NODES: dict[str, tuple[dict[str, tuple], list[str], list[tuple[str, str]], str]] = {
    "LoadZImageModel": (_LOADER, [], _FUN, "Load ZImage Model"),
    "LoadZImageLora": (_LORA, [], _FUN, "Load ZImage Lora"),
    "LoadZImageControlNetInPipeline": (
        _control_in("z_image/z_image_control_2.1.yaml", True), [], _FUN, "LoadZImageControlNetInPipeline"
    ),
    "LoadZImageControlNetInModel": (
        _control_in_model("z_image/z_image_control_2.1.yaml"), [], _TRANSFORMER, "LoadZImageControlNetInModel"
    ),
    "ZImageT2ISampler": ({**_LINKS, **_NEGATIVE, **_sampler(1568, 1184, 8, 0.0, ("INT", 3))}, [], _IMAGES,
                         "ZImage T2I Sampler"),
    "ZImageControlSampler": (
        {**_LINKS, **_NEGATIVE, **_sampler(1568, 1184, 8, 0.0, ("INT", 3)), "control_context_scale": ("FLOAT", 0.8)},
        _CONTROL, _IMAGES, "ZImage Control Sampler",
    ),
    "LoadFlux2Model": (_LOADER, [], _FUN, "Load FLUX2 Model"),
    "LoadFlux2Lora": (_LORA, [], _FUN, "Load FLUX2 Lora"),
    "LoadFlux2ControlNetInPipeline": (
        _control_in("flux2/flux2_control.yaml", False), [], _FUN, "Load Flux2 ControlNet In Pipeline"
    ),
    "LoadFlux2ControlNetInModel": (
        _control_in_model("flux2/flux2_control.yaml"), [], _TRANSFORMER, "Load Flux2 ControlNet In Model"
    ),
    "Flux2T2ISampler": ({**_LINKS, **_sampler(1728, 992, 25, 4.0, ("FLOAT", 1.0))}, [], _IMAGES,
                        "FLUX2 Text to Image Sampler"),
    "Flux2ControlSampler": (
        {**_LINKS, **_sampler(992, 1728, 50, 4.0, ("INT", 1)), "control_context_scale": ("FLOAT", 0.75)},
        [*_CONTROL, "image"], _IMAGES, "FLUX2 Control Sampler",
    ),
    "LoadQwenImageModel": (_LOADER, [], _FUN, "Load QwenImage Model"),
    "LoadQwenImageLora": (_LORA, [], _FUN, "Load QwenImage Lora"),
    "LoadQwenImageControlNetInPipeline": (
        _control_in("qwenimage/qwenimage_control.yaml", True), [], _FUN, "Load QwenImage ControlNet In Pipeline"
    ),
    "LoadQwenImageControlNetInModel": (
        _control_in_model("qwenimage/qwenimage_control.yaml"), [], _TRANSFORMER, "Load QwenImage ControlNet In Model"
    ),
    "QwenImageT2VSampler": ({**_LINKS, **_NEGATIVE, **_sampler(1344, 768, 50, 4.0, ("INT", 1)), **_TEACACHE}, [],
                            _IMAGES, "QwenImage T2V Sampler"),
    "QwenImageEditSampler": ({**_LINKS, **_NEGATIVE, **_sampler(1344, 768, 50, 4.0, ("INT", 1)), **_TEACACHE},
                             ["image"], _IMAGES, "QwenImage Edit Sampler"),
    "QwenImageEditPlusSampler": ({**_LINKS, **_NEGATIVE, **_sampler(1344, 768, 50, 4.0, ("INT", 1)), **_TEACACHE},
                                 ["image"], _IMAGES, "QwenImage Edit Plus Sampler"),
    "QwenImageControlSampler": (
        {**_LINKS, **_NEGATIVE, **_sampler(1568, 1184, 40, 4.0, ("INT", 3)), **_TEACACHE,
         "control_context_scale": ("FLOAT", 0.8)},
        _CONTROL, _IMAGES, "QwenImage Control Sampler",
    ),
}  # fmt: skip
# Their other facts checked below: release names per loader, the scheduler choices (Flow, Flow_Unipc, Flow_DPM++:
# ours offer the library's: Flow, and Flow_Distill for students), the cfg minimum (0 for Z-Image and the control
# samplers, else 1).
RELEASES = {"LoadZImageModel": ["Z-Image-Turbo", "Z-Image"], "LoadFlux2Model": ["FLUX.2-dev"],
            "LoadQwenImageModel": ["Qwen-Image", "Qwen-Image-2512", "Qwen-Image-Edit", "Qwen-Image-Edit-2509",
                                   "Qwen-Image-Edit-2511"]}  # fmt: skip
CFG_MIN = {"ZImageT2ISampler": 0.0, "ZImageControlSampler": 0.0, "Flux2T2ISampler": 1.0, "Flux2ControlSampler": 0.0,
           "QwenImageT2VSampler": 1.0, "QwenImageEditSampler": 1.0, "QwenImageEditPlusSampler": 1.0,
           "QwenImageControlSampler": 0.0}  # fmt: skip
SIZE, STEPS, SEED = 64, 2, 7
PROMPT = "a red square"


def kind(spec: tuple) -> str:
    """An input's type as the facts above write it (a combo list is COMBO)."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


@pytest.mark.parametrize("name", sorted(VIDEOX_FUN_IMAGE_NODES))
def test_image_nodes_have_videox_funs_sockets(name: str) -> None:
    required, optional, outputs, display = VIDEOX_FUN_IMAGE_NODES[name]
    cls = NODES[name]
    spec = cls.INPUT_TYPES()
    assert list(spec["required"]) == list(required) and list(spec.get("optional", {})) == optional
    for socket, (expected_kind, default) in required.items():
        ours = spec["required"][socket]
        assert kind(ours) == expected_kind, (socket, ours)
        if default is not None:
            assert ours[1]["default"] == default, (socket, ours)
    assert all(spec["optional"][socket] == ("IMAGE",) for socket in optional)
    assert list(zip(cls.RETURN_TYPES, cls.RETURN_NAMES, strict=True)) == outputs
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[name] == display
    if "scheduler" in spec["required"]:
        # VideoX-Fun's choices, and ours: Flow_Distill (a distilled student's grid: Flow at its step count)
        assert set(spec["required"]["scheduler"][0]) <= {"Flow", "Flow_Unipc", "Flow_DPM++", "Flow_Distill"}
        assert spec["required"]["cfg"][1]["min"] == CFG_MIN[name]
    if name in RELEASES:  # VideoX-Fun's release names stay offered (its workflows validate), after the tiny models
        assert spec["required"]["model"][0][-len(RELEASES[name]) :] == RELEASES[name]


# The image nodes of VideoX-Fun's shipped workflows (aigc-apps/VideoX-Fun at 804a425,
# comfyui/{z_image,flux2,qwenimage}/v1/*_workflow_*.json), written down as facts: type, widgets_values in order (the
# UI puts the seed's control_after_generate after the seed), linked input sockets.
VIDEOX_FUN_WORKFLOW_NODES = [
    ("LoadZImageModel", ["Z-Image-Turbo", "model_cpu_offload", "bf16"], []),
    ("ZImageT2ISampler", [1184, 1568, 43, "fixed", 8, 0, "Flow", 3], ["funmodels", "prompt", "negative_prompt"]),
    ("LoadZImageControlNetInPipeline",
     ["z_image/z_image_control_2.1.yaml", "Z-Image-Fun-Controlnet-Union-2.1.safetensors", "transformer"],
     ["funmodels"]),
    ("ZImageControlSampler", [1184, 1568, 43, "fixed", 8, 0, "Flow", 3, 0.85],
     ["funmodels", "prompt", "negative_prompt", "control_image"]),
    ("LoadZImageControlNetInModel",
     ["z_image/z_image_control_2.1.yaml", "Z-Image-Fun-Controlnet-Union-2.1.safetensors"], ["transformer"]),
    ("LoadFlux2Model", ["FLUX.2-dev", "sequential_cpu_offload", "bf16"], []),
    ("Flux2T2ISampler", [1728, 992, 404922577542089, "randomize", 25, 4, "Flow", 3], ["funmodels", "prompt"]),
    ("LoadFlux2ControlNetInPipeline",
     ["flux2/flux2_control.yaml", "FLUX.2-dev-Fun-Controlnet-Union-2602.safetensors"], ["funmodels"]),
    ("LoadFlux2ControlNetInModel",
     ["flux2/flux2_control.yaml", "FLUX.2-dev-Fun-Controlnet-Union-2602.safetensors"], ["transformer"]),
    ("Flux2ControlSampler", [1184, 1568, 415216792885928, "randomize", 25, 4, "Flow", 3, 0.75],
     ["funmodels", "prompt", "control_image"]),
    ("LoadQwenImageModel", ["Qwen-Image", "model_group_offload", "bf16"], []),
    ("QwenImageT2VSampler", [1728, 992, 43, "randomize", 40, 4, "Flow", 1, 0.25, True, 5, True, 0],
     ["funmodels", "prompt", "negative_prompt"]),
    ("LoadQwenImageModel", ["Qwen-Image-Edit-2509", "model_group_offload", "bf16"], []),
    ("QwenImageEditPlusSampler", [1728, 992, 437532779396225, "randomize", 50, 4, "Flow", 1, 0.25, True, 5, True, 0],
     ["funmodels", "prompt", "negative_prompt", "image"]),
    ("LoadQwenImageControlNetInPipeline",
     ["qwenimage/qwenimage_control.yaml", "Qwen-Image-2512-Fun-Controlnet-Union.safetensors", "transformer"],
     ["funmodels"]),
    ("LoadQwenImageControlNetInModel",
     ["qwenimage/qwenimage_control.yaml", "Qwen-Image-2512-Fun-Controlnet-Union.safetensors"], ["transformer"]),
    ("QwenImageControlSampler", [1184, 1568, 733079601689805, "randomize", 40, 4, "Flow", 3, 0.25, True, 5, True, 0,
                                 0.8], ["funmodels", "prompt", "negative_prompt", "control_image"]),
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(VIDEOX_FUN_WORKFLOW_NODES)))
def test_videox_funs_workflow_nodes_validate(index: int) -> None:
    """Each widget value of VideoX-Fun's image workflows validates against our widget at its position (a combo
    holds it, a number is in range), as ComfyUI checks them; the file names of model_patches/ are ComfyUI's listing
    (empty here), so only their position is checked."""
    node, widgets, links = VIDEOX_FUN_WORKFLOW_NODES[index]
    spec = NODES[node].INPUT_TYPES()
    inputs = {**spec["required"], **spec.get("optional", {})}
    names = [name for name, value in spec["required"].items() if isinstance(value[0], list) or len(value) > 1]
    values = list(widgets)
    if "seed" in names:
        del values[names.index("seed") + 1]  # the UI's control_after_generate
    assert len(values) == len(names), (node, names)
    for name, value in zip(names, values, strict=True):
        choices, options = inputs[name][0], (inputs[name][1] if len(inputs[name]) > 1 else {})
        if name == "model_name":
            continue
        if isinstance(choices, list):
            assert value in choices, (node, name, value)
        else:
            assert options["min"] <= value <= options["max"], (node, name, value, options)
    assert set(links) <= set(inputs), (node, links)


# -- runs against the library -----------------------------------------------------------------


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI models tree whose model_patches/ holds a tiny Fun control file of each family (2.1 for Z-Image;
    with a mask for FLUX.2 and Qwen-Image)."""
    from videox_fun.models.flux2.tiny import build_tiny_control_file as flux2_control
    from videox_fun.models.qwenimage.tiny import build_tiny_control_file as qwen_control
    from videox_fun.models.zimage.tiny import build_tiny_control_file as zimage_control

    root = tmp_path_factory.mktemp("comfy_models")
    folder = root / "model_patches"
    folder.mkdir()
    zimage_control(folder / "zimage_control.safetensors", "2.1", seed=5)
    flux2_control(folder / "flux2_control.safetensors", seed=5)
    qwen_control(folder / "qwenimage_control.safetensors", seed=5)
    return root


@pytest.fixture
def comfy_patches(patches: Path, folder_paths_over: Callable[[Path], types.ModuleType]) -> Iterator[Path]:
    """The control files found by the ControlNetIn nodes as inside ComfyUI; the held pipeline dropped after."""
    folder_paths_over(patches)
    yield patches / "model_patches"
    pack_models.release_pipeline()


def control_media() -> dict[str, torch.Tensor]:
    """ComfyUI IMAGEs [1, 64, 64, 3]: a toy-world frame, its Canny edges, a mask whose right half is regenerated."""
    _, control, _, first = pack.FunToyWorldClip().render("a red square moving right", SIZE, SIZE, 1, 0, "box")
    mask = torch.zeros(1, SIZE, SIZE, 3)
    mask[:, :, SIZE // 2 :] = 1.0
    return {"control_image": control[:1], "inpaint_image": first, "mask_image": mask}


def as_frames(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, 3] as uint8 frames, as ComfyUI's SaveImage writes it (exact for 8-bit images)."""
    return (image * 255).round().to(torch.uint8)


def library_image(model: str, mode: str, options: dict[str, Any] | None = None, **request: Any) -> torch.Tensor:
    """The image :mod:`videox_fun.api` gives (what ``videox-fun generate`` runs) for the tests' settings."""
    loaded = load_pipeline(model, RuntimeOptions(device="cpu", dtype="float32", **(options or {})))
    try:
        settings = {"prompt": PROMPT, "height": SIZE, "width": SIZE, "steps": STEPS, "seed": SEED, "mode": mode}
        return loaded.generate(GenerationRequest(**(settings | request)), progress=False).frames[0]
    finally:
        loaded.close()


def node_image(
    loader: str, model: str, sampler: str, chain: list[tuple[str, dict]] = (), **widgets: Any
) -> torch.Tensor:
    """The image a loader -> (option nodes) -> sampler chain gives, as uint8 (H, W, 3)."""
    (models,) = NODES[loader]().loadmodel(GPU_memory_mode="model_full_load", model=model, precision="fp32")
    for node, inputs in chain:
        (models,) = getattr(NODES[node](), NODES[node].FUNCTION)(funmodels=models, **inputs)
    required = NODES[sampler].INPUT_TYPES()["required"]
    defaults = {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1 and "default" in spec[1]}
    settings = defaults | {"prompt": PROMPT, "width": SIZE, "height": SIZE, "steps": STEPS, "seed": SEED} | widgets
    if "negative_prompt" in required:
        settings.setdefault("negative_prompt", "")
    (images,) = NODES[sampler]().process(funmodels=models, **settings)
    assert images.shape == (1, SIZE, SIZE, 3) and images.dtype == torch.float32
    assert 0.0 <= images.min() <= images.max() <= 1.0
    return as_frames(images)[0]


def assert_same(node: torch.Tensor, library: torch.Tensor, what: str) -> None:
    diff = int((node.int() - library.int()).abs().max())
    print(f"\n{what}: node vs videox_fun.api max abs diff {diff} (of 255)")
    assert diff == 0 and node.float().std() > 1.0, what  # equal, and not a blank image


def test_text_to_image_samplers_equal_the_library(comfy_patches: Path) -> None:
    """ZImageT2ISampler (base model, cfg 2: both guidance passes), Flux2T2ISampler (embedded guidance; the shift
    widget unused, as in VideoX-Fun), QwenImageT2VSampler (true CFG, its TeaCache widget on: no coefficients for the
    tiny model, so off with a warning)."""
    zimage = node_image("LoadZImageModel", "Z-Image-Tiny-Random", "ZImageT2ISampler", cfg=2.0, shift=3)
    assert_same(zimage, library_image("Z-Image-Tiny-Random", "t2i", guidance_scale=2.0, shift=3, negative_prompt=""),
                "ZImageT2ISampler")  # fmt: skip
    flux2 = node_image("LoadFlux2Model", "Flux2-Tiny-Random", "Flux2T2ISampler", cfg=3.0, shift=2.5)
    assert_same(flux2, library_image("Flux2-Tiny-Random", "t2i", guidance_scale=3.0), "Flux2T2ISampler")
    qwen = node_image("LoadQwenImageModel", "Qwen-Image-Tiny-Random", "QwenImageT2VSampler", cfg=2.0,
                      negative_prompt="blurry")  # fmt: skip
    reference = library_image("Qwen-Image-Tiny-Random", "t2i", guidance_scale=2.0, negative_prompt="blurry")
    assert_same(qwen, reference, "QwenImageT2VSampler")


@pytest.mark.parametrize(
    ("family", "loader", "model", "sampler", "file"),
    [
        ("zimage", "LoadZImageModel", "Z-Image-Turbo-Tiny-Random", "ZImageControlSampler", "zimage_control"),
        ("flux2", "LoadFlux2Model", "Flux2-Tiny-Random", "Flux2ControlSampler", "flux2_control"),
        ("qwenimage", "LoadQwenImageModel", "Qwen-Image-Tiny-Random", "QwenImageControlSampler", "qwenimage_control"),
    ],
)
def test_control_samplers_with_a_model_patches_file_equal_the_library(
    comfy_patches: Path, family: str, loader: str, model: str, sampler: str, file: str
) -> None:
    """Load*ControlNetInPipeline names a control file of model_patches/; the control sampler follows the control
    image (control), and with inpaint_image + mask_image inpaints (control_inpaint), as the library does with
    ``control_path`` (the two modes give different images)."""
    node = loader.replace("Model", "ControlNetInPipeline")
    config = NODES[node].INPUT_TYPES()["required"]["config"][1]["default"]
    chain = [(node, {"config": config, "model_name": f"{file}.safetensors"})]
    media = control_media()
    path = str(comfy_patches / f"{file}.safetensors")
    frames = {name: as_frames(image)[0] for name, image in media.items()}
    # The same settings as the sampler's widgets: its cfg default, "" negative prompt, Z-Image's static shift.
    settings: dict[str, Any] = {"guidance_scale": NODES[sampler].INPUT_TYPES()["required"]["cfg"][1]["default"],
                                "extra": {"control_path": path, "control_context_scale": 0.6}}  # fmt: skip
    if family != "flux2":
        settings["negative_prompt"] = ""
    if family == "zimage":
        settings["shift"] = 3
    control = node_image(loader, model, sampler, chain, control_image=media["control_image"],
                         control_context_scale=0.6)  # fmt: skip
    reference = library_image(model, "control", control_video=frames["control_image"], **settings)
    assert_same(control, reference, f"{sampler} control")
    inpaint = node_image(loader, model, sampler, chain, control_context_scale=0.6, **media)
    reference = library_image(model, "control_inpaint", control_video=frames["control_image"],
                              image=frames["inpaint_image"], mask=frames["mask_image"], **settings)  # fmt: skip
    assert_same(inpaint, reference, f"{sampler} control_inpaint")
    assert not torch.equal(control, inpaint)


def test_qwen_image_edit_sampler_equals_the_library(comfy_patches: Path) -> None:
    """QwenImageEditSampler on Qwen-Image-Edit: the image to change goes to the VL model and the transformer; the
    output is width x height."""
    image = control_media()["inpaint_image"]
    edit = node_image("LoadQwenImageModel", "Qwen-Image-Edit-Tiny-Random", "QwenImageEditSampler", image=image,
                      cfg=1.0)  # fmt: skip
    reference = library_image("Qwen-Image-Edit-Tiny-Random", "edit", image=as_frames(image)[0], guidance_scale=1.0,
                              negative_prompt="")  # fmt: skip
    assert_same(edit, reference, "QwenImageEditSampler")


def test_qwen_image_edit_plus_sampler_reads_each_image_of_the_batch(comfy_patches: Path) -> None:
    """QwenImageEditPlusSampler on Qwen-Image-Edit-2509: a batch of two images is two pictures (the library's image
    and ref_image); one image runs as VideoX-Fun's node runs (its first); two pictures on plain Edit are refused."""
    video, *_ = pack.FunToyWorldClip().render("a red square moving right", SIZE, SIZE, 5, 0, "box")
    pictures = video[[0, 4]]  # [2, 64, 64, 3]: two frames of the clip
    model = "Qwen-Image-Edit-2509-Tiny-Random"
    two = node_image("LoadQwenImageModel", model, "QwenImageEditPlusSampler", image=pictures, cfg=1.0)
    frames = as_frames(pictures)
    reference = library_image(model, "edit", image=frames[0], ref_image=[frames[1]], guidance_scale=1.0,
                              negative_prompt="")  # fmt: skip
    assert_same(two, reference, "QwenImageEditPlusSampler, 2 pictures")
    one = node_image("LoadQwenImageModel", model, "QwenImageEditPlusSampler", image=pictures[:1], cfg=1.0)
    reference = library_image(model, "edit", image=frames[0], guidance_scale=1.0, negative_prompt="")
    assert_same(one, reference, "QwenImageEditPlusSampler, 1 picture")
    assert not torch.equal(one, two)
    with pytest.raises(ValueError, match="picture"):
        node_image("LoadQwenImageModel", "Qwen-Image-Edit-Tiny-Random", "QwenImageEditPlusSampler", image=pictures)


def zimage_lora(path: Path) -> Path:
    """A LoRA file for the tiny Z-Image transformer with random (non-zero) weights, in the library's format."""
    from videox_fun.pipelines.zimage import ZImagePipeline
    from videox_fun.training.lora import add_lora, save_lora_file
    from videox_fun.training.specs.image import ZIMAGE_LORA_TARGETS

    transformer = ZImagePipeline.from_pretrained(resolve_model("Z-Image-Tiny-Random")).transformer
    add_lora(transformer, rank=4, alpha=8.0, targets=ZIMAGE_LORA_TARGETS)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in transformer.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    return save_lora_file(transformer.state_dict(), path, rank=4, alpha=8.0)


def test_zimage_lora_is_merged_for_the_run_and_taken_out_after(comfy_patches: Path, tmp_path: Path) -> None:
    lora = zimage_lora(tmp_path / "zimage_lora.safetensors")
    chain = [("LoadZImageLora", {"lora_name": str(lora), "strength_model": 0.8, "lora_cache": False})]
    plain = node_image("LoadZImageModel", "Z-Image-Tiny-Random", "ZImageT2ISampler", cfg=2.0)
    with_lora = node_image("LoadZImageModel", "Z-Image-Tiny-Random", "ZImageT2ISampler", chain, cfg=2.0)
    reference = library_image("Z-Image-Tiny-Random", "t2i", {"lora_path": [str(lora)], "lora_weight": [0.8]},
                              guidance_scale=2.0, shift=3, negative_prompt="")  # fmt: skip
    assert_same(with_lora, reference, "LoadZImageLora -> ZImageT2ISampler")
    assert not torch.equal(with_lora, plain)
    assert torch.equal(node_image("LoadZImageModel", "Z-Image-Tiny-Random", "ZImageT2ISampler", cfg=2.0), plain)


def test_refusals_name_the_socket_or_the_file(comfy_patches: Path) -> None:
    (zimage,) = NODES["LoadZImageModel"]().loadmodel("model_full_load", "Z-Image-Turbo-Tiny-Random", "fp32")
    with pytest.raises(ValueError, match="is a zimage model"):
        NODES["LoadFlux2Model"]().loadmodel("model_full_load", "Z-Image-Turbo-Tiny-Random", "fp32")
    with pytest.raises(ValueError, match="Flux2T2ISampler runs flux2 models; this one is zimage"):
        NODES["Flux2T2ISampler"]().process(funmodels=zimage, prompt="x", width=64, height=64, seed=1, steps=1, cfg=1.0,
                                           scheduler="Flow", shift=1.0)  # fmt: skip
    control_in = NODES["LoadZImageControlNetInPipeline"]()
    with pytest.raises(ValueError, match="has one transformer"):
        control_in.loadmodel("z_image/z_image_control_2.1.yaml", "zimage_control.safetensors", zimage, "transformer_2")
    with pytest.raises(ValueError) as refused:  # a FLUX.2 control file for a Z-Image model
        control_in.loadmodel("z_image/z_image_control_2.1.yaml", "flux2_control.safetensors", zimage, "transformer")
    assert "\n" not in str(refused.value) and "flux2_control.safetensors" in str(refused.value)
    with pytest.raises(FileNotFoundError, match="model_patches"):
        control_in.loadmodel("z_image/z_image_control_2.1.yaml", "missing.safetensors", zimage, "transformer")

    media = control_media()
    widgets = {"prompt": "x", "negative_prompt": "", "width": 64, "height": 64, "seed": 1, "steps": 1, "cfg": 0.0,
               "scheduler": "Flow", "shift": 3, "control_context_scale": 0.8}  # fmt: skip
    sampler = NODES["ZImageControlSampler"]()
    with pytest.raises(ValueError, match="connect control_image"):
        sampler.process(funmodels=zimage, **widgets)
    with pytest.raises(ValueError, match="mask_image needs inpaint_image"):
        sampler.process(funmodels=zimage, mask_image=media["mask_image"], **widgets)
    (flux2,) = NODES["LoadFlux2Model"]().loadmodel("model_full_load", "Flux2-Fun-Control-Tiny-Random", "fp32")
    flux2_widgets = {k: v for k, v in widgets.items() if k != "negative_prompt"} | {"shift": 1}
    with pytest.raises(ValueError, match="image is not served"):
        NODES["Flux2ControlSampler"]().process(funmodels=flux2, image=media["inpaint_image"],
                                               control_image=media["control_image"], **flux2_widgets)  # fmt: skip
    (edit,) = NODES["LoadQwenImageModel"]().loadmodel("model_full_load", "Qwen-Image-Edit-Tiny-Random", "fp32")
    with pytest.raises(ValueError, match="connect image"):
        NODES["QwenImageEditSampler"]().process(funmodels=edit, **(widgets | {"cfg": 1.0, "shift": 1}),
                                                teacache_threshold=0.25, enable_teacache=False, num_skip_start_steps=5,
                                                teacache_offload=False, cfg_skip_ratio=0.0)  # fmt: skip
