"""Small deterministic datasets for tests: moving coloured squares as mp4 / png plus a metadata file.

Mixed sizes and lengths exercise bucketing; corrupt and missing files exercise the bad-file
handling; control videos (the square's outline, white on black) stand in for Canny edges.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...io.video import write_image, write_video

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
META_FORMATS = ("json", "jsonl", "csv")


def render_square(
    size: tuple[int, int], num_frames: int, colour: str, direction: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A square moving one pixel-ish step per frame: frames and outline control, uint8 ``(F, H, W, 3)`` each."""
    height, width = size
    side = max(4, min(height, width) // 4)
    dy, dx = DIRECTIONS[direction]
    step = max(1, min(height, width) // 16)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    control = np.zeros_like(frames)
    for t in range(num_frames):
        y = int(np.clip(top + dy * step * t, 0, height - side))  # stops at the border
        x = int(np.clip(left + dx * step * t, 0, width - side))
        frames[t, y : y + side, x : x + side] = COLOURS[colour]
        control[t, y : y + side, x : x + side] = 255
        control[t, y + 1 : y + side - 1, x + 1 : x + side - 1] = 0  # keep the 1-px outline only
    return frames, control


def _write_meta(entries: list[dict], path: Path, meta_format: str) -> None:
    if meta_format == "json":
        path.write_text(json.dumps(entries, indent=2))
    elif meta_format == "jsonl":
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        columns = list(dict.fromkeys(k for e in entries for k in e))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(entries)


def write_test_dataset(
    folder: str | os.PathLike,
    n_videos: int = 4,
    sizes: Sequence[tuple[int, int]] = ((64, 64),),
    lengths: Sequence[int] = (17,),
    with_control: bool = False,
    n_images: int = 0,
    corrupt: int = 0,
    missing: int = 0,
    meta_format: str = "json",
    seed: int = 0,
    fps: int = 8,
) -> Path:
    """Write a dataset under ``folder`` and return its metadata file (paths in it are relative to ``folder``).

    Video ``i`` has size ``sizes[i % len(sizes)]`` and ``lengths[i % len(lengths)]`` frames; images
    take the sizes after the videos'. ``corrupt`` entries point at files of random bytes, ``missing``
    entries at files that do not exist (they come last). The same arguments write the same files.
    """
    if meta_format not in META_FORMATS:
        raise ValueError(f"meta_format must be one of {META_FORMATS}, got {meta_format!r}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    names = [(c, d) for d in DIRECTIONS for c in COLOURS]
    entries: list[dict] = []
    for i in range(n_videos + n_images):
        colour, direction = names[i % len(names)]
        is_video = i < n_videos
        frames, control = render_square(
            tuple(sizes[i % len(sizes)]), lengths[i % len(lengths)] if is_video else 1, colour, direction, rng
        )
        name = f"videos/{i:08d}.mp4" if is_video else f"images/{i:08d}.png"
        entry = {"file_path": name, "text": f"a {colour} square moving {direction}", "type": "video"}
        if is_video:
            write_video(frames, folder / name, fps=fps)
        else:
            write_image(frames[0], folder / name)
            entry.update(text=f"a {colour} square", type="image")
        if with_control:
            entry["control_file_path"] = f"control/{name}"
            if is_video:
                write_video(control, folder / entry["control_file_path"], fps=fps)
            else:
                write_image(control[0], folder / entry["control_file_path"])
        entries.append(entry)
    for k in range(corrupt):
        name = f"videos/corrupt_{k:02d}.mp4"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
        entries.append({"file_path": name, "text": "a corrupt video", "type": "video"})
    for k in range(missing):
        entries.append({"file_path": f"videos/missing_{k:02d}.mp4", "text": "a missing video", "type": "video"})
    if with_control:  # bad entries still name a control file, so control modes accept the metadata
        for entry in entries[n_videos + n_images :]:
            entry["control_file_path"] = f"control/{entry['file_path']}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / f"metadata.{meta_format}"
    _write_meta(entries, meta, meta_format)
    return meta
