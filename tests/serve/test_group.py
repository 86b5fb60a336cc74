"""A worker that is a torchrun group: rank 0 claims and broadcasts, both ranks run the job with Ulysses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from helpers import HANG_GUARD_S

from videox_fun.serve.process import wait_finished

pytestmark = pytest.mark.slow


def test_a_two_process_ulysses_group_serves_jobs_as_torchrun_generate_makes_them(start_server, tmp_path):
    server = start_server("--nproc", "2", "--ulysses-degree", "2")
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    jobs = [{"prompt": "a red circle moving right", "steps": 4, "frames": 9, "seed": seed} for seed in (1, 2)]
    ids = [client.post("/v1/generations", json=job).json()["id"] for job in jobs]
    views = wait_finished(client, ids, timeout_s=300)
    assert [views[job_id]["status"] for job_id in ids] == ["done", "done"], [v["error"] for v in views.values()]
    assert server.log_text().count("loading") == 1  # the group kept its model for the second job
    for job, job_id in zip(jobs, ids, strict=True):
        out = tmp_path / f"cli-{job['seed']}.mp4"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "videox_fun.cli", "generate", "--ulysses-degree", "2", "--device", "cpu", "--quiet",
                   "--prompt", job["prompt"], "--steps", "4", "--frames", "9", "--seed", str(job["seed"]),
                   "--output", str(out)]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO, capture_output=True, env=server.env)
        assert client.get(f"/v1/generations/{job_id}/result").content == out.read_bytes()
    server.stop()
    assert not processes_naming(f"--port {server.port} "), "the torchrun group outlived its server"


def processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line holds ``text`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # ended meanwhile
            if text in command:
                found.append(int(entry.name))
    return found
