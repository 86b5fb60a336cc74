"""Seeded renderer of the toy world: frames, caption, centroid track, inpaint masks and a Canny control video.

A clip is one filled shape on black moving in a straight line at constant speed, fully inside
the frame at all times. Edges are anti-aliased by supersampling each pixel 4x4 (the coverage
scales the colour), so a shape moves by sub-pixel amounts smoothly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .world import (
    BASE_SIZE,
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    DIRECTIONS,
    PALETTE,
    SHAPE_SIZE_RANGE,
    SPEED_RANGE,
    VIDEO_TEMPLATES,
    ClipSpec,
    caption,
    parse_caption,
)

SUPERSAMPLE = 4  # sub-pixels per pixel side for anti-aliasing
MARGIN = 1.0  # pixels kept free between the shape and the frame border
CANNY_THRESHOLDS = (50, 150)  # low / high hysteresis thresholds of cv2.Canny on the grey frame
INPAINT_MASKS = ("i2v", "flf2v", "shape", "box")
SQRT3 = math.sqrt(3.0)


@dataclass
class Clip:
    """A rendered clip and everything derived from it.

    ``frames``: uint8 ``(F, H, W, 3)``; ``track``: the shape's centroid ``(x, y)`` per frame,
    float ``(F, 2)``; ``coverage``: the fraction of each pixel the shape covers, float32
    ``(F, H, W)``; ``masks``: generate masks (255 = generate, 0 = known, the convention of
    ``--mask`` videos) uint8 ``(F, H, W)`` by kind (see :func:`inpaint_masks`); ``control``: the
    Canny edge map of every frame, uint8 ``(F, H, W, 3)``; ``spec``: the spec with every drawn
    value filled in.
    """

    spec: ClipSpec
    caption: str
    frames: np.ndarray
    track: np.ndarray
    coverage: np.ndarray
    masks: dict[str, np.ndarray] = field(repr=False)
    control: np.ndarray = field(repr=False)
    seed: int = 0

    def mask_video(self, kind: str) -> np.ndarray:
        """A generate mask as the frames of a mask video: uint8 ``(F, H, W, 3)``, white = generate."""
        if kind not in self.masks:
            raise ValueError(f"unknown mask kind {kind!r}: choose one of {', '.join(self.masks)}")
        return np.repeat(self.masks[kind][..., None], 3, axis=-1)

    def attributes(self) -> dict:
        """Ground truth of the clip as plain JSON values (what the dataset sidecar stores)."""
        return {
            "prompt": self.caption,
            **self.spec.attributes(),
            "held_out": self.spec.held_out,
            "extent": self.spec.extent,
            "speed": self.spec.speed,
            "start": list(self.spec.start),
            "seed": self.seed,
            "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]),
            "num_frames": int(self.frames.shape[0]),
            "track": np.round(self.track, 3).tolist(),
        }


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of a size given as one int (square) or a pair; at least 8x8."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 8 or width < 8:
        raise ValueError(f"frame size must be at least 8x8, got {height}x{width}")
    return int(height), int(width)


def half_extents(shape: str, extent: float) -> tuple[float, float, float, float]:
    """Distances from the centroid to the shape's left, right, top and bottom edges."""
    if shape == "circle":
        return extent, extent, extent, extent
    if shape == "square":
        return extent / 2, extent / 2, extent / 2, extent / 2
    height = extent * SQRT3 / 2  # upright equilateral triangle: the centroid is 2/3 of the height below the apex
    return extent / 2, extent / 2, 2 * height / 3, height / 3


def _room(shape: str, extent: float, direction: str, size: tuple[int, int]) -> float:
    """How far the shape can travel along its direction without leaving the frame (minus the margins)."""
    left, right, top, bottom = half_extents(shape, extent)
    height, width = size
    along_x = DIRECTIONS[direction][0] != 0
    return (width - left - right if along_x else height - top - bottom) - 2 * MARGIN


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else float(low)


