"""Durability: a server killed with SIGKILL mid-job loses nothing; two servers on one PostgreSQL share a queue."""

from __future__ import annotations

import re
import time
from collections import Counter

import httpx
import pytest
from helpers import HANG_GUARD_S

from videox_fun.serve.process import wait_finished
from videox_fun.serve.store import DONE, JobStore, database_url

pytestmark = pytest.mark.slow

SMALL = {"prompt": "a blue square moving left", "steps": 2, "frames": 5}


def written_results(*logs: str) -> Counter:
    """How many times each job's result was written, from the servers' logs."""
    return Counter(re.findall(r"wrote \S*/results/([0-9a-f]{32})\.mp4", "\n".join(logs)))


def test_sigkill_while_running_then_restart_finishes_every_job_once(start_server, tmp_path):
    server = start_server("--name", "restart-test")
    client = httpx.Client(base_url=server.url, timeout=HANG_GUARD_S)
    long = client.post("/v1/generations", json={"prompt": "a red circle moving right", "steps": 60, "frames": 17})
    ids = [long.json()["id"]] + [
        client.post("/v1/generations", json=SMALL | {"seed": seed}).json()["id"] for seed in range(5)
    ]
    deadline = time.monotonic() + HANG_GUARD_S
    while client.get(f"/v1/generations/{ids[0]}").json()["progress"]["step"] < 3:
        assert time.monotonic() < deadline, "the first job never started denoising"
        time.sleep(0.05)
    server.kill()
    stored = JobStore(database_url(None, server.root))
    assert [stored.get(job_id).status for job_id in ids] == ["running"] + ["queued"] * 5
    stored.close()

    again = start_server("--name", "restart-test", root=server.root)
    client = httpx.Client(base_url=again.url, timeout=HANG_GUARD_S)
    views = wait_finished(client, ids)
    assert [views[job_id]["status"] for job_id in ids] == ["done"] * 6
    assert views[ids[0]]["attempts"] == 2 and all(views[job_id]["attempts"] == 1 for job_id in ids[1:])
    # Each job ran to completion exactly once: one written result each, across both runs.
    assert written_results(server.log_text(), again.log_text()) == Counter(dict.fromkeys(ids, 1))
    # No partial file is visible: every result file in the folder belongs to a done job and plays.
    visible = sorted(p.stem for p in (server.root / "results").glob("*.mp4"))
    assert visible == sorted(ids)
    for job_id in ids:
        data = client.get(f"/v1/generations/{job_id}/result").content
        assert data == (server.root / "results" / f"{job_id}.mp4").read_bytes() and data[4:8] == b"ftyp"


def test_two_servers_on_one_postgresql_share_twenty_jobs_each_run_once(start_server, postgres, tmp_path):
    shared = tmp_path / "shared"  # one results folder, as shared storage would give several machines
    first = start_server("--db", postgres, "--name", "first", root=shared)
    second = start_server("--db", postgres, "--name", "second", root=shared)
    clients = [httpx.Client(base_url=s.url, timeout=HANG_GUARD_S) for s in (first, second)]
    ids = [clients[i % 2].post("/v1/generations", json=SMALL | {"seed": i}).json()["id"] for i in range(20)]
    views = wait_finished(clients[0], ids)
    assert all(views[job_id]["status"] == "done" for job_id in ids)
    assert all(views[job_id]["attempts"] == 1 for job_id in ids)
    assert written_results(first.log_text(), second.log_text()) == Counter(dict.fromkeys(ids, 1))
    store = JobStore(database_url(postgres, tmp_path))
    workers = Counter(store.get(job_id).worker for job_id in ids)
    assert store.counts()[DONE] == 20
    store.close()
    assert set(workers) == {"first/cpu", "second/cpu"}, workers  # both servers ran jobs
    # Either server answers for any job.
    assert clients[1].get(f"/v1/generations/{ids[0]}").json()["status"] == "done"
