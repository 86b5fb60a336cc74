"""The node pack inside a real ComfyUI, started headless on the CPU (needs ``COMFY_ROOT``, see docs/comfyui.md).

The project must be installed into ComfyUI's own venv (``$COMFY_ROOT/venv/bin/pip install -e <repo>``), as
its users do; the repository is linked into ``custom_nodes/`` here when it is not already.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

from videox_fun.io.video import read_video
from videox_fun.serve.process import free_port
from videox_fun.toyworld.evaluate import evaluate_video

pytestmark = pytest.mark.slow

# A request's round trip through the servers: milliseconds alone, seconds beside another CPU-heavy job.
ROUND_TRIP_S = 10.0

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "comfyui" / "workflows").glob("*_api.json"))
# The video workflows (SaveVideo) and the image families' (SaveImage, checked against `videox-fun generate` below).
VIDEO_WORKFLOWS = [p for p in WORKFLOWS if '"SaveVideo"' in p.read_text()]
IMAGE_WORKFLOWS = [p for p in WORKFLOWS if p not in VIDEO_WORKFLOWS]
T2V = REPO / "comfyui" / "workflows" / "wan2.1_fun_tiny_t2v_api.json"
# The same t2v through the chunked loaders, from single files in ComfyUI's own folders (the fp8_scaled transformer).
SINGLE_FILES_T2V = REPO / "comfyui" / "workflows" / "wan2.1_fun_tiny_single_files_t2v_api.json"
T2V_CAPTION = "a red square moving right"
STEPS = 200  # the long run that is interrupted (the widget's maximum)
ROOT = Path(os.environ.get("COMFY_ROOT", "")) if os.environ.get("COMFY_ROOT") else None
# The Wan2.2 example workflows' model (two experts, random weights): built for the test, as docs/comfyui.md says.
TINY_A14B = "Wan2.2-Fun-Tiny-Random-A14B-InP"
# The single-file workflow's files: the packaged tiny model as ComfyUI keeps components, as docs/comfyui.md says.
TINY_STEM = "wan2.1_fun_tiny_inp"


def comfy_root() -> Path:
    """COMFY_ROOT, or a skip that says why this test cannot run here."""
    if ROOT is None:
        pytest.skip("COMFY_ROOT is not set: build ComfyUI with ../shared/comfyui/setup.sh and point COMFY_ROOT at it")
    python = ROOT / "venv" / "bin" / "python"
    if not (ROOT / "ComfyUI" / "main.py").is_file() or not python.is_file():
        pytest.skip(f"COMFY_ROOT={ROOT} holds no built ComfyUI (ComfyUI/main.py and venv/)")
    found = subprocess.run([python, "-c", "import videox_fun"], capture_output=True, cwd=ROOT)
    if found.returncode != 0:
        pytest.skip(f"videox_fun is not installed in ComfyUI's venv: {python.parent}/pip install -e {REPO}")
    return ROOT


def link_pack(root: Path) -> None:
    """custom_nodes/videox_fun -> this repository (made when missing; a link elsewhere is an error)."""
    link = root / "ComfyUI" / "custom_nodes" / "videox_fun"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(REPO)
    assert link.resolve() == REPO, f"{link} points at {link.resolve()}, not this repository"


class Comfy:
    """A ComfyUI server process on a free port, with its log and output folder."""

    def __init__(
        self, root: Path, folder: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = folder / "output"
        self.log = folder / "server.log"
        args = ["--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"]
        args += ["--output-directory", str(self.output), "--temp-directory", str(folder), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [root / "venv" / "bin" / "python", "main.py", *args],
                cwd=root / "ComfyUI", stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.started = time.monotonic()
        self.wait_ready()

    def wait_ready(self, timeout: float = HANG_GUARD_S) -> None:
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/system_stats")
                self.ready_after = time.monotonic() - self.started
                return
            except OSError:
                time.sleep(0.25)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s")

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str) -> object:
        return self.request("GET", path)[1]

    def submit(self, workflow: dict, client_id: str | None = None) -> str:
        status, answer = self.request("POST", "/prompt", {"prompt": workflow, "client_id": client_id or "test"})
        assert status == 200, f"POST /prompt: {status} {json.dumps(answer, indent=1)[:3000]}"
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = HANG_GUARD_S) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    from videox_fun.models.wan.tiny import build_tiny_model_folder

    root = comfy_root()
    link_pack(root)
    models_dir = tmp_path_factory.mktemp("models")  # found through $VIDEOX_FUN_MODELS, as the library's models
    build_tiny_model_folder(models_dir / TINY_A14B, "inp", boundary=0.9)
    paths = single_file_models(tmp_path_factory.mktemp("comfy_models"))
    server = Comfy(root, tmp_path_factory.mktemp("comfyui"), {"VIDEOX_FUN_MODELS": str(models_dir)},
                   ("--extra-model-paths-config", str(paths)))  # fmt: skip
    server.model_tree = paths.parent  # type: ignore[attr-defined]  # where the reference finds model_patches/
    print(f"\nComfyUI ready after {server.ready_after:.1f} s on port {server.port}")
    try:
        yield server
    finally:
        server.stop()


def single_file_models(folder: Path) -> Path:
    """The tiny model's single files in a models tree, and the extra_model_paths.yaml that gives it to ComfyUI
    (diffusion_models/, vae/, text_encoders/, clip_vision/ besides ComfyUI's own folders); model_patches/ holds a
    tiny Z-Image Fun control file (the Z-Image control workflow's)."""
    import importlib
    import sys

    from videox_fun.models.zimage.tiny import TINY_CONTROL_FILE, build_tiny_control_file

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    importlib.import_module("comfyui.single_files").export_single_files("Wan2.1-Fun-Tiny-InP", folder, TINY_STEM, True)
    (folder / "model_patches").mkdir()
    build_tiny_control_file(folder / "model_patches" / TINY_CONTROL_FILE, "2.1", seed=5)
    kinds = "".join(f"    {kind}: {kind}\n" for kind in ("diffusion_models", "vae", "text_encoders", "clip_vision",
                                                               "model_patches"))  # fmt: skip
    config = folder / "extra_model_paths.yaml"
    config.write_text(f"videox_fun_test:\n    base_path: {folder}\n{kinds}")
    return config


def error_of(entry: dict) -> str:
    for kind, details in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{details['node_type']}: {details['exception_message']}\n{''.join(details['traceback'])}"
    return json.dumps(entry["status"])


def output_files(comfy: Comfy, entry: dict) -> list[Path]:
    files = []
    for output in entry["outputs"].values():
        for item in output.get("images", []):
            files.append(comfy.output / item.get("subfolder", "") / item["filename"])
    return files


def test_pack_loads_without_import_error(comfy: Comfy) -> None:
    log = comfy.log.read_text()
    assert "custom_nodes/videox_fun" in log, "ComfyUI did not try the pack"
    bad = [
        line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line) and "videox" in line
    ]
    assert not bad, bad


def test_every_node_in_object_info(comfy: Comfy) -> None:
    import importlib
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    ours = importlib.import_module("comfyui.nodes").NODE_CLASS_MAPPINGS
    info = comfy.get("/object_info")
    missing = sorted(set(ours) - set(info))
    assert not missing, missing
    print(f"\n{len(ours)} nodes of the pack in /object_info ({len(info)} node types in all)")
    sampler = info["WanFunT2VSampler"]["input"]["required"]
    assert "Wan2.1-Fun-Tiny-InP" in info["LoadWanFunModel"]["input"]["required"]["model"][0]
    assert list(sampler)[:4] == ["funmodels", "prompt", "negative_prompt", "video_length"]
    transformers = info["LoadWanTransformerModel"]["input"]["required"]["model_name"][0]
    assert f"{TINY_STEM}_fp8_scaled.safetensors" in transformers, transformers  # ComfyUI's diffusion_models/ list


def test_ui_workflows_are_what_comfyuis_object_info_makes_of_their_api_twins(comfy: Comfy) -> None:
    """Every UI workflow's node types are in /object_info, the facts the pack keeps about ComfyUI's own nodes
    match it, and converting each API workflow with ComfyUI's own /object_info gives the UI file as shipped."""
    import importlib
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    fmt = importlib.import_module("comfyui.workflow_format")
    info = comfy.get("/object_info")
    for name, facts in fmt.BUILTIN_INFO.items():
        for section in ("required", "optional"):
            theirs = info[name]["input"].get(section, {})
            assert list(theirs) == list(facts["input"].get(section, {})), (name, section, list(theirs))
            for input_name, spec in facts["input"].get(section, {}).items():
                assert fmt.is_widget(theirs[input_name]) == fmt.is_widget(spec), (name, input_name, theirs[input_name])
        assert info[name]["output"] == facts["output"], (name, info[name]["output"])
    for path in WORKFLOWS:
        ui = json.loads(fmt.ui_path(path).read_text())
        missing = {node["type"] for node in ui["nodes"]} - set(info)
        assert not missing, (path.name, missing)
        assert fmt.api_to_ui(json.loads(path.read_text()), info) == ui, fmt.ui_path(path).name
    print(f"\n{len(WORKFLOWS)} UI workflows: node types in /object_info, same as converted with ComfyUI's own")


@pytest.mark.parametrize("path", VIDEO_WORKFLOWS, ids=[p.name.removesuffix("_api.json") for p in VIDEO_WORKFLOWS])
def test_example_workflow_writes_its_video(comfy: Comfy, path: Path) -> None:
    workflow = json.loads(path.read_text())
    started = time.monotonic()
    entry = comfy.wait(comfy.submit(workflow))
    assert entry["status"]["status_str"] == "success", error_of(entry)
    files = output_files(comfy, entry)
    assert files and all(f.is_file() for f in files), files
    frames = read_video(files[0])
    sampler = next(node for node in workflow.values() if node["class_type"].endswith("Sampler"))
    assert frames.shape[0] > 1 and frames.shape[1:] == (64, 64, 3), frames.shape
    print(f"\n{path.name}: {files[0].name} {tuple(frames.shape)} in {time.monotonic() - started:.1f} s")
    if path in (T2V, SINGLE_FILES_T2V):
        verdict = evaluate_video(files[0], T2V_CAPTION)
        print("t2v judged:", {k: verdict[k] for k in ("colour", "shape", "direction", "persistence")})
        assert verdict["colour_ok"], verdict
    assert sampler["inputs"]["steps"] >= 1


def test_interrupt_stops_within_a_step(comfy: Comfy) -> None:
    """POST /interrupt during a long run: the run ends as interrupted, at most one step after the interrupt."""
    from websockets.sync.client import connect

    workflow = json.loads(T2V.read_text())
    sampler = next(node for node in workflow.values() if node["class_type"] == "WanFunT2VSampler")
    # Steps long enough to time (256 px), and a new seed: ComfyUI would reuse a cached result.
    sampler["inputs"].update(steps=STEPS, width=256, height=256, seed=int(time.time()))
    client = uuid.uuid4().hex
    with connect(f"ws://127.0.0.1:{comfy.port}/ws?clientId={client}") as ws:
        prompt_id = comfy.submit(workflow, client)
        steps: list[tuple[float, int]] = []
        while len(steps) < 4:
            message = ws.recv(timeout=HANG_GUARD_S)
            if isinstance(message, str) and json.loads(message)["type"] == "progress":
                steps.append((time.monotonic(), json.loads(message)["data"]["value"]))
        at_interrupt = steps[-1][1]
        interrupted = time.monotonic()
        comfy.request("POST", "/interrupt")
        last = at_interrupt
        while True:
            data = json.loads(message) if isinstance(message := ws.recv(timeout=HANG_GUARD_S), str) else {}
            if data.get("type") == "progress":
                last = data["data"]["value"]
            if data.get("type") in ("execution_interrupted", "execution_error", "execution_success"):
                break
    latency = time.monotonic() - interrupted
    stopped = re.findall(r"videox_fun: interrupted after step (\d+) of", comfy.log.read_text())
    assert stopped, "the pack did not log where the run stopped"
    step_time = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(steps))
    print(
        f"\ninterrupt at step {at_interrupt}/{STEPS} (last progress {last}), the run stopped after step {stopped[-1]}, "
        f"stopped after {latency:.2f} s (a step {step_time:.2f} s)"
    )
    assert data["type"] == "execution_interrupted", data
    assert last < STEPS and last <= at_interrupt + 2, (
        at_interrupt,
        last,
    )  # the step in flight, and one whose message raced ours
    # The count above is the measure; in seconds, allow a round trip that takes seconds on a loaded machine.
    assert latency < 2 * step_time + ROUND_TRIP_S
    assert comfy.wait(prompt_id)["status"]["status_str"] == "error"  # ComfyUI records an interrupted run so


