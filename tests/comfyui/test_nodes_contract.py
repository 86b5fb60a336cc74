"""The node pack's contract, without ComfyUI: sockets, tensor conventions, VideoX-Fun's workflows, one real run."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from videox_fun.families import INPUT_NAMES, families
from videox_fun.io.camera import CameraPose
from videox_fun.toyworld.evaluate import judge_frames

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the pack is the repository's top-level ``comfyui`` package
    sys.path.insert(0, str(REPO))
pack = importlib.import_module("comfyui.nodes")
media = importlib.import_module("comfyui.media")
camera = importlib.import_module("comfyui.camera")
pack_models = importlib.import_module("comfyui.models")
NODES = pack.NODE_CLASS_MAPPINGS
TINY_A14B = "Wan2.2-Fun-Tiny-Random-A14B-InP"  # the Wan2.2 example workflows' model: two experts, random weights
LINK_TYPES = {"IMAGE", "MASK", "STRING_PROMPT", "FunModels", "RIFLEXT_ARGS", "CameraPose", "TransformerModel",
              "VAEModel", "TextEncoderModel", "Tokenizer", "ClipEncoderModel"}  # fmt: skip

# VideoX-Fun's shipped Wan2.1-Fun workflows (aigc-apps/VideoX-Fun at 804a425,
# comfyui/wan2_1_fun/v1/wan2.1_fun_workflow_{t2v,i2v}.json), written down as facts: per node, its type,
# its widgets_values in order (the UI puts "randomize", the seed's control_after_generate, after the seed),
# the input sockets it links and its outputs. Nodes of other packs / ComfyUI itself are left out
# (Note, VHS_VideoCombine, LoadImage).
VIDEOX_FUN_T2V = [
    ("FunTextBox", ["fireworks display over night city. ..."], [], [("prompt", "STRING_PROMPT")]),
    ("FunTextBox", ["色调艳丽，过曝，静态，细节模糊不清，字幕"], [], [("prompt", "STRING_PROMPT")]),
    (
        "LoadWanFunModel",
        ["Wan2.1-Fun-1.3B-InP", "Inpaint", "model_cpu_offload", "wan2.1/wan_civitai.yaml", "bf16"],
        [],
        [("funmodels", "FunModels")],
    ),
    (
        "WanFunT2VSampler",
        [81, 832, 480, False, 43, "randomize", 50, 6, "Flow", 5, 0.1, True, 3, True, 0.25000000000000006],
        [("funmodels", "FunModels"), ("prompt", "STRING_PROMPT"), ("negative_prompt", "STRING_PROMPT")],
        [("images", "IMAGE")],
    ),
]
VIDEOX_FUN_I2V = [
    *VIDEOX_FUN_T2V[:3],
    (
        "WanFunInpaintSampler",
        [81, 640, 43, "randomize", 50, 6, "Flow", 5, 0.1, True, 3, True, 0.25000000000000006],
        [
            ("funmodels", "FunModels"),
            ("prompt", "STRING_PROMPT"),
            ("negative_prompt", "STRING_PROMPT"),
            ("start_img", "IMAGE"),
            ("end_img", "IMAGE"),
        ],
        [("images", "IMAGE")],
    ),
]

# VideoX-Fun's Wan2.2 and Wan2.2-Fun nodes (aigc-apps/VideoX-Fun at 804a425, comfyui/wan2_2/nodes.py and
# comfyui/wan2_2_fun/nodes.py), written down as facts: required inputs in order, optional inputs in order.
_T2V_22 = ["funmodels", "prompt", "negative_prompt", "video_length", "width", "height", "is_image", "seed", "steps",
           "cfg", "scheduler", "shift", "boundary"]  # fmt: skip
_TEACACHE = ["teacache_threshold", "enable_teacache", "num_skip_start_steps", "teacache_offload", "cfg_skip_ratio"]
_BASE_22 = ["funmodels", "prompt", "negative_prompt", "video_length", "base_resolution", "seed", "steps", "cfg"]
_FLOW_22 = ["scheduler", "shift", "boundary", *_TEACACHE]
_LORA_22 = ["funmodels", "lora_name", "lora_high_name", "strength_model", "lora_cache"]
VIDEOX_FUN_WAN22 = {
    "LoadWan2_2Model": (["model", "GPU_memory_mode", "config", "precision"], []),
    "LoadWan2_2Lora": (_LORA_22, []),
    "Wan2_2T2VSampler": ([*_T2V_22, *_TEACACHE], ["riflex_k"]),
    "Wan2_2I2VSampler": ([*_BASE_22, *_FLOW_22], ["start_img", "riflex_k"]),
    "LoadWan2_2FunModel": (["model", "model_type", "GPU_memory_mode", "config", "precision"], []),
    "LoadWan2_2FunLora": (_LORA_22, []),
    "Wan2_2FunT2VSampler": ([*_T2V_22, *_TEACACHE], ["riflex_k"]),
    "Wan2_2FunInpaintSampler": ([*_BASE_22, *_FLOW_22], ["start_img", "end_img", "riflex_k"]),
    "Wan2_2FunV2VSampler": (
        [*_BASE_22, "denoise_strength", *_FLOW_22],
        ["validation_video", "control_video", "start_image", "end_image", "ref_image", "camera_conditions", "riflex_k"],
    ),
}
# Their boundary defaults (the released A14B values: 0.875 for T2V, 0.900 for I2V / Fun).
WAN22_BOUNDARIES = {"Wan2_2T2VSampler": 0.875, "Wan2_2FunT2VSampler": 0.875, "Wan2_2I2VSampler": 0.9,
                    "Wan2_2FunInpaintSampler": 0.9, "Wan2_2FunV2VSampler": 0.9}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_a14b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Wan2.2 example workflows' two-expert tiny model, built here and found through $VIDEOX_FUN_MODELS."""
    from videox_fun.models.wan.tiny import build_tiny_model_folder

    models_dir = tmp_path_factory.mktemp("models")
    folder = build_tiny_model_folder(models_dir / TINY_A14B, "inp", boundary=0.9)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VIDEOX_FUN_MODELS", str(models_dir))
        yield folder


