"""The core install (no extras): `videox-fun generate` must not import the service's or the UI's packages.

ComfyUI users install the project into ComfyUI's venv without extras; an import of fastapi while the parser is
built made every command fail there. The extras' packages are blocked in a subprocess (None in sys.modules makes
their import raise), and a real generate runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXTRAS = ("fastapi", "uvicorn", "sqlalchemy", "multipart", "psycopg", "gradio")
SCRIPT = """
import sys
for name in {extras!r}:
    sys.modules[name] = None
from videox_fun.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_generate_runs_without_the_serve_and_ui_extras(tmp_path: Path) -> None:
    """`videox-fun generate` writes its image with fastapi, uvicorn, SQLAlchemy and gradio unimportable."""
    output = tmp_path / "out.png"
    args = ["generate", "--model", "Z-Image-Tiny-Random", "--prompt", "a red circle", "--steps", "2"]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(extras=EXTRAS), *args, "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.is_file() and output.stat().st_size > 0
