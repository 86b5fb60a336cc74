"""Fixtures of the service tests: the real server (``videox-fun serve`` on uvicorn, loopback) in a
subprocess, a real PostgreSQL server in a temporary folder, and small input media."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from videox_fun.serve.process import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


class Server(ServerProcess):
    """The package's server process, on a free port, one torch thread, run from the repository."""

    def __init__(self, root: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> None:
        threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        super().__init__(root, "--device", "cpu", *args, port=port or free_port(), env=threads | (env or {}), cwd=REPO)


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
        if os.environ.get("VIDEOX_FUN_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (VIDEOX_FUN_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    folder = Path(tempfile_dir()) / f"videox-fun-pg-{os.getpid()}-{free_port()}"
    folder.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, cwd=folder)

    run(str(binaries / "initdb"), "-D", str(data), "-U", "videox", "--auth=trust", "-E", "UTF8")
    port = start_postgres(binaries, data, folder, run)
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "videox", "jobs")
        yield f"postgresql://videox@127.0.0.1:{port}/jobs"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def start_postgres(binaries: Path, data: Path, folder: Path, run: Callable[..., None], attempts: int = 5) -> int:
    """Start the server of ``data`` on a free port; returns the port. A port that another process took between
    the check and the server's bind (its log says so) is replaced by another, up to ``attempts`` times."""
    log = folder / "pg.log"

    def start(port: int) -> int:
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        return port

    for _ in range(attempts - 1):
        try:
            return start(free_port())
        except subprocess.CalledProcessError:
            if "could not bind" not in log.read_text():
                raise
    return start(free_port())


def tempfile_dir() -> str:
    """A temporary folder the postgres user can enter (pytest's own may sit under root's home)."""
    return "/tmp"
