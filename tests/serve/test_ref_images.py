"""Several reference pictures over REST (``ref_image``): a JSON list or repeated multipart parts, stored in order in
the job's folder and passed on as a list. The real server's results for Qwen-Image-Edit-2509 (an edit: ``image`` and
2 more pictures) and a VACE tiny model (r2v with 2 subjects) equal the programmatic entry's with the same inputs;
a single picture is stored and run as before; too many is one 422 line; a server killed mid-job runs the job again
with its pictures in the same order."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import Server
from helpers import HANG_GUARD_S, decode_video, read_png, write_png
from qwenimage_helpers import random_image

from videox_fun.api import GenerationRequest, RuntimeOptions, load_pipeline, write_result
from videox_fun.registry import CACHE_ENV, DEFAULT_VACE_MODEL, PACKAGED_VACE_MODEL, packaged_model
from videox_fun.serve.jobs import LISTED_INPUTS
from videox_fun.serve.process import wait_finished
from videox_fun.serve.store import JobStore, database_url

pytestmark = pytest.mark.slow

EDIT_MODEL = "Qwen-Image-Edit-2509-Tiny-Random"  # reads 3 pictures: --image and 2 through --ref-image
# The trained toy VACE model when packaged: its video follows the subjects, so their order shows in the result.
VACE_MODEL = DEFAULT_VACE_MODEL
EDIT = {"prompt": "put them together", "model": EDIT_MODEL, "mode": "edit", "steps": 2, "seed": 7}
R2V = {"prompt": "a red square and a blue square", "model": VACE_MODEL, "mode": "r2v", "steps": 3, "frames": 5,
       "height": 32, "width": 32, "seed": 11}  # fmt: skip
STEPS_KILLED = 20  # the job killed mid-way: long enough to be caught while denoising


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    """A square start picture and two references of opposite shapes (wide, tall): an edit's output takes the last
    picture's aspect ratio, so the order of the references shows in the result's size."""
    folder = tmp_path_factory.mktemp("pictures")
    return {
        "image": write_png(folder / "start.png", random_image(64, seed=1)),
        "wide": write_png(folder / "wide.png", random_image((32, 96), seed=2)),
        "tall": write_png(folder / "tall.png", random_image((96, 32), seed=3)),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, builtin_cache_dir):
    """A server with a worker, its built-in models in the module's cache (the API runs below share it); the last
    test kills it mid-job and starts it again."""
    started = Server(tmp_path_factory.mktemp("refs") / "store", env={CACHE_ENV: str(builtin_cache_dir)})
    yield started.start()
    started.stop()


@pytest.fixture(scope="module")
def api(builtin_cache_dir):
    """``run(model, tmp_path, **request)``: the programmatic entry's result for the same settings, written as the
    server writes it (one loaded pipeline per model)."""
    loaded = {}

    def run(model: str, target: Path, **fields) -> Path:
        if model not in loaded:
            loaded[model] = load_pipeline(model, RuntimeOptions(device="cpu"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the server runs (one torch thread): another count rounds differently
        try:
            result = loaded[model].generate(GenerationRequest(**fields), progress=False)
        finally:
            torch.set_num_threads(threads)
        return write_result(result, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(builtin_cache_dir))
        yield run
    for pipeline in loaded.values():
        pipeline.close()


def b64(path: Path) -> str:
    """A file as base64 text."""
    return base64.b64encode(path.read_bytes()).decode()


def post(client: httpx.Client, spec: dict, files: list[tuple] | None = None) -> httpx.Response:
    """``POST /v1/generations``: JSON, or multipart with ``files`` (name, path) in order."""
    if not files:
        return client.post("/v1/generations", json=spec)
    parts = [(name, (path.name, path.read_bytes())) for name, path in files]
    return client.post("/v1/generations", data={"request": json.dumps(spec)}, files=parts)


def finished(client: httpx.Client, answer: httpx.Response, target: Path) -> tuple[Path, dict]:
    """Wait for the posted job; its result saved at ``target``, and its view."""
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    view = wait_finished(client, [job_id], timeout_s=300)[job_id]
    assert view["status"] == "done", view
    target.write_bytes(client.get(f"/v1/generations/{job_id}/result").content)
    return target, view


def stored_inputs(server: Server, job_id: str) -> dict:
    """The media paths the store keeps for a job (what a restarted server runs it with)."""
    store = JobStore(database_url(None, server.root))
    try:
        return store.get(job_id).spec["inputs"]
    finally:
        store.close()


def pixels(path: Path) -> np.ndarray:
    """A result's frames (F, H, W, 3) int: a PNG as one frame, a video decoded by PyAV."""
    frames = read_png(path)[None] if path.suffix == ".png" else decode_video(path)
    return frames.astype(np.int64)


