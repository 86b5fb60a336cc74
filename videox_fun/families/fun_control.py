"""What the image families with VideoX-Fun's Fun control files (Z-Image, FLUX.2, Qwen-Image) share at the family
layer: the two modes, the two settings (``--control-path``, ``--control-context-scale``) and the one-line check of a
control file from its header before any weight is read.

``control`` follows a control image (canny / depth / pose, any RGB image); ``control_inpaint`` regenerates the white
of a mask in an image with a file whose context reads the mask and the masked image (following a control image when
given). Both start from noise. The file comes per request or from the folder config (``control_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..argparsing import finite_float
from . import Mode, Setting

CONTROL_MODES = ("control", "control_inpaint")
CONTROL_MODE_TABLE = {
    "control": Mode("control", needs=("control_video",), folder="images_control", output="image",
                    description="follow a control image (canny / depth / pose) with a Fun control file"),
    "control_inpaint": Mode("control_inpaint", needs=("image", "mask"), allows=("control_video",),
                            folder="images_inpaint_control", output="image",
                            description="regenerate the white of --mask in --image with a Fun control file that "
                                        "reads a mask (following --control-video when given)"),
}  # fmt: skip
CONTROL_SOURCE = "--control-path, or control_path in the folder's videox_fun.yaml"
# (release name, whether it reads a mask and the masked image) of a control file, from its header alone.
ReleaseReader = Callable[[Path], tuple[str, bool]]


def control_file_check(read: ReleaseReader, inpaint_file: str) -> Callable[[object, str], None]:
    """The ``--control-path`` check of a family: one line on a control file that is missing or another model's
    (``read`` raises), or that reads no mask when asked to inpaint (``inpaint_file``: what would)."""

    def check(value: object, mode: str) -> None:
        name, inpaint = read(Path(str(value)))
        if mode == "control_inpaint" and not inpaint:
            raise ValueError(f"--control-path {value}: {name} reads a control image only; control_inpaint needs "
                             f"{inpaint_file}")  # fmt: skip

    return check


def control_settings(check: Callable[[object, str], None]) -> tuple[Setting, Setting]:
    """``--control-path`` (checked by ``check``) and ``--control-context-scale`` (the folder config's by default)."""
    return (
        Setting(
            "control_path",
            help="a Fun control file (VideoX-Fun's *-Fun-Controlnet-Union .safetensors) loaded into the control model",
            modes=CONTROL_MODES,
            check=check,
            kind="file",  # a path: the REST API and the web UI take it as an upload (they take no server paths)
        ),
        Setting(
            "control_context_scale",
            help="Fun control models: how strongly the control hints steer (default: the folder config's; the "
            "releases': 0.75 FLUX.2 and Z-Image-Turbo, 0.8 Qwen-Image)",
            type=finite_float,
            modes=CONTROL_MODES,
        ),
    )


def control_variant(variant: str, folder: Path, config: Any, read: ReleaseReader) -> str:
    """The folder's variant name, with its folder config's control file (``control_path``) named after it when it
    names one (its header checked: another base's file is one line before any weight is read)."""
    if not config.control_path:
        return variant
    return f"{variant} + {read(folder / config.control_path)[0]}"


def side_release_reader(module: str, cls: str) -> ReleaseReader:
    """The :data:`ReleaseReader` of a side-stream control class (``module:cls``, imported when first read: the
    family layer imports no torch)."""

    def read(path: Path) -> tuple[str, bool]:
        import importlib

        release = getattr(importlib.import_module(module), cls).read_release(path)
        return release.name, release.inpaint

    return read