def test_free_drops_the_held_pipeline(comfy: Comfy) -> None:
    """POST /free with unload_models (the page's "Unload Models"): ComfyUI unloads its models and the pack closes
    the pipeline it holds."""
    workflow = json.loads(T2V.read_text())
    sampler = next(node for node in workflow.values() if node["class_type"] == "WanFunT2VSampler")
    sampler["inputs"].update(steps=2, seed=int(time.time()))  # a new seed: ComfyUI would reuse a cached result
    assert comfy.wait(comfy.submit(workflow))["status"]["status_str"] == "success"
    released = "videox_fun: released the held pipeline"
    before = comfy.log.read_text().count(released)
    # ComfyUI's prompt worker reads the flag after a prompt or when its queue wait wakes; /free wakes that wait by a
    # notify, which is lost when it comes while the worker is still finishing the prompt (its gc.collect: long on a
    # loaded machine) and the worker then sleeps up to 1000 s with the flag set. So the request is repeated, as a
    # user would click "Unload Models" again, until the pack has released the pipeline.
    started = time.monotonic()
    posts = 0
    while comfy.log.read_text().count(released) == before and time.monotonic() - started < HANG_GUARD_S:
        if posts == 0 or time.monotonic() - started > 5 * posts:
            status, _ = comfy.request("POST", "/free", {"unload_models": True})
            assert status == 200
            posts += 1
        time.sleep(0.2)
    assert comfy.log.read_text().count(released) == before + 1, comfy.log.read_text()[-2000:]
    print(f"\nPOST /free released the held pipeline after {time.monotonic() - started:.1f} s ({posts} request(s))")