def max_abs_diff(a: Path, b: Path) -> int:
    """The largest pixel difference of two results of the same shape."""
    first, second = pixels(a), pixels(b)
    assert first.shape == second.shape, (first.shape, second.shape)
    return int(np.abs(first - second).max())


def test_an_edit_of_three_pictures_matches_the_api_as_json_and_as_multipart(server, api, pictures, tmp_path):
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    image, wide, tall = pictures["image"], pictures["wide"], pictures["tall"]
    as_json = post(client, EDIT | {"image": b64(image), "ref_image": [b64(wide), b64(tall)]})
    multipart = post(client, EDIT, [("image", image), ("ref_image", wide), ("ref_image", tall)])
    json_png, view = finished(client, as_json, tmp_path / "json.png")
    multipart_png, _ = finished(client, multipart, tmp_path / "multipart.png")

    # Stored in the job's folder in the order given, and kept in that order by the store.
    inputs = stored_inputs(server, multipart.json()["id"])
    assert [Path(path).name for path in inputs["ref_image"]] == ["ref_image_0.png", "ref_image_1.png"]
    assert [Path(path).read_bytes() for path in inputs["ref_image"]] == [wide.read_bytes(), tall.read_bytes()]

    settings = dict(prompt=EDIT["prompt"], mode="edit", steps=2, seed=7, image=str(image))
    ours = api(EDIT_MODEL, tmp_path / "api.png", **settings, ref_image=[str(wide), str(tall)])
    swapped = api(EDIT_MODEL, tmp_path / "swapped.png", **settings, ref_image=[str(tall), str(wide)])
    diffs = [max_abs_diff(json_png, ours), max_abs_diff(multipart_png, ours)]
    print(f"edit, image + 2 refs, {EDIT_MODEL}: max abs diff vs the API (uint8): JSON {diffs[0]}, multipart {diffs[1]}")
    assert diffs == [0, 0] and view["mode"] == "edit"
    # The last picture's aspect ratio sets the size: tall last (the order sent), wide last when swapped.
    assert pixels(ours).shape[1] > pixels(ours).shape[2] and pixels(swapped).shape[1] < pixels(swapped).shape[2]


@pytest.mark.skipif(packaged_model(PACKAGED_VACE_MODEL) is None, reason="the packaged tiny VACE model is not installed")
def test_r2v_with_two_subjects_matches_the_api_as_json_multipart_and_infer_forward(server, api, pictures, tmp_path):
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    wide, tall = pictures["wide"], pictures["tall"]
    as_json = post(client, R2V | {"ref_image": [b64(wide), b64(tall)]})
    multipart = post(client, R2V, [("ref_image", wide), ("ref_image", tall)])
    json_mp4, _ = finished(client, as_json, tmp_path / "json.mp4")
    multipart_mp4, _ = finished(client, multipart, tmp_path / "multipart.mp4")

    settings = dict(prompt=R2V["prompt"], mode="r2v", steps=3, num_frames=5, height=32, width=32, seed=11)
    ours = api(VACE_MODEL, tmp_path / "api.mp4", **settings, ref_image=[str(wide), str(tall)])
    swapped = api(VACE_MODEL, tmp_path / "swapped.mp4", **settings, ref_image=[str(tall), str(wide)])
    diffs = [max_abs_diff(json_mp4, ours), max_abs_diff(multipart_mp4, ours)]
    swap = max_abs_diff(ours, swapped)
    print(f"r2v, 2 subjects, {VACE_MODEL}: max abs diff vs the API (decoded uint8): JSON {diffs[0]}, "
          f"multipart {diffs[1]}; the API with the subjects swapped differs by {swap}")  # fmt: skip
    assert diffs == [0, 0] and json_mp4.read_bytes() == multipart_mp4.read_bytes() == ours.read_bytes()
    assert swap > 0  # the order reaches the model

    # VideoX-Fun's infer_forward takes the list too (its model switched to the VACE one first).
    assert client.post("/videox_fun/update_diffusion_transformer",
                       json={"diffusion_transformer_path": VACE_MODEL}).json() == {"message": "Success"}  # fmt: skip
    fields = {"prompt_textbox": R2V["prompt"], "ref_image": [b64(wide), b64(tall)], "length_slider": 5,
              "width_slider": 32, "height_slider": 32, "sample_step_slider": 3, "seed_textbox": 11}  # fmt: skip
    answer = client.post("/videox_fun/infer_forward", json=fields, timeout=300)
    assert answer.status_code == 200, answer.text
    (tmp_path / "compat.mp4").write_bytes(base64.b64decode(answer.json()["base64_encoding"]))
    assert max_abs_diff(tmp_path / "compat.mp4", ours) == 0


