"""Family settings over REST (``extra``): Wan2.2-Animate jobs on the built-in tiny random Animate model, its
preprocessing folder sent as the folder's files (multipart uploads, or base64 by file name), give videos; every
setting the family does not declare, of the wrong type or with an unusable file, is a 422 naming ``extra.NAME`` in
one line, before anything is queued."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Server
from helpers import HANG_GUARD_S, decode_video, write_animate_sources

from videox_fun.serve.process import wait_finished

pytestmark = pytest.mark.slow

MODEL = "Wan2.2-Animate-Tiny-Random"
FRAMES, SIZE = 7, 32
GOOD = {"prompt": "a person dancing", "model": MODEL, "steps": 1}
ANIMATE_FILES = ("src_pose.mp4", "src_face.mp4", "src_ref.png")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A preprocessing folder as Wan-Animate's writes it (replacement files too)."""
    return write_animate_sources(tmp_path_factory.mktemp("process_results"), FRAMES, SIZE)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """A server that checks and stores jobs but runs none (refusals need no worker)."""
    server = Server(tmp_path_factory.mktemp("settings") / "store", "--no-workers")
    yield server.start()
    server.stop()


def encoded(sources: Path, *names: str) -> dict[str, str]:
    """Files of the folder as ``{name: base64}``."""
    return {name: base64.b64encode((sources / name).read_bytes()).decode() for name in names}


def uploads(sources: Path, *names: str) -> list[tuple]:
    """Files of the folder as multipart parts, each under the setting's name with its file name."""
    return [("src_root_path", (name, (sources / name).read_bytes())) for name in names]


def test_animate_and_replace_jobs_over_rest_return_videos(start_server, sources, tmp_path):
    server = start_server()
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    settings = {s["name"]: s for s in listing[MODEL]["settings"]}
    assert settings["src_root_path"]["kind"] == "folder" and settings["refert_num"]["choices"] == [1, 5]
    assert (settings["clip_len"]["type"], settings["vace_context_scale"]["type"]) == ("integer", "number")

    # Animation, the folder's files uploaded: the mode is inferred from the folder, as the CLI infers it.
    spec = GOOD | {"extra": {"clip_len": 5}}
    answer = client.post("/v1/generations", data={"request": json.dumps(spec)}, files=uploads(sources, *ANIMATE_FILES))
    assert answer.status_code == 202 and answer.json()["mode"] == "animate", answer.text
    animated = answer.json()["id"]
    # Replacement, the folder's five files as base64 in the JSON.
    folder = encoded(sources, *ANIMATE_FILES, "src_bg.mp4", "src_mask.mp4")
    spec = GOOD | {"mode": "replace", "extra": {"src_root_path": folder, "clip_len": 5, "refert_num": 1}}
    answer = client.post("/v1/generations", json=spec)
    assert answer.status_code == 202, answer.text
    replaced = answer.json()["id"]

    views = wait_finished(client, [animated, replaced])
    assert [views[i]["status"] for i in (animated, replaced)] == ["done", "done"], views
    for job_id, mode in ((animated, "animate"), (replaced, "replace")):
        video = tmp_path / f"{mode}.mp4"
        video.write_bytes(client.get(f"/v1/generations/{job_id}/result").content)
        assert decode_video(video).shape == (FRAMES, SIZE, SIZE, 3)  # PyAV reads every frame of it
        sidecar = client.get(f"/v1/generations/{job_id}/settings").json()
        assert (sidecar["model"], sidecar["mode"], sidecar["clip_len"]) == (MODEL, mode, 5)
        assert sidecar["src_root_path"].endswith(f"{job_id}/src_root_path")  # stored with the job's inputs


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"segment_length": 5}, "setting 'segment_length' is not one the wan family reads"),
        ({"refert_num": "five"}, "refert_num takes an integer, got 'five'"),
        ({"refert_num": 1.5}, "refert_num takes an integer, got 1.5"),
        ({"refert_num": 3}, "refert_num must be one of 1, 5, got 3"),
        ({"clip_len": [5]}, "clip_len takes one integer, got [5]"),
        ({"clip_len": 6}, "--clip-len must be of the form 4n + 1"),
        ({"vace_context_scale": 1.0}, "mode 'animate' does not use --vace-context-scale"),
        ({"distill_timesteps": "1000,400"}, "mode 'animate' does not use --distill-timesteps"),
        ({"src_root_path": "/etc"}, "not a path on the server"),
        ({"src_root_path": {"../src_pose.mp4": "AAAA"}}, "'../src_pose.mp4' is not one of its files"),
        ({"src_root_path": {"src_pose.mp4": "AAAA"}}, "src_root_path: cannot open video src_root_path/src_pose.mp4"),
        ({"src_root_path": "SOURCES:src_pose.mp4,src_ref.png"}, "src_root_path has no src_face.mp4"),
    ],
)
def test_a_bad_setting_is_a_422_naming_it_in_one_line(refusing, sources, extra, says):
    name, value = next(iter(extra.items()))
    if isinstance(value, str) and value.startswith("SOURCES:"):  # some files of the real folder
        extra = {name: encoded(sources, *value.removeprefix("SOURCES:").split(","))}
    # The others beside a good folder: the refusal is theirs, not the folder's.
    extra = {"src_root_path": encoded(sources, *ANIMATE_FILES)} | extra
    answer = httpx.post(
        f"{refusing.url}/v1/generations", json=GOOD | {"mode": "animate", "extra": extra}, timeout=HANG_GUARD_S
    )
    assert answer.status_code == 422, answer.text
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == ["body", "extra", name] and says in detail["msg"], detail
    assert "\n" not in detail["msg"] and str(refusing.root) not in detail["msg"]  # no server paths either


