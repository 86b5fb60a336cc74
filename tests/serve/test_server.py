"""The real server (uvicorn on loopback) with the packaged tiny models: jobs, progress, cancel, results."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from helpers import HANG_GUARD_S, decode_video

from videox_fun.registry import packaged_model
from videox_fun.serve.process import wait_finished

pytestmark = pytest.mark.slow

SETTINGS = {"steps": 4, "frames": 9}
CONTROL_MODEL = "Wan2.1-Fun-Tiny-Control"
# (mode, model, the inputs' fields, extra settings): the 20 jobs are 4 seeds of each.
GROUPS = [
    ("t2v", None, (), {}),
    ("i2v", None, ("image",), {}),
    ("v2v", None, ("video",), {"strength": 0.6}),
    ("inpaint", None, ("video", "mask"), {}),
    ("control", CONTROL_MODEL, ("control_video",), {}),
]
PROMPTS = ["a red circle moving right", "a blue square moving left", "a green triangle moving up", "a red square"]


def cli_outputs(tmp_path: Path, group: tuple, media: dict[str, Path], seed: int) -> list[bytes]:
    """The CLI's videos of one group (its 4 prompts, seeds seed..seed+3, one process)."""
    mode, model, inputs, extra = group
    prompts = tmp_path / f"{mode}-prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / f"cli-{mode}"
    command = [sys.executable, "-m", "videox_fun.cli", "generate", "--prompts-file", str(prompts), "--seed", str(seed),
               "--output-dir", str(out), "--device", "cpu", "--quiet", "--mode", mode, "--steps", "4",
               "--frames", "9"]  # fmt: skip
    command += ["--model", model] if model else []
    for name in inputs:
        command += [f"--{name.replace('_', '-')}", str(media[name])]
    for name, value in extra.items():
        command += [f"--{name}", str(value)]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    return [(out / f"{i:08d}.mp4").read_bytes() for i in range(1, 5)]


def post_job(client: httpx.Client, group: tuple, media: dict[str, Path], prompt: str, seed: int) -> str:
    """Post one job of a group: the start image as an upload, the other media as base64 or uploads."""
    mode, model, inputs, extra = group
    spec = {"prompt": prompt, "seed": seed, "mode": mode, **SETTINGS, **extra} | ({"model": model} if model else {})
    files = {}
    for name in inputs:
        if name == "video":  # base64 in the JSON
            spec[name] = base64.b64encode(media[name].read_bytes()).decode()
        else:  # multipart uploads
            files[name] = (media[name].name, media[name].read_bytes())
    if files:
        answer = client.post("/v1/generations", data={"request": json.dumps(spec)}, files=files)
    else:
        answer = client.post("/v1/generations", json=spec)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


@pytest.mark.skipif(packaged_model(CONTROL_MODEL) is None, reason="the packaged tiny models are not installed")
def test_twenty_mixed_jobs_posted_at_once_match_the_cli_byte_for_byte(start_server, media, tmp_path):
    server = start_server()
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    jobs = [(group, i) for group in GROUPS for i in range(4)]
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda job: post_job(client, job[0], media, PROMPTS[job[1]], 100 + job[1]), jobs))
    assert len(set(ids)) == 20
    views = wait_finished(client, ids)
    assert all(view["status"] == "done" for view in views.values()), [v["error"] for v in views.values()]
    expected = {group[0]: cli_outputs(tmp_path, group, media, 100) for group in GROUPS}
    for (group, i), job_id in zip(jobs, ids, strict=True):
        got = client.get(f"/v1/generations/{job_id}/result")
        assert got.headers["content-type"] == "video/mp4"
        assert got.content == expected[group[0]][i], f"{group[0]} seed {100 + i} differs from the CLI"
        progress = views[job_id]["progress"]  # v2v runs only the steps its strength leaves
        assert views[job_id]["mode"] == group[0] and progress["step"] == progress["total"]
        assert progress["total"] == (2 if group[0] == "v2v" else 4)
    video = tmp_path / "check.mp4"
    video.write_bytes(got.content)
    assert decode_video(video).shape == (9, 64, 64, 3)  # PyAV plays it


def test_progress_events_cancel_paging_and_range_requests(start_server):
    server = start_server()
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    done = client.post("/v1/generations", json={"prompt": "a red circle", "steps": 2, "frames": 5}).json()["id"]
    long = client.post("/v1/generations", json={"prompt": "a red circle", "steps": 1000, "frames": 17}).json()["id"]
    queued = client.post("/v1/generations", json={"prompt": "a blue circle", "steps": 2, "frames": 5}).json()["id"]
    assert client.get(f"/v1/generations/{queued}").json()["queue_position"] in (0, 1)
    # Events of the long job until it is denoising, then cancel it and the queued one.
    stages = []
    with client.stream("GET", f"/v1/generations/{long}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                view = json.loads(line[6:])
                stages.append((view["stage"], view["progress"]["step"]))
                if view["stage"] == "denoising" and view["progress"]["step"] >= 2:
                    break
    assert stages[-1][0] == "denoising" and stages[-1][1] >= 2
    assert client.delete(f"/v1/generations/{queued}").json()["status"] == "cancelled"
    assert client.delete(f"/v1/generations/{long}").status_code == 202
    views = wait_finished(client, [done, long, queued])
    assert views[done]["status"] == "done"
    assert views[long]["status"] == "cancelled" and views[long]["error"].startswith("cancelled after step")
    assert views[long]["progress"]["step"] < 1000
    assert views[queued]["error"] == "cancelled before it started"
    # The finished job's result, whole and by range; the others have none.
    whole = client.get(f"/v1/generations/{done}/result").content
    part = client.get(f"/v1/generations/{done}/result", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == whole[10:110]
    assert client.get(f"/v1/generations/{long}/result").status_code == 409
    # Paging, newest first.
    page = client.get("/v1/generations", params={"limit": 2}).json()
    assert page["total"] == 3 and [item["id"] for item in page["items"]] == [queued, long]
    rest = client.get("/v1/generations", params={"limit": 2, "offset": 2}).json()
    assert [item["id"] for item in rest["items"]] == [done]
    assert client.get("/v1/generations", params={"status": "cancelled"}).json()["total"] == 2


def test_models_lists_the_packaged_models_with_their_modes_and_the_loras(start_server, tmp_path):
    models = tmp_path / "models"
    (models / "Personalized_Model").mkdir(parents=True)
    (models / "Personalized_Model" / "style.safetensors").write_bytes(b"")
    server = start_server("--models", str(models), "--no-workers")
    listing = httpx.get(f"{server.url}/v1/models", timeout=HANG_GUARD_S).json()
    by_name = {model["name"]: model for model in listing["models"]}
    assert listing["loras"] == ["style.safetensors"]
    inp = by_name["Wan2.1-Fun-Tiny-InP"]
    assert inp["family"] == "wan" and "inpaint" in [mode["name"] for mode in inp["modes"]]
    assert "control" in [mode["name"] for mode in by_name["Wan2.1-Fun-Tiny-Control"]["modes"]]
    assert by_name["CogVideoX-Fun-Tiny-Random-InP"]["family"] == "cogvideox"