def all_inputs(cls: type) -> dict[str, tuple]:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def widget_names(cls: type) -> list[str]:
    """The required inputs that are widgets (not links), in order: what a UI workflow's widgets_values lists."""
    return [name for name, spec in cls.INPUT_TYPES()["required"].items() if not is_link(spec)]


def is_link(spec: tuple) -> bool:
    return isinstance(spec[0], str) and (spec[0] in LINK_TYPES or spec[1:2] == ({"forceInput": True},))


def check_value(node: str, name: str, spec: tuple, value: object) -> None:
    """A widget value as ComfyUI's validation checks it: in the combo list, or within the number's range."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        assert value in kind, f"{node}.{name}: {value!r} not among {kind}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{node}.{name}: {value!r}"
        assert options.get("min", value) <= value <= options.get("max", value), f"{node}.{name}: {value} out of range"
    else:
        assert kind == "STRING" and isinstance(value, str), f"{node}.{name}: {value!r} for {kind}"


@pytest.mark.parametrize("name", sorted(NODES))
def test_node_contract(name: str) -> None:
    cls = NODES[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional"} and "required" in spec
    for socket, definition in all_inputs(cls).items():
        assert isinstance(definition, tuple) and isinstance(definition[0], (str, list)), f"{name}.{socket}"
        if isinstance(definition[0], list):
            default = definition[1].get("default") if len(definition) > 1 else None
            assert default is None or default in definition[0], f"{name}.{socket}: default {default!r} not offered"
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    assert len(names) == len(cls.RETURN_TYPES)
    function = getattr(cls, cls.FUNCTION)
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = set(all_inputs(cls)) - set(parameters)
    assert takes_any or not missing, f"{name}.{cls.FUNCTION} does not take {missing}"
    assert isinstance(cls.CATEGORY, str) and cls.__doc__


def test_display_names_and_root_package() -> None:
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(NODES)
    # ComfyUI imports the repository folder as a package under a path-derived name: do the same.
    spec = importlib.util.spec_from_file_location(
        "custom_nodes_x_videox_fun", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(NODES)
        assert module.NODE_DISPLAY_NAME_MAPPINGS == pack.NODE_DISPLAY_NAME_MAPPINGS
    finally:
        for key in [k for k in sys.modules if k == spec.name or k.startswith(spec.name + ".")]:
            del sys.modules[key]


def samplers_of(family: str) -> list[type]:
    return [cls for cls in NODES.values() if issubclass(cls, pack.FunSampler) and family == cls.FAMILY]


def test_samplers_serve_every_mode_of_their_family() -> None:
    """Each mode of each family's table can be asked for through some sampler's media sockets."""
    for family in families().values():
        samplers = samplers_of(family.name)
        if not samplers:
            continue
        for sampler in samplers:
            assert {name for name, _ in sampler.MEDIA.values()} <= set(INPUT_NAMES), sampler.__name__
        for mode in family.modes.values():
            assert any(set(mode.needs) <= {name for name, _ in s.MEDIA.values()} for s in samplers), (
                f"no {family.name} sampler takes the inputs of mode {mode.name}: {mode.needs}"
            )


@pytest.mark.parametrize("workflow", [VIDEOX_FUN_T2V, VIDEOX_FUN_I2V], ids=["t2v", "i2v"])
def test_videox_fun_workflow_accepted(workflow: list) -> None:
    for node, widgets, links, outputs in workflow:
        cls = NODES[node]
        values = list(widgets)
        names = widget_names(cls)
        if "seed" in names:  # the UI-only control_after_generate value follows the seed
            del values[names.index("seed") + 1]
        assert len(values) == len(names), f"{node}: {len(values)} widget values for {names}"
        inputs = all_inputs(cls)
        for name, value in zip(names, values, strict=True):
            check_value(node, name, inputs[name], value)
        for socket, kind in links:
            assert inputs[socket][0] == kind, f"{node}.{socket}: {inputs[socket][0]} != {kind}"
        assert list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES, strict=True)) == outputs


def test_example_workflows_use_our_sockets(tiny_a14b: Path, comfy_folders: Path) -> None:
    """Every input an example workflow sets is a socket of its node, and every widget value validates (the
    single-file workflow's file names against ComfyUI's folders holding the tiny model's files)."""
    builtin = {"CreateVideo", "SaveVideo", "SaveImage"}
    files = sorted((REPO / "comfyui" / "workflows").glob("*_api.json"))
    assert len(files) >= 6
    for path in files:
        for node_id, node in json.loads(path.read_text()).items():
            if node["class_type"] in builtin:
                continue
            cls = NODES[node["class_type"]]
            inputs = all_inputs(cls)
            assert set(cls.INPUT_TYPES()["required"]) <= set(node["inputs"]), f"{path.name} node {node_id}"
            for name, value in node["inputs"].items():
                assert name in inputs, f"{path.name} node {node_id}: no socket {name}"
                if not isinstance(value, list) or isinstance(inputs[name][0], list):
                    check_value(node["class_type"], name, inputs[name], value)


def test_tensor_conventions() -> None:
    image = torch.rand(3, 8, 10, 3)
    frames = media.image_to_frames(image)
    assert frames.dtype == torch.uint8 and frames.shape == (3, 8, 10, 3)
    assert torch.allclose(media.frames_to_image(frames), image, atol=1 / 255)
    assert media.image_to_frames(torch.rand(1, 4, 4, 4)).shape == (1, 4, 4, 3)  # alpha dropped
    mask = (torch.rand(2, 8, 10) > 0.5).float()
    assert torch.equal(media.frames_to_mask(media.mask_to_frames(mask)), mask)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        media.image_to_frames(torch.rand(8, 10, 3))
    assert media.size_for_resolution(640, (480, 832), 16) == (480, 848)
    assert media.size_for_resolution(64, None, 16) == (64, 64)

    clip = pack.FunToyWorldClip().render("a red square moving right", 64, 48, 9, 0, "box")
    video, control, generate_mask, first = clip
    assert video.shape == (9, 48, 64, 3) and video.dtype == torch.float32 and 0 <= video.min() <= video.max() <= 1
    assert control.shape == video.shape and first.shape == (1, 48, 64, 3)
    assert generate_mask.shape == (9, 48, 64) and set(generate_mask.unique().tolist()) <= {0.0, 1.0}
    (edges,) = pack.VideoToCanny().process(video, 50, 150, 5)
    assert edges.shape == (5, 48, 64, 3) and edges.max() == 1.0
    (edge,) = pack.ImageToCanny().process(video, 50, 150)
    assert edge.shape == (1, 48, 64, 3)


def test_camera_nodes() -> None:
    (pan,) = pack.CameraBasicFromChaoJie().run("Pan Left", 1.0, 8)
    (fast,) = pack.CameraBasicFromChaoJie().run("Pan Left", 2.0, 8)
    assert pan.shape == (8, 4, 4) and torch.equal(pan[0], torch.eye(4, dtype=torch.float64))
    assert torch.allclose(fast[:, :3, 3], 2 * pan[:, :3, 3])
    (roll,) = pack.CameraBasicFromChaoJie().run("CW", 1.0, 8)
    (roll2,) = pack.CameraBasicFromChaoJie().run("CW", 2.0, 8)
    assert torch.allclose(roll2[4, :3, :3], roll[4, :3, :3] @ roll[4, :3, :3])  # twice the angle
    (both,) = pack.CameraCombineFromChaoJie().run("Pan Left", "Zoom In", "Static", "Static", 1.0, 8)
    (zoom,) = pack.CameraBasicFromChaoJie().run("Zoom In", 1.0, 8)
    assert torch.allclose(both[:, :3, 3], pan[:, :3, 3] + zoom[:, :3, 3])
    (joined,) = pack.CameraJoinFromChaoJie().run(pan, zoom)
    assert joined.shape == (16, 4, 4) and torch.allclose(joined[8], pan[-1])
    trajectory, length = pack.CameraTrajectoryFromChaoJie().run(joined, 0.47, 0.84, 0.5, 0.5)
    assert length == 16
    rows = json.loads(trajectory)
    assert len(rows) == 16 and all(len(row) == 18 for row in rows)  # VideoX-Fun's camera_conditions form
    poses = camera.trajectory_to_poses(trajectory)
    assert isinstance(poses[0], CameraPose) and torch.allclose(poses[5].w2c, joined[5])


def install_fake_comfy(monkeypatch: pytest.MonkeyPatch, interrupt_after: int | None) -> list[tuple[int, int]]:
    """ComfyUI's progress bar and interrupt flag (not the model): records the bar, interrupts after a step."""
    seen: list[tuple[int, int]] = []

    class ProcessingInterruptedError(Exception):
        pass

    class ProgressBar:
        def __init__(self, total: int, node_id: str | None = None) -> None:
            self.total = total

        def update_absolute(self, value: int, total: int | None = None) -> None:
            seen.append((value, total or self.total))

    def throw() -> None:
        if interrupt_after is not None and seen and seen[-1][0] >= interrupt_after:
            raise ProcessingInterruptedError("interrupted")

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.throw_exception_if_processing_interrupted = throw
    mm.soft_empty_cache = lambda: None
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.Interrupted = ProcessingInterruptedError
    for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", mm)):
        monkeypatch.setitem(sys.modules, name, module)
    return seen


def tiny_t2v(models: object, steps: int, frames: int) -> torch.Tensor:
    (prompt,) = pack.FunTextBox().process("a red square moving right")
    (images,) = pack.WanFunT2VSampler().process(
        funmodels=models, prompt=prompt, negative_prompt="", video_length=frames, width=64, height=64,
        is_image=False, seed=43, steps=steps, cfg=1.5, scheduler="Flow", shift=3, teacache_threshold=0.1,
        enable_teacache=True, num_skip_start_steps=5, teacache_offload=False, cfg_skip_ratio=0.0,
    )  # fmt: skip
    return images


def test_real_tiny_generation_with_progress_and_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged tiny model through the node functions: 2 steps, 5 frames, a sane red video; the progress bar
    moves at every step; an interrupt stops the run after the step in progress."""
    (models,) = pack.LoadWanFunModel().loadmodel("Wan2.1-Fun-Tiny-InP", "model_full_load", "auto", "fp32", "Inpaint")
    with pytest.raises(ValueError, match="model_type Control"):
        pack.LoadWanFunModel().loadmodel("Wan2.1-Fun-Tiny-InP", "model_full_load", "auto", "fp32", "Control")
    seen = install_fake_comfy(monkeypatch, interrupt_after=None)
    images = tiny_t2v(models, steps=2, frames=5)
    assert images.shape == (5, 64, 64, 3) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.01
    verdict = judge_frames((images * 255).round().to(torch.uint8).numpy())
    assert verdict["colour"] == "red" and verdict["persistence"] > 0.5, verdict
    assert seen == [(1, 2), (2, 2)]

    seen = install_fake_comfy(monkeypatch, interrupt_after=2)
    with pytest.raises(sys.modules["comfy.model_management"].Interrupted):
        tiny_t2v(models, steps=10, frames=5)
    assert seen[-1] == (2, 10)  # stopped right after the step that saw the interrupt


@pytest.mark.parametrize("name", sorted(VIDEOX_FUN_WAN22))
def test_wan22_nodes_have_videox_funs_sockets(name: str) -> None:
    required, optional = VIDEOX_FUN_WAN22[name]
    spec = NODES[name].INPUT_TYPES()
    assert list(spec["required"]) == required
    ours = [socket for socket in spec.get("optional", {}) if socket in optional]  # ours may add sockets (mask_video)
    assert ours == optional
    if name in WAN22_BOUNDARIES:
        assert spec["required"]["boundary"][1]["default"] == WAN22_BOUNDARIES[name]
    # VideoX-Fun's config name for the 5B models validates (our config/ spells it wan_civitai_ti2v_5b.yaml).
    if "config" in spec["required"]:
        assert "wan2.2/wan_civitai_5b.yaml" in spec["required"]["config"][0]


def trained_lora(model: torch.nn.Module, path: Path) -> Path:
    """A LoRA file for ``model`` with random (non-zero) weights, in the library's format."""
    import copy

    from videox_fun.training.lora import add_lora, save_lora_file

    adapted = copy.deepcopy(model)
    add_lora(adapted, rank=4, alpha=8.0, targets=("q", "k", "v", "o"))
    torch.manual_seed(3)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    return save_lora_file(adapted.state_dict(), path, rank=4, alpha=8.0)


def test_wan22_two_expert_tiny_run_with_boundary_and_high_noise_lora(
    tiny_a14b: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny two-expert (A14B-style) folder through the Wan2.2 nodes: it is offered by the loader, the boundary
    widget chooses the experts for the run and the folder's own comes back after, a high-noise LoRA from
    LoadWan2_2Lora changes the video and is taken out after the run."""
    from videox_fun.pipelines.wan import WanPipeline

    assert TINY_A14B in pack.LoadWan2_2Model.INPUT_TYPES()["required"]["model"][0]
    (models,) = pack.LoadWan2_2Model().loadmodel(TINY_A14B, "model_full_load", "auto", "fp32")
    install_fake_comfy(monkeypatch, interrupt_after=None)

    def run(fun_models: object, boundary: float) -> torch.Tensor:
        (images,) = pack.Wan2_2T2VSampler().process(
            funmodels=fun_models, prompt="a red circle moving right", negative_prompt="", video_length=5, width=32,
            height=32, is_image=False, seed=43, steps=4, cfg=2.0, scheduler="Flow", shift=3, boundary=boundary,
            teacache_threshold=0.1, enable_teacache=False, num_skip_start_steps=1, teacache_offload=False,
            cfg_skip_ratio=0.0,
        )  # fmt: skip
        assert images.shape == (5, 32, 32, 3) and torch.isfinite(images).all()
        return images

    reference = run(models, 0.9)
    pipe = pack_models._HELD.loaded.pipe
    assert len(pipe.transformers) == 2 and pipe.boundary == 0.9
    only_high, only_low = run(models, 0.0), run(models, 1.0)  # every step on one expert
    assert pipe.boundary == 0.9  # the folder's own again
    assert not torch.equal(only_high, only_low) and not torch.equal(only_high, reference)
    assert torch.equal(run(models, 0.9), reference)

    lora = trained_lora(WanPipeline.from_pretrained(tiny_a14b).transformer, tmp_path / "high.safetensors")
    (with_lora,) = pack.LoadWan2_2Lora().load_lora(
        lora_name=None, lora_high_name=str(lora), strength_model=1.0, lora_cache=False, funmodels=models
    )
    assert with_lora.loras == () and with_lora.loras_high == ((str(lora), 1.0),)
    assert not torch.equal(run(with_lora, 0.9), reference)
    assert torch.equal(run(models, 0.9), reference)  # the LoRA is out again
    pack_models.release_pipeline()


def test_comfyuis_unload_of_all_models_drops_the_held_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI's unload_all_models (POST /free) runs as before, then the pack's held pipeline is closed; hooking
    twice (the pack imported again) still calls ComfyUI's once and ours once."""
    host = importlib.import_module("comfyui.host")
    install_fake_comfy(monkeypatch, interrupt_after=None)
    mm = sys.modules["comfy.model_management"]
    unloaded: list[bool] = []
    mm.unload_all_models = lambda: unloaded.append(True)
    host.on_unload_all_models(pack_models.drop_held_pipeline)
    host.on_unload_all_models(pack_models.drop_held_pipeline)
    (models,) = pack.LoadWanFunModel().loadmodel("Wan2.1-Fun-Tiny-InP", "model_full_load", "auto", "fp32", "Inpaint")
    tiny_t2v(models, steps=1, frames=5)
    held = pack_models._HELD.loaded
    assert held is not None
    mm.unload_all_models()
    assert unloaded == [True] and pack_models._HELD.loaded is None