def test_uploads_of_a_setting_are_checked_as_its_files(refusing, sources):
    url = f"{refusing.url}/v1/generations"
    spec = GOOD | {"extra": {"src_root_path": encoded(sources, "src_pose.mp4")}}
    twice = httpx.post(
        url, data={"request": json.dumps(spec)}, files=uploads(sources, *ANIMATE_FILES), timeout=HANG_GUARD_S
    )
    assert twice.status_code == 422 and "'src_pose.mp4' given twice" in twice.text
    value = GOOD | {"extra": {"clip_len": 5}}
    wrong = httpx.post(
        url, data={"request": json.dumps(value)}, files=[("clip_len", ("5.txt", b"5"))], timeout=HANG_GUARD_S
    )
    assert wrong.status_code == 422 and "clip_len takes an integer value, not an upload" in wrong.text
    # Nothing refused left its inputs behind.
    assert list((refusing.root / "inputs").glob("*")) == []


def test_a_control_file_uploaded_to_a_zimage_control_job_gives_a_png(start_server, tmp_path):
    """``control_path`` is a file setting: listed as one, its file sent as an upload (not a server path), and the job
    runs with the uploaded file (the sidecar names it under the job's inputs)."""
    from helpers import read_png
    from PIL import Image

    from videox_fun.models.zimage.tiny import build_tiny_control_file

    model = "Z-Image-Turbo-Fun-Control-Tiny-Random"
    control_file = build_tiny_control_file(tmp_path / "control.safetensors", "2.1", seed=5)
    control_image = tmp_path / "canny.png"
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))).save(control_image)
    server = start_server()
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    settings = {s["name"]: s for s in listing[model]["settings"]}
    assert settings["control_path"]["kind"] == "file"

    spec = {"prompt": "a house", "model": model, "steps": 1, "height": 32, "width": 32, "mode": "control",
            "extra": {"control_context_scale": 0.9}}  # fmt: skip
    files = [("control_path", ("control.safetensors", control_file.read_bytes())),
             ("control_video", ("canny.png", control_image.read_bytes()))]  # fmt: skip
    answer = client.post("/v1/generations", data={"request": json.dumps(spec)}, files=files)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    view = wait_finished(client, [job_id])[job_id]
    assert view["status"] == "done", view
    out = tmp_path / "out.png"
    out.write_bytes(client.get(f"/v1/generations/{job_id}/result").content)
    assert read_png(out).shape == (32, 32, 3)
    sidecar = client.get(f"/v1/generations/{job_id}/settings").json()
    assert (sidecar["mode"], sidecar["control_context_scale"]) == ("control", 0.9)
    assert sidecar["control_path"].endswith(f"{job_id}/control_path.safetensors")  # the upload, stored with the job
