"""The real launch: ``torchrun --nproc-per-node=2 examples/wan2.1_fun/predict_t2v.py --ulysses-degree 2``.

The example goes through ``videox-fun generate``'s code; only rank 0 writes, and its video equals
the one a single process writes. A layout that does not fill the world stops every rank at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from parallel_harness import PROMPT

from videox_fun.io.video import read_video
from videox_fun.models.wan.tiny import build_tiny_model_folder

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "wan2.1_fun" / "predict_t2v.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def example_args(folder: Path, output: Path) -> list[str]:
    """A 2-step 32x48x9 run of the tiny t2v model on the CPU."""
    return [
        str(EXAMPLE),
        *("--model", str(folder), "--prompt", PROMPT, "--height", "32", "--width", "48"),
        *("--frames", "9", "--steps", "2", "--device", "cpu", "--output", str(output)),
    ]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run with this checkout's package first on the path (whatever the environment has installed)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("launch") / "t2v", "t2v")


@pytest.mark.slow
def test_torchrun_ulysses_writes_the_single_process_video_once(folder, tmp_path):
    single = run([sys.executable, *example_args(folder, tmp_path / "single.mp4")], tmp_path)
    assert single.returncode == 0, single.stderr
    parallel = run([*TORCHRUN, *example_args(folder, tmp_path / "parallel.mp4"), "--ulysses-degree", "2"], tmp_path)
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count("wrote ") == 1, parallel.stdout  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel.json", "parallel.mp4", "single.json", "single.mp4"]
    a, b = read_video(tmp_path / "single.mp4"), read_video(tmp_path / "parallel.mp4")
    assert a.shape == b.shape == (9, 32, 48, 3)
    assert (a.int() - b.int()).abs().max() <= 1, "the parallel video differs from the single-process one"


@pytest.mark.slow
def test_torchrun_mismatched_degrees_stop_every_rank(folder, tmp_path):
    layout = ["--ulysses-degree", "2", "--ring-degree", "2"]
    result = run([*TORCHRUN, *example_args(folder, tmp_path / "x.mp4"), *layout], tmp_path)
    assert result.returncode != 0
    message = "ulysses-degree 2 x ring-degree 2 = 4 processes, but the world size is 2"
    assert result.stderr.count(message) == 2, result.stderr  # one per rank
    assert not (tmp_path / "x.mp4").exists()