def resolve_spec(spec: ClipSpec, size: tuple[int, int], frames: int, rng: np.random.Generator) -> ClipSpec:
    """Fill the spec's open fields (extent, speed, start) with draws that keep the shape inside the frame.

    Extent and speed scale with ``min(H, W) / 64``. When the largest extent or speed cannot fit the
    whole path, the drawn range is narrowed to what fits; when not even the smallest extent at the
    lowest speed fits, a ``ValueError`` says which frame count would.
    """
    scale = min(size) / BASE_SIZE
    steps = max(frames - 1, 0)
    lo_speed, hi_speed = SPEED_RANGE[0] * scale, SPEED_RANGE[1] * scale
    lo_ext, hi_ext = (value * scale for value in SHAPE_SIZE_RANGE[spec.shape])

    extent = spec.extent * scale if spec.extent is not None else None
    if extent is None:
        # Largest extent that still leaves room for the slowest motion (room shrinks linearly with extent).
        need = lo_speed * steps if spec.speed is None else spec.speed * scale * steps
        room_lo = _room(spec.shape, lo_ext, spec.direction, size)
        if room_lo < need:
            speed = lo_speed if spec.speed is None else spec.speed * scale
            longest = int(room_lo // speed) + 1 if speed > 0 else frames
            raise ValueError(
                f"a {spec.shape} moving {spec.direction} at {speed:.2f} px/frame does not fit {frames} frames in a "
                f"{size[0]}x{size[1]} frame; use at most {longest} frames or a larger frame"
            )
        per_px = room_lo - _room(spec.shape, lo_ext + 1.0, spec.direction, size)  # room lost per px of extent
        hi_fit = lo_ext + (room_lo - need) / per_px
        extent = _uniform(rng, lo_ext, min(hi_ext, hi_fit))

    room = _room(spec.shape, extent, spec.direction, size)
    if spec.speed is not None:
        speed = spec.speed * scale
    else:
        hi_fit = room / steps if steps else hi_speed
        if hi_fit < lo_speed:
            raise ValueError(
                f"a {spec.shape} of extent {extent:.1f} moving {spec.direction} does not fit {frames} frames"
            )
        speed = _uniform(rng, lo_speed, min(hi_speed, hi_fit))
    if speed * steps > room + 1e-6:
        raise ValueError(
            f"the path of a {spec.shape} of extent {extent:.1f} at {speed:.2f} px/frame over {frames} frames "
            f"({speed * steps:.1f} px) is longer than the {room:.1f} px the frame leaves"
        )

    start = spec.start if spec.start is not None else _draw_start(spec, extent, speed * steps, size, rng)
    return replace(spec, extent=extent / scale, speed=speed / scale, start=(float(start[0]), float(start[1])))


def _draw_start(
    spec: ClipSpec, extent: float, travel: float, size: tuple[int, int], rng: np.random.Generator
) -> tuple[float, float]:
    """A uniformly drawn first centroid such that the whole path stays inside the frame."""
    left, right, top, bottom = half_extents(spec.shape, extent)
    height, width = size
    dx, dy = DIRECTIONS[spec.direction]
    # The path covers [start, start + travel * d]; keep both ends inside [margin + half, size - margin - half].
    x_lo, x_hi = MARGIN + left + max(0.0, -dx * travel), width - MARGIN - right - max(0.0, dx * travel)
    y_lo, y_hi = MARGIN + top + max(0.0, -dy * travel), height - MARGIN - bottom - max(0.0, dy * travel)
    return _uniform(rng, x_lo, x_hi), _uniform(rng, y_lo, y_hi)


def _coverage(shape: str, extent: float, track: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fraction of every pixel inside the shape, per frame: float32 ``(F, H, W)``."""
    height, width = size
    s = SUPERSAMPLE
    ys = (np.arange(height * s, dtype=np.float32) + 0.5) / s  # sub-pixel centres, in pixel units
    xs = (np.arange(width * s, dtype=np.float32) + 0.5) / s
    x = xs[None, None, :] - track[:, 0, None, None].astype(np.float32)  # (F, 1, W*s), relative to the centroid
    y = ys[None, :, None] - track[:, 1, None, None].astype(np.float32)  # (F, H*s, 1)
    if shape == "circle":
        inside = x**2 + y**2 <= extent**2
    elif shape == "square":
        inside = (np.abs(x) <= extent / 2) & (np.abs(y) <= extent / 2)
    else:
        tri_h = extent * SQRT3 / 2
        depth = y + 2 * tri_h / 3  # distance below the apex
        inside = (depth >= 0) & (depth <= tri_h) & (np.abs(x) <= depth / SQRT3)  # half-width grows by 1/sqrt(3)
    inside = np.broadcast_to(inside, (len(track), height * s, width * s))
    return inside.reshape(len(track), height, s, width, s).mean(axis=(2, 4), dtype=np.float32)  # (F, H, W)


def canny_control(frames: np.ndarray, thresholds: tuple[int, int] = CANNY_THRESHOLDS) -> np.ndarray:
    """Edge map of every frame with OpenCV's Canny on the grey image: uint8 ``(F, H, W, 3)`` (white edges)."""
    import cv2  # imported here: only control videos need OpenCV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    edges = [cv2.Canny(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), *thresholds) for f in frames]
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)  # (F, H, W, 3)


def inpaint_masks(coverage: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The generate masks (255 = generate) of a clip, uint8 ``(F, H, W)`` each.

    ``i2v``: all but the first frame; ``flf2v``: all but the first and the last; ``shape``: the
    shape's silhouette grown by 2 px in every frame (object inpainting); ``box``: one random
    box covering 1/4 to 1/2 of each side, the same in every frame.
    """
    import cv2

    num_frames, height, width = coverage.shape
    full = np.full((num_frames, height, width), 255, np.uint8)
    i2v, flf2v = full.copy(), full.copy()
    i2v[0] = 0
    flf2v[[0, -1]] = 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    silhouette = np.stack([cv2.dilate((c > 0).astype(np.uint8) * 255, kernel) for c in coverage])
    box = np.zeros_like(full)
    box_h, box_w = int(rng.integers(height // 4, height // 2 + 1)), int(rng.integers(width // 4, width // 2 + 1))
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    box[:, top : top + box_h, left : left + box_w] = 255
    return {"i2v": i2v, "flf2v": flf2v, "shape": silhouette, "box": box}


def render_clip(
    spec: ClipSpec | str,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    seed: int = 0,
    template: int | None = None,
) -> Clip:
    """Render one clip of the toy world; the same arguments always give the same clip.

    ``spec`` is a :class:`ClipSpec` or a caption such as ``"a red circle moving right"``;
    ``size`` is ``(height, width)`` or one int for a square frame. The seed draws the spec's open
    fields, the caption paraphrase (unless ``template`` picks one) and the random inpaint box.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    size = as_size(size)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    spec = resolve_spec(spec, size, frames, rng)
    scale = min(size) / BASE_SIZE

    direction = np.asarray(DIRECTIONS[spec.direction], dtype=np.float64)
    steps = np.arange(frames, dtype=np.float64)[:, None]
    track = np.asarray(spec.start)[None] + steps * spec.speed * scale * direction[None]  # (F, 2) as (x, y)
    coverage = _coverage(spec.shape, spec.extent * scale, track, size)  # (F, H, W)
    colour = np.asarray(PALETTE[spec.colour], dtype=np.float32)
    pixels = np.rint(coverage[..., None] * colour).astype(np.uint8)  # (F, H, W, 3)

    paraphrase = int(rng.integers(len(VIDEO_TEMPLATES))) if template is None else template
    return Clip(
        spec=spec,
        caption=caption(spec, paraphrase),
        frames=pixels,
        track=track,
        coverage=coverage,
        masks=inpaint_masks(coverage, rng),
        control=canny_control(pixels),
        seed=seed,
    )