# -- the image families' workflows against videox_fun.api -------------------------------------------------------

# Runs each job through videox_fun.api, as `videox-fun generate` does (load_pipeline, generate, write_result), in one
# process (one start-up of torch for all). Not the CLI itself: in ComfyUI's venv its parser needs fastapi (serve).
GENERATE_ALL = """
import json, sys
from pathlib import Path
from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline, write_result
for job in json.loads(sys.argv[1]):
    loaded = load_pipeline(job["model"], RuntimeOptions(device="cpu", dtype="float32"))
    write_result(loaded.generate(GenerationRequest(**job["request"]), progress=False), Path(job["output"]))
    loaded.close()
"""
# The sampler widgets -> the request's fields (as `videox-fun generate`'s flags name them: --guidance, --sampler...).
REQUEST_FIELDS = {"width": "width", "height": "height", "steps": "steps", "seed": "seed", "cfg": "guidance_scale",
                  "scheduler": "sampler"}  # fmt: skip


def generate_job(workflow: dict, saved: dict[tuple[str, int], Path], model_tree: Path, output: Path) -> dict:
    """The library job of a workflow's image sampler: its model, and a request of its prompts, widgets, mode, the
    chain's control file and its input images as the workflow's SaveImage nodes wrote them (``saved``: by the output
    they save), as `videox-fun generate` would be given them."""
    import importlib
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sampler = next(node for node in workflow.values() if node["class_type"].endswith("Sampler"))
    cls = importlib.import_module("comfyui.nodes").NODE_CLASS_MAPPINGS[sampler["class_type"]]
    inputs = sampler["inputs"]
    request = {field: inputs[name] for name, field in REQUEST_FIELDS.items()}
    request["prompt"] = workflow[inputs["prompt"][0]]["inputs"]["prompt"]
    if "negative_prompt" in inputs:
        request["negative_prompt"] = workflow[inputs["negative_prompt"][0]]["inputs"]["prompt"]
    if cls.STATIC_SHIFT:  # FLUX.2 / Qwen-Image: the shift widget is unused, as in VideoX-Fun (dynamic shift)
        request["shift"] = inputs["shift"]
    extra = {"control_context_scale": inputs["control_context_scale"]} if "control_context_scale" in inputs else {}
    chain = workflow[inputs["funmodels"][0]]
    if chain["class_type"].endswith("ControlNetInPipeline"):
        extra["control_path"] = str(model_tree / "model_patches" / chain["inputs"]["model_name"])
        chain = workflow[chain["inputs"]["funmodels"][0]]
    media = {cls.MEDIA[socket]: str(saved[tuple(inputs[socket])]) for socket in cls.MEDIA if socket in inputs}
    request |= {**media, "extra": extra, "mode": cls().mode(dict.fromkeys(media))}
    return {"model": chain["inputs"]["model"], "request": request, "output": str(output)}


