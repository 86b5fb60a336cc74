"""``videox-fun serve`` (or ``ui``) in a subprocess: started, waited for, killed or stopped (tests and benchmarks)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def ephemeral_port_floor() -> int:
    """The lowest port of the kernel's ephemeral range (what ``bind(0)`` and outgoing connections take); 32768 when
    unknown (Linux's default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (for a server or a process group's rendezvous).

    Drawn at random below the ephemeral range: a port that ``bind(0)`` hands out is one the kernel gives the next
    outgoing connection or ``bind(0)`` of any process, so on a machine running other work (another test suite) it
    was taken between this check and the server's own bind (a PostgreSQL start failed so under load).
    """
    floor = ephemeral_port_floor()
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(10000, floor) if floor > 11000 else draw.randrange(1024, 65536)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server on loopback in a subprocess, its output in a log file beside its store folder."""

    def __init__(
        self,
        root: Path,
        *args: str,
        port: int,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        command: str = "serve",
        ready_path: str = "/healthz",
    ) -> None:
        self.root = root
        self.command = command  # serve, or ui (the web UI with its own service)
        self.ready_path = ready_path  # answers 200 once the server is up (a remote-service UI has no /healthz)
        self.args = list(args)
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600) -> ServerProcess:
        """Start the server and wait until its ready path answers (raises with its log if it exits or hangs).

        ``timeout_s`` only catches a hang: importing torch and the pipelines took over 120 s on a 2-core machine
        shared with another CPU-heavy job.
        """
        self.root.parent.mkdir(parents=True, exist_ok=True)
        log = self.root.parent / f"{self.root.name}-server-{self.port}-{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "videox_fun.cli", self.command, "--port", str(self.port),
                   "--root", str(self.root), *self.args]  # fmt: skip
        with log.open("w") as output:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer in {timeout_s} s:\n{self.log_text()}")

    def log_text(self) -> str:
        """Everything this server's runs printed."""
        return "\n".join(log.read_text() for log in self.logs if log.exists())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_finished(client: httpx.Client, job_ids: list[str], timeout_s: float = 600, poll_s: float = 0.1) -> dict:
    """Poll until every job is done, failed or cancelled; returns their views by id."""
    deadline = time.monotonic() + timeout_s
    views: dict[str, dict] = {}
    while time.monotonic() < deadline:
        views = {job_id: client.get(f"/v1/generations/{job_id}").json() for job_id in job_ids}
        if all(view["status"] in ("done", "failed", "cancelled") for view in views.values()):
            return views
        time.sleep(poll_s)
    raise TimeoutError(f"jobs not finished in {timeout_s} s: {[v['status'] for v in views.values()]}")
