"""Checks of the input files a request names (images, videos, masks, camera trajectories): they exist, are regular
files (or folders of images) and decode, before any model loads."""

from __future__ import annotations

from pathlib import Path

from .camera import TRAJECTORIES, is_trajectory_name, read_camera_trajectory
from .files import printable, why_missing
from .video import read_video


def check_input_file(name: str, value: object) -> None:
    """A given input that is a path must exist and be readable as far as shows it is usable."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, Path)) for v in value):
        for one in value:  # several files of one input (VACE subject images)
            check_input_file(name, one)
        return
    if not isinstance(value, (str, Path)):
        return  # tensors and arrays are the caller's
    if name == "camera" and is_trajectory_name(str(value)):
        return  # a built-in trajectory (pan_left, zoom_in...), not a file
    flag, path = f"--{name.replace('_', '-')}", Path(value)
    if not path.exists():
        if name == "camera" and not path.is_symlink():
            raise FileNotFoundError(
                f"{flag} {printable(value)}: neither a trajectory file nor a built-in trajectory "
                f"(built-in trajectories: {', '.join(TRAJECTORIES)})"
            )
        raise FileNotFoundError(f"{flag}: {printable(value)}: {why_missing(path)}")
    if not (path.is_file() or path.is_dir()):  # reading a FIFO or a device would wait for ever
        raise ValueError(f"{flag} {printable(value)}: not a regular file (nor a folder of images)")
    try:
        if name == "camera":
            read_camera_trajectory(path)
        else:
            read_video(path, num_frames=1)  # a medium's first frame: undecodable files fail before loading
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {printable(value)}: not UTF-8 text") from None
    except ValueError as err:  # VideoReadError and malformed trajectories
        raise ValueError(f"{flag}: {err}") from err
