"""The service's overhead: the same jobs through the REST API and through the CLI in one process.

Each round runs ``jobs`` videos of the default tiny model (distinct seeds) twice, interleaved:
once as one ``videox-fun generate --prompts-file`` process (one load, then the videos), once
posted all at once to a fresh ``videox-fun serve`` (one load by its worker, then the videos),
timed from the first POST until the last job is done. Both are fresh processes with the same
thread count, so both pay start-up and one model load. The ratio API / CLI is the overhead
(goal <= 1.10). Then, on the warm server, the latency from a POST to its first progress event and
to its first denoising step, read from the events stream as a client would.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPT = "a red circle moving right"


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def cli_run(folder: Path, jobs: int, threads: int) -> float:
    """Seconds for one ``generate --prompts-file`` process making ``jobs`` videos."""
    prompts = folder / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n" * jobs)
    command = [sys.executable, "-m", "videox_fun.cli", "generate", "--prompts-file", str(prompts), "--seed", "0",
               "--output-dir", str(folder / "cli"), "--quiet", "--device", "cpu"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_env(threads))
    return time.perf_counter() - started


def api_run(folder: Path, jobs: int, threads: int) -> tuple[float, dict[str, float]]:
    """Seconds from starting a server to its last of ``jobs`` results, then the warm server's latencies."""
    from ..serve.process import ServerProcess, free_port, wait_finished

    started = time.perf_counter()
    server = ServerProcess(folder / "store", "--device", "cpu", port=free_port(), env=_env(threads)).start()
    try:
        client = httpx.Client(base_url=server.url, timeout=120)
        ids = [
            client.post("/v1/generations", json={"prompt": PROMPT, "seed": seed}).json()["id"] for seed in range(jobs)
        ]
        wait_finished(client, ids[-1:], poll_s=0.05)  # jobs run in order: polling the last one costs the server least
        elapsed = time.perf_counter() - started
        views = wait_finished(client, ids)
        if any(view["status"] != "done" for view in views.values()):
            raise RuntimeError(f"jobs failed: {[view['error'] for view in views.values()]}")
        latency = first_event_latency(client)
    finally:
        server.stop()
    return elapsed, latency


def first_event_latency(client: httpx.Client) -> dict[str, float]:
    """On an idle warm server: seconds from a POST to its first progress event and to its first step."""
    started = time.perf_counter()
    job_id = client.post("/v1/generations", json={"prompt": PROMPT, "seed": 99}).json()["id"]
    posted = time.perf_counter()
    first_event = first_step = None
    with client.stream("GET", f"/v1/generations/{job_id}/events") as events:
        for line in events.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            first_event = first_event or now
            view = json.loads(line[6:])
            if view.get("progress", {}).get("step", 0) >= 1:
                first_step = now
                break
    return {
        "post_answer_s": posted - started,
        "post_to_first_event_s": (first_event or posted) - started,
        "post_to_first_step_event_s": (first_step or posted) - started,
    }


def run(repeats: int = 3, jobs: int = 12, threads: int = 1) -> dict:
    """``repeats`` interleaved rounds of the CLI and the API, ``jobs`` videos each."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the report
    cli, api, latencies = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as scratch:
            cli.append(cli_run(Path(scratch), jobs, threads))
        with tempfile.TemporaryDirectory() as scratch:
            elapsed, latency = api_run(Path(scratch), jobs, threads)
            api.append(elapsed)
            latencies.append(latency)
    cli_s, api_s = statistics.median(cli), statistics.median(api)
    return {
        "benchmark": "serve",
        "what": f"{jobs} default videos of the default tiny model: one generate --prompts-file process vs a fresh "
        "server given all jobs at once (both include start-up and one model load)",
        "threads": threads,
        "cli_s": cli,
        "api_s": api,
        "cli_jobs_per_min": 60 * jobs / cli_s,
        "api_jobs_per_min": 60 * jobs / api_s,
        "overhead_ratio_api_over_cli": api_s / cli_s,  # of the medians
        "overhead_ratio_of_minimums": min(api) / min(cli),  # the least disturbed runs of each (shared machines)
        "goal_overhead_ratio": 1.10,
        "latency": {key: statistics.median(lat[key] for lat in latencies) for key in latencies[0]},
        "latency_runs": latencies,
    }
