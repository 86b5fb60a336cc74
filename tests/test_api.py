"""The family layer and the programmatic entry: recognition, the mode table, load / generate / close."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest
from helpers import decode_video

from videox_fun.api import (
    CancelledError,
    GenerationRequest,
    RuntimeOptions,
    check_request,
    load_pipeline,
    write_result,
)
from videox_fun.families import Mode, families, infer_mode, recognise, require_inputs
from videox_fun.registry import resolve_model

PACKAGE = Path(__file__).resolve().parents[1] / "videox_fun"


def test_the_packaged_models_are_recognised_from_config_files_with_their_modes():
    inp = recognise(resolve_model("Wan2.1-Fun-Tiny-InP"))
    assert inp.family.name == "wan"
    assert inp.modes == ("t2v", "i2v", "flf2v", "v2v", "inpaint")
    assert (inp.sizes.multiple, inp.sizes.frame_rule()) == (16, "4k+1")
    control = recognise(resolve_model("Wan2.1-Fun-Tiny-Control"))
    assert control.modes == ("v2v", "control")
    camera = recognise(resolve_model("Wan2.1-Fun-Tiny-Random-Camera"))
    assert camera.modes == ("v2v", "camera")  # add_control_adapter is read off the safetensors header


def test_a_folder_no_family_takes_fails_in_one_line_naming_it(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="no model family recognises this folder") as err:
        recognise(tmp_path)
    assert "\n" not in str(err.value) and "weights.bin" in str(err.value)
    with pytest.raises(FileNotFoundError):
        recognise(tmp_path / "missing")


TABLE = {
    "t2v": Mode("t2v"),
    "i2v": Mode("i2v", needs=("image",)),
    "flf2v": Mode("flf2v", needs=("image", "end_image")),
    "v2v": Mode("v2v", needs=("video",)),
    "inpaint": Mode("inpaint", needs=("video", "mask")),
    "control": Mode("control", needs=("control_video",), allows=("image", "ref_image")),
}


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        ({}, "t2v"),
        ({"image": "a.png"}, "i2v"),
        ({"image": "a.png", "end_image": "b.png"}, "flf2v"),
        ({"video": "v.mp4"}, "v2v"),
        ({"video": "v.mp4", "mask": "m.mp4"}, "inpaint"),
        ({"control_video": "c.mp4", "image": "a.png", "ref_image": "r.png"}, "control"),
    ],
)
def test_the_mode_is_inferred_from_the_inputs_through_the_table(given, mode):
    assert infer_mode(TABLE, given) == mode


def test_inputs_a_mode_does_not_read_or_lacks_are_refused_by_name():
    with pytest.raises(ValueError, match="mode 'inpaint' needs --mask"):
        require_inputs(TABLE, "inpaint", {"video": "v.mp4"})
    with pytest.raises(ValueError, match=r"does not use --mask .*ask for mode 'inpaint'"):
        require_inputs(TABLE, "v2v", {"video": "v.mp4", "mask": "m.mp4"})
    with pytest.raises(ValueError, match="unknown mode"):
        require_inputs(TABLE, "camera", {})


def test_a_mode_the_checkpoint_cannot_serve_fails_before_loading():
    control = recognise(resolve_model("Wan2.1-Fun-Tiny-Control"))
    with pytest.raises(ValueError, match=r"mode .t2v. needs .*serving v2v, control"):
        check_request(control, GenerationRequest(prompt="x", mode="t2v"))
    with pytest.raises(ValueError, match="finite"):
        check_request(control, GenerationRequest(prompt="x", guidance_scale=float("nan")))


def test_load_generate_write_and_close_through_the_programmatic_entry(tmp_path):
    loaded = load_pipeline("Wan2.1-Fun-Tiny-InP", RuntimeOptions(device="cpu", cache="teacache", cache_threshold=0.2))
    transformer = loaded.pipe.transformers[0]
    assert len(transformer.generation_hooks) == 1  # the step cache is attached
    steps: list[tuple[int, int]] = []
    request = GenerationRequest(prompt="a red circle moving right", steps=3, num_frames=5, seed=1)
    result = loaded.generate(request, progress=False, on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert result.frames.shape == (5, 64, 64, 3) and result.mode.folder == "videos"
    path = write_result(result, tmp_path / "out.mp4")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["cache"] == "teacache" and sidecar["steps"] == 3 and sidecar["model"] == "Wan2.1-Fun-Tiny-InP"
    assert loaded.output_folder("i2v") == Path("samples/Wan2.1-Fun-Tiny-InP-videos_i2v")

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError, match="after step 1 of 3"):
        loaded.generate(request, progress=False, cancel=cancel)
    loaded.close()
    assert not getattr(transformer, "generation_hooks", [])
    assert "run_blocks" not in vars(transformer)  # the model computes through its own method again


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "model_group_offload"])
def test_close_takes_the_memory_mode_hooks_and_riflex_off(mode):
    loaded = load_pipeline("Wan2.1-Fun-Tiny-InP", RuntimeOptions(device="cpu", gpu_memory_mode=mode, riflex_k=2))
    models = [module for module, _ in loaded.pipe.components().values()]
    wrapped = [name for m in models for name in ("forward", "encode", "decode", "rotary") if name in vars(m)]
    hooked = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for model in models for m in model.modules())
    assert wrapped or hooked  # the mode and RIFLEx attached something
    loaded.close()
    assert [name for m in models for name in ("forward", "encode", "decode", "rotary") if name in vars(m)] == []
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for model in models for m in model.modules()) == 0


def test_the_sidecar_is_strict_json(tmp_path):
    loaded = load_pipeline("Wan2.1-Fun-Tiny-InP", RuntimeOptions(device="cpu"))
    result = loaded.generate(GenerationRequest(prompt="x", steps=1, num_frames=1), progress=False)
    result.sidecar["broken"] = float("nan")
    with pytest.raises(ValueError, match="JSON compliant"):
        write_result(result, tmp_path / "x.png")


def test_every_registered_family_declares_its_table_samplers_and_training_spec():
    from videox_fun.training.specs import SPECS, _load_specs

    _load_specs()
    for family in families().values():
        assert family.modes and family.samplers
        # A family that cannot train yet declares no spec (training its folder is refused in one line); a name
        # it declares is a registered spec.
        assert family.training_spec in ("", *SPECS), family
        for name, mode in family.modes.items():
            assert mode.name == name and mode.folder


LIBRARY_EXCEPTIONS = {
    "cli.py",
    "argparsing.py",
    "toyworld/cli.py",
    "benchmarks/cli.py",
    "training/cli.py",
    "serve/cli.py",
    "ui/cli.py",
}


def _imports(path: Path) -> set[str]:
    """Module names a file imports (relative imports resolved to videox_fun.*)."""
    names = set()
    package = ".".join(("videox_fun", *path.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in LIBRARY_EXCEPTIONS:
            continue
        if "videox_fun.cli" in _imports(path):
            offenders.append(relative)
    assert offenders == []


FAMILY_PIPELINES = ("wan", "animate", "cogvideox")


def test_shared_layers_name_no_family():
    """Outside a family's own files (and the benchmarks and toy world, which measure named models), the
    entry, the CLI, the runtime features, the shared model / pipeline / io pieces and the trainer import
    no family's modules."""
    shared = [
        "api.py",
        "cli.py",
        "families/__init__.py",
        "training/trainer.py",
        *[f"{folder}/{p.name}" for folder in ("runtime", "io") for p in (PACKAGE / folder).glob("*.py")],
        *[f"models/{p.name}" for p in (PACKAGE / "models").glob("*.py")],
        # A family's own pipelines: Wan's (animate: Wan2.2-Animate's, over WanPipeline) and CogVideoX's.
        *[f"pipelines/{p.name}" for p in (PACKAGE / "pipelines").glob("*.py") if p.stem not in FAMILY_PIPELINES],
    ]
    offenders = {}
    for relative in shared:
        named = {m for m in _imports(PACKAGE / relative) if ".wan" in m or ".cogvideox" in m}
        if named:
            offenders[relative] = sorted(named)
    assert offenders == {}