def test_a_single_picture_is_stored_and_run_as_before(server, api, pictures, tmp_path):
    """One ``ref_image`` (text, one upload, or a list of one) is ``ref_image.png`` passed on as one path."""
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    image, tall = pictures["image"], pictures["tall"]
    answers = [
        post(client, EDIT | {"image": b64(image), "ref_image": b64(tall)}),
        post(client, EDIT | {"image": b64(image), "ref_image": [b64(tall)]}),
        post(client, EDIT, [("image", image), ("ref_image", tall)]),
    ]
    results = [finished(client, answer, tmp_path / f"{i}.png")[0] for i, answer in enumerate(answers)]
    for answer in answers:
        inputs = stored_inputs(server, answer.json()["id"])
        assert isinstance(inputs["ref_image"], str) and Path(inputs["ref_image"]).name == "ref_image.png"
    sidecar = client.get(f"/v1/generations/{answers[0].json()['id']}/settings").json()
    assert Path(sidecar["ref_image"]).name == "ref_image.png"
    ours = api(EDIT_MODEL, tmp_path / "api.png", prompt=EDIT["prompt"], mode="edit", steps=2, seed=7,
               image=str(image), ref_image=str(tall))  # fmt: skip
    assert [max_abs_diff(result, ours) for result in results] == [0, 0, 0]


def one_line_refusal(answer: httpx.Response, status: int = 422) -> str:
    """A refusal with one detail of one line; its message."""
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert len(detail) == 1 and "\n" not in detail[0]["msg"], detail
    return detail[0]["msg"]


def test_too_many_pictures_and_wrong_ones_are_one_line_422s(server, pictures):
    """Refused before anything is stored or queued."""
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    before = set((server.root / "inputs").glob("*"))
    image, wide = pictures["image"], pictures["wide"]
    most = LISTED_INPUTS["ref_image"]
    eleven = [b64(wide)] * (most + 1)
    says = f"ref_image takes at most {most} pictures, got {most + 1}"
    answer = post(client, R2V | {"ref_image": eleven})
    assert one_line_refusal(answer) == says and answer.json()["detail"][0]["loc"] == ["body", "ref_image"]
    assert one_line_refusal(post(client, R2V, [("ref_image", wide)] * (most + 1))) == says
    # Qwen-Image-Edit-2509 reads 3 pictures in all: its own check, before anything is queued.
    four = post(client, EDIT, [("image", image), *[("ref_image", wide)] * 3])
    assert "reads at most 3 pictures (--image and --ref-image together), got 4" in one_line_refusal(four)
    assert "list of them" in one_line_refusal(post(client, R2V | {"ref_image": [1, 2]}))
    assert "ref_image[1]" in one_line_refusal(post(client, R2V | {"ref_image": [b64(wide), "%%"]}))
    assert "given twice" in one_line_refusal(post(client, R2V | {"ref_image": [b64(wide)]}, [("ref_image", wide)]))
    assert "takes one file, got 2" in one_line_refusal(post(client, EDIT, [("image", image), ("image", image)]))
    assert set((server.root / "inputs").glob("*")) == before  # nothing refused left its files behind


@pytest.mark.skipif(packaged_model(PACKAGED_VACE_MODEL) is None, reason="the packaged tiny VACE model is not installed")
def test_a_server_killed_mid_job_runs_it_again_with_the_pictures_in_order(server, api, pictures, tmp_path):
    """The module's server is killed while denoising, then started again on its store: the job runs again, with
    the stored pictures in the order they were sent."""
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    wide, tall = pictures["wide"], pictures["tall"]
    job_id = post(client, R2V | {"steps": STEPS_KILLED}, [("ref_image", wide), ("ref_image", tall)]).json()["id"]
    deadline = time.monotonic() + HANG_GUARD_S
    while client.get(f"/v1/generations/{job_id}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline, "the job never started denoising"
        time.sleep(0.01)
    server.kill()
    store = JobStore(database_url(None, server.root))
    assert store.get(job_id).status == "running"  # killed mid-job, not after it
    store.close()
    inputs = stored_inputs(server, job_id)
    assert [Path(path).read_bytes() for path in inputs["ref_image"]] == [wide.read_bytes(), tall.read_bytes()]

    server.start()  # the same name: it puts its own interrupted job back at once
    result, view = finished(client, httpx.Response(202, json={"id": job_id}), tmp_path / "again.mp4")
    assert view["attempts"] == 2
    ours = api(VACE_MODEL, tmp_path / "api.mp4", prompt=R2V["prompt"], mode="r2v", steps=STEPS_KILLED, num_frames=5,
               height=32, width=32, seed=11, ref_image=[str(wide), str(tall)])  # fmt: skip
    assert max_abs_diff(result, ours) == 0
