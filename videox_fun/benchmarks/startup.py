"""One default video from a fresh process, as a user types it: the time including start-up.

Each run is a new ``videox-fun generate --prompt ...`` process (Python start, imports, model
load, sampling, mp4 write), timed from outside like the shell's ``time``. The median of the
runs is the figure; the model is whatever the CLI picks with no ``--model``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle moving right"


def _command(output: Path) -> list[str]:
    # The installed console script when there is one (what users run), else the same entry point.
    script = shutil.which("videox-fun")
    entry = "import sys; from videox_fun.cli import main; sys.exit(main())"
    base = [script] if script else [sys.executable, "-c", entry]
    return [*base, "generate", "--prompt", PROMPT, "--output", str(output), "--quiet"]


def run(repeats: int = 5) -> dict:
    """Time ``repeats`` fresh ``generate`` processes; the first one also warms the OS file cache."""
    walls = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(repeats):
            output = Path(folder) / f"{index}.mp4"
            started = time.perf_counter()
            subprocess.run(_command(output), check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
    return {
        "command": f'videox-fun generate --prompt "{PROMPT}"',
        "wall_s": walls,
        "wall_s_median": statistics.median(walls),
        "goal_s": 10.0,
    }