# -- a second family through the same entry ----------------------------------------------
@pytest.fixture(scope="module")
def cogvideox_inp(tmp_path_factory) -> Path:
    from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder

    return build_tiny_cogvideox_folder(tmp_path_factory.mktemp("cog") / "CogVideoX-Fun-Tiny-Random-InP", "inp")


def test_generate_recognises_a_cogvideox_folder_and_writes_its_video(cogvideox_inp, tmp_path):
    from videox_fun.cli import main

    out = tmp_path / "cog.mp4"
    flags = ["--height", "32", "--width", "32", "--frames", "9", "--steps", "2", "--output", str(out)]
    assert main(["generate", "--model", str(cogvideox_inp), "--prompt", "a red circle moving right", *flags]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["mode"] == "t2v" and sidecar["sampler"] == "DDIM_Origin" and sidecar["num_frames"] == 9
    assert decode_video(out).shape == (9, 32, 32, 3)


def test_cogvideox_mistakes_fail_in_one_line_before_loading(cogvideox_inp, tmp_path, capsys):
    from videox_fun.cli import main

    def error(*flags: str) -> str:
        assert main(["generate", "--prompt", "x", *flags]) == 2
        return capsys.readouterr().err.strip()

    message = error("--model", str(cogvideox_inp), "--mode", "camera", "--camera", "pan_left")
    assert "not one of the cogvideox family's" in message and "\n" not in message
    message = error("--model", str(cogvideox_inp), "--frames", "81")
    assert "at most 49 frames" in message
    message = error("--model", str(cogvideox_inp), "--sampler", "Flow")
    assert "Flow" in message and "\n" not in message


def test_a_cogvideox_transformer_with_a_wan_vae_is_refused_naming_both(cogvideox_inp, tmp_path):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(cogvideox_inp, mixed)
    config = json.loads((mixed / "vae" / "config.json").read_text())
    (mixed / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError) as err:
        recognise(mixed)
    assert "AutoencoderKLWan" in str(err.value) and "CogVideoX" in str(err.value) and "\n" not in str(err.value)


def test_a_long_cogvideox_video_in_windows_through_the_cli(cogvideox_inp, tmp_path):
    from videox_fun.cli import main

    out = tmp_path / "long.mp4"
    flags = ["--height", "32", "--width", "32", "--frames", "21", "--steps", "1", "--output", str(out)]
    assert (
        main(["generate", "--model", str(cogvideox_inp), "--prompt", "x", "--partial-video-length", "9", *flags]) == 0
    )
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["segments"], sidecar["num_frames"]) == (4, 21)
    assert decode_video(out).shape == (21, 32, 32, 3)


def test_the_sidecar_records_several_pictures_in_order(tmp_path):
    """An input of several files (``ref_image``: VACE subjects, an edit's pictures) is recorded as its list of
    paths, in order, beside single paths and built-in camera names."""
    from videox_fun.api import input_record

    first, second = tmp_path / "b.png", tmp_path / "a.png"
    record = input_record({"ref_image": [first, str(second)], "image": str(tmp_path / "i.png"), "mask": None})
    assert record == {"ref_image": [str(first.resolve()), str(second.resolve())], "image": str(tmp_path / "i.png")}
