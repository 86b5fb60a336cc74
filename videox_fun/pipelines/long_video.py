"""Videos longer than a model's window, as VideoX-Fun makes them: overlapping segments on an InP model.

The first segment is generated as asked (t2v or i2v). Every later one is an inpaint call whose
first ``overlap`` frames are the last frames made so far (known, black in the mask) and whose
other frames are generated; the overlapping frames are then cross-faded linearly, old into new.
Works for any pipeline whose model serves ``inpaint`` and takes uint8 frames as inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .common import GenerationOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """One window of a long video: its first frame's index in the whole video and its frame count."""

    start: int
    frames: int


def plan_segments(total: int, partial: int, overlap: int, valid: Callable[[int], int]) -> list[Segment]:
    """Windows of ``partial`` frames overlapping by ``overlap`` that cover ``total`` frames.

    ``valid`` turns a frame count into one the model takes (its frame rule); the last window is
    shortened to what is left (then made valid, which may run past ``total``: the result is cut).
    """
    if not 0 < overlap < partial:
        raise ValueError(f"overlap_video_length must be at least 1 and below partial_video_length, got {overlap}")
    if valid(partial) != partial:
        raise ValueError(f"partial_video_length {partial} is not a frame count this model takes (try {valid(partial)})")
    segments, start = [], 0
    while True:
        left = total - start  # always more than the overlap: the previous window ended before total
        frames = partial if left > partial else smallest_valid(left, valid)
        segments.append(Segment(start, frames))
        if start + frames >= total:
            return segments
        start += frames - overlap


def smallest_valid(frames: int, valid: Callable[[int], int]) -> int:
    """The smallest frame count of at least ``frames`` that the model takes."""
    while valid(frames) != frames:
        frames += 1
    return frames


def cross_fade(done: torch.Tensor, new: torch.Tensor, overlap: int) -> torch.Tensor:
    """``done`` (F, H, W, 3) uint8 followed by ``new``, their ``overlap`` shared frames blended linearly.

    Frame i of the overlap weighs the new segment by i / overlap, as VideoX-Fun's predict scripts.
    """
    ratio = torch.arange(overlap, dtype=torch.float32)[:, None, None, None] / overlap  # (overlap, 1, 1, 1)
    blended = done[-overlap:].float() * (1 - ratio) + new[:overlap].float() * ratio
    return torch.cat([done[:-overlap], blended.round().to(torch.uint8), new[overlap:]])


def continuation_inputs(tail: torch.Tensor, frames: int) -> dict[str, torch.Tensor]:
    """An inpaint call's video and mask (F, H, W, 3) uint8: ``tail`` known at the start, the rest generated."""
    known, height, width = tail.shape[0], tail.shape[1], tail.shape[2]
    video = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    video[:known] = tail
    mask = torch.full((frames, height, width, 3), 255, dtype=torch.uint8)  # white = generate
    mask[:known] = 0
    return {"video": video, "mask": mask}


def generate_long_video(
    run: Callable[..., GenerationOutput],
    total: int,
    partial: int,
    overlap: int,
    valid: Callable[[int], int],
    first_inputs: dict,
    seed: int,
) -> GenerationOutput:
    """A ``total``-frame video from windows of ``partial`` frames overlapping by ``overlap``.

    ``run(mode=..., num_frames=..., seed=..., **inputs)`` generates one window (the pipeline with the
    request's other settings bound); ``first_inputs`` (start / end image, or none) go to the first.
    Each window takes its own seed (``seed + index``), so windows do not repeat each other's noise.
    """
    segments = plan_segments(total, partial, overlap, valid)
    logger.info("long video: %d frames in %d windows of up to %d (overlap %d)", total, len(segments), partial, overlap)
    done: torch.Tensor | None = None
    output = None
    for index, segment in enumerate(segments):
        if done is None:
            mode = "i2v" if first_inputs.get("image") is not None else "t2v"
            output = run(mode=mode, num_frames=segment.frames, seed=seed, **first_inputs)
            done = output.frames
        else:
            inputs = continuation_inputs(done[-overlap:], segment.frames)
            output = run(mode="inpaint", num_frames=segment.frames, seed=seed + index, **inputs)
            done = cross_fade(done, output.frames, overlap)
    assert output is not None and done is not None
    settings = {
        **output.settings,
        "mode": "t2v" if first_inputs.get("image") is None else "i2v",
        "num_frames": total,
        "seed": seed,
        "partial_video_length": partial,
        "overlap_video_length": overlap,
        "segments": len(segments),
    }
    return GenerationOutput(frames=done[:total], latents=output.latents, settings=settings)
