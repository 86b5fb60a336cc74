"""Write toy-world clips as a training dataset in the standard VideoX-Fun layout.

``write_dataset(folder, n, seed, split)`` renders ``n`` clips and writes, relative to ``folder``::

    {split}/00000001.mp4             the clip (H.264)
    {split}/00000001.json            its ground truth (prompt, colour, shape, direction, track...)
    control/{split}/00000001.mp4     its Canny edge video
    masks/{kind}/{split}/00000001.mp4  its inpaint generate masks (only with masks=True)
    {split}/images/00000001.png      still images (only with images > 0), with their control images
    metadata_{split}.json            [{"file_path", "text", "type", "control_file_path", "height", "width"}, ...]

The metadata is the list the training data loader reads; the per-clip ``.json`` has the same
form as the sidecar ``videox-fun generate`` writes, so ``videox-fun eval toyworld`` judges a
dataset folder as it judges generated videos (the ground truth should score 100 %).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..io.files import atomic_path
from ..io.video import write_image, write_video
from .render import INPAINT_MASKS, Clip, as_size, render_clip, resolve_spec
from .world import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIZE, SPLITS, balanced_specs, caption, combinations

logger = logging.getLogger(__name__)


def clip_seed(seed: int, index: int) -> int:
    """The render seed of clip ``index`` of a dataset written with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_json(data: dict | list, path: Path) -> None:
    """Write JSON under a temporary name first, so a crash never leaves half a file under the real name."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2))


def _write_clip(clip: Clip, folder: Path, name: str, split: str, fps: int, masks: bool) -> dict:
    """Write one clip's video, control video, masks and sidecar; return its metadata entry."""
    video = f"{split}/{name}.mp4"
    control = f"control/{split}/{name}.mp4"
    write_video(clip.frames, folder / video, fps=fps)
    write_video(clip.control, folder / control, fps=fps)
    height, width = clip.frames.shape[1:3]
    entry = {"file_path": video, "text": clip.caption, "type": "video", "control_file_path": control}
    entry.update(height=int(height), width=int(width))
    if masks:
        entry["mask_file_paths"] = {}
        for kind in INPAINT_MASKS:
            mask = f"masks/{kind}/{split}/{name}.mp4"
            write_video(clip.mask_video(kind), folder / mask, fps=fps)
            entry["mask_file_paths"][kind] = mask
    _write_json({**clip.attributes(), "fps": fps}, (folder / video).with_suffix(".json"))
    return entry


def _write_image(clip: Clip, folder: Path, name: str, split: str) -> dict:
    """Write the first frame of a clip as a still image (with its edge image); return its metadata entry."""
    image = f"{split}/images/{name}.png"
    control = f"control/{split}/images/{name}.png"
    write_image(clip.frames[0], folder / image)
    write_image(clip.control[0], folder / control)
    text = caption(clip.spec, clip.seed, image=True)  # the seed picks the paraphrase
    height, width = clip.frames.shape[1:3]
    return {
        "file_path": image,
        "text": text,
        "type": "image",
        "control_file_path": control,
        "height": int(height),
        "width": int(width),
    }


def write_dataset(
    folder: str | os.PathLike,
    n: int,
    seed: int = 0,
    split: str = "train",
    size: int | tuple[int, int] = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    fps: int = DEFAULT_FPS,
    images: int = 0,
    masks: bool = False,
    progress: bool = True,
) -> Path:
    """Render ``n`` clips (and ``images`` stills) of a split into ``folder``; return the metadata file.

    ``split``: ``train`` (the held-out colour x shape pairs excluded), ``heldout`` (only those) or
    ``all``. Combinations are cycled in a seeded random order, so every one appears about
    ``n / len(split)`` times. The same arguments write the same clips. Existing files of the same
    split are overwritten.
    """
    from tqdm import tqdm

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if n < 0 or images < 0:
        raise ValueError(f"clip and image counts must be >= 0, got n={n}, images={images}")
    if n + images == 0:
        raise ValueError("nothing to write: n and images are both 0")
    for spec in combinations(split):  # fail before writing anything when some path cannot fit the frame
        resolve_spec(spec, as_size(size), frames, np.random.default_rng(0))
    folder = Path(folder)
    earlier = folder / f"metadata_{split}.json"
    if earlier.is_file():  # a rewrite: the metadata will list only the new clips
        logger.warning("%s already holds a %s split: its clips and %s are overwritten", folder, split, earlier.name)
    rng = np.random.default_rng(seed)
    metadata = []
    specs = balanced_specs(split, n, rng)
    for index, spec in enumerate(tqdm(specs, total=n, desc=f"rendering {split}", disable=not progress)):
        clip = render_clip(spec, size, frames, clip_seed(seed, index))
        metadata.append(_write_clip(clip, folder, f"{index + 1:08d}", split, fps, masks))
    still_specs = balanced_specs(split, images, rng)
    for index, spec in enumerate(tqdm(still_specs, total=images, desc="images", disable=not progress or not images)):
        clip = render_clip(spec, size, 1, clip_seed(seed, n + index))
        metadata.append(_write_image(clip, folder, f"{index + 1:08d}", split))
    path = folder / f"metadata_{split}.json"
    _write_json(metadata, path)
    return path