@pytest.fixture(scope="module")
def image_runs(comfy: Comfy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each image workflow run by the server, then their library twins in one process of ComfyUI's venv (the same
    torch, threads and built-in models): workflow file name -> (the sampler's PNG, the library's PNG)."""
    out = tmp_path_factory.mktemp("generate")
    runs, jobs = {}, []
    for path in IMAGE_WORKFLOWS:
        workflow = json.loads(path.read_text())
        started = time.monotonic()
        entry = comfy.wait(comfy.submit(workflow))
        assert entry["status"]["status_str"] == "success", error_of(entry)
        saved = {}  # (source node, output slot) -> the PNG a SaveImage node wrote of it
        for node_id, output in entry["outputs"].items():
            item = output["images"][0]
            saved[tuple(workflow[node_id]["inputs"]["images"])] = comfy.output / item["subfolder"] / item["filename"]
        sampler = next(key for key, node in workflow.items() if node["class_type"].endswith("Sampler"))
        target = out / f"{path.name.removesuffix('_api.json')}.png"
        jobs.append(generate_job(workflow, saved, comfy.model_tree, target))  # type: ignore[attr-defined]
        runs[path.name] = (saved[(sampler, 0)], target)
        print(f"\n{path.name}: ComfyUI ran it in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # as the server's
    python = comfy_root() / "venv" / "bin" / "python"
    done = subprocess.run([python, "-c", GENERATE_ALL, json.dumps(jobs)], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"videox_fun.api made the {len(jobs)} references in {time.monotonic() - started:.1f} s")
    return runs


@pytest.mark.parametrize("path", IMAGE_WORKFLOWS, ids=[p.name.removesuffix("_api.json") for p in IMAGE_WORKFLOWS])
def test_image_workflow_equals_the_library(image_runs: dict[str, tuple[Path, Path]], path: Path) -> None:
    """The image a workflow's sampler saves is the one videox_fun.api writes (what `videox-fun generate` runs) for
    the same model, seed, settings and input images: both build one request for the same entry."""
    import numpy as np
    from PIL import Image

    node_png, library_png = image_runs[path.name]
    node, library = (np.asarray(Image.open(p).convert("RGB")).astype(np.int16) for p in (node_png, library_png))
    diff = int(np.abs(node - library).max())
    print(f"\n{path.name}: {node.shape}, ComfyUI vs videox_fun.api max abs diff {diff} (of 255)")
    assert node.shape == (64, 64, 3) and diff == 0 and node.std() > 1.0  # equal, and not a blank image
