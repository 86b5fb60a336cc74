"""Fixtures of the service tests: the real server (``videox-fun serve`` on uvicorn, loopback) in a
subprocess, a real PostgreSQL server in a temporary folder, and small input media."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import free_port

from videox_fun.io.video import write_video

REPO = Path(__file__).resolve().parents[2]


class Server:
    """``videox-fun serve`` in a subprocess: start, wait until it answers, kill or stop it."""

    def __init__(self, root: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.args = list(args)
        self.port = port or free_port()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> Server:
        """Start the server and wait until ``/healthz`` answers."""
        log = self.root.parent / f"{self.root.name}-server-{self.port}-{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "videox_fun.cli", "serve", "--port", str(self.port), "--root", str(self.root),
                   "--device", "cpu", *self.args]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout_s} s:\n{self.log_text()}")

    def log_text(self) -> str:
        """Everything the server's runs printed."""
        return "\n".join(log.read_text() for log in self.logs if log.exists())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then wait (SIGKILL after 20 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """A factory of started servers (stopped after the test)."""
    servers: list[Server] = []

    def start(*args: str, root: Path | None = None, **kwargs: object) -> Server:
        server = Server(root or tmp_path / "store", *args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def wait_finished(client: httpx.Client, job_ids: list[str], timeout_s: float = 600) -> dict[str, dict]:
    """Poll until every job is done, failed or cancelled; returns their views."""
    deadline = time.monotonic() + timeout_s
    views: dict[str, dict] = {}
    while time.monotonic() < deadline:
        views = {job_id: client.get(f"/v1/generations/{job_id}").json() for job_id in job_ids}
        if all(view["status"] in ("done", "failed", "cancelled") for view in views.values()):
            return views
        time.sleep(0.3)
    raise AssertionError(f"jobs not finished in {timeout_s} s: {[v['status'] for v in views.values()]}")


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A start image, a video of a moving square, a mask video and a control video, 64x64, 17 frames."""
    folder = tmp_path_factory.mktemp("media")
    frames = np.zeros((17, 64, 64, 3), np.uint8)
    for i in range(17):
        frames[i, 24:40, 4 + 2 * i : 20 + 2 * i] = (220, 40, 40)
    mask = np.zeros_like(frames)
    mask[:, 16:48, 16:48] = 255
    edges = np.zeros_like(frames)
    edges[:, ::8] = 255
    return {
        "image": write_video(frames[:1], folder / "start.png"),
        "video": write_video(frames, folder / "video.mp4"),
        "mask": write_video(mask, folder / "mask.mp4"),
        "control_video": write_video(edges, folder / "control.mp4"),
    }


def find_postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), if installed."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server in a temporary folder (as the ``postgres`` user when run as root); its URL."""
    binaries = find_postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    folder = Path(tempfile_dir()) / f"videox-fun-pg-{os.getpid()}-{free_port()}"
    folder.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, cwd=folder)

    run(str(binaries / "initdb"), "-D", str(data), "-U", "videox", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w", "start")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "videox", "jobs")
        yield f"postgresql://videox@127.0.0.1:{port}/jobs"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def tempfile_dir() -> str:
    """A temporary folder the postgres user can enter (pytest's own may sit under root's home)."""
    return "/tmp"
