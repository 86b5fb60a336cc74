"""Model-free judge of toy-world videos, read back from their files.

The rules (ARCHITECTURE.md, "The toy world"): the *foreground* is the pixels whose brightest
channel is above 80. We judge *the shape* as the largest 8-connected piece of the foreground
in each frame, so a stray speck elsewhere in a generated frame does not move its centroid or
stretch its bounding box.

- colour: the palette entry nearest (RGB distance) to the shape's mean colour over all frames;
- shape: the median over frames of the fill ratio of the shape in its bounding box (square
  near 1, circle near pi/4, triangle near 1/2), cut between those values, taken over the frames
  where the shape is fully inside (its bounding box off the frame's border: a shape the border
  clips fills more of its box, so a clipped triangle reads as a circle); over every frame that
  has the shape only when none is fully inside;
- direction: the dominant axis and sign of the centroid's travel from the first frames to the
  last, ``none`` when it is below 8 px;
- persistence: the share of frames in which the shape covers at least 30 px.

Plus, when given, the first frame's PSNR against an image (i2v) and the mean distance between
the shape's centroid and the centroid of the shape a control video outlines (control).

The thresholds suit frames of 48 px and more (rendered shapes of 10 px and more): in smaller
frames pixel rounding lifts a small triangle's fill ratio towards the circle's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io.video import VIDEO_SUFFIXES, read_image, read_video
from ..metrics import psnr
from .world import DIRECTIONS, PALETTE, ClipSpec, parse_caption

logger = logging.getLogger(__name__)

ATTRIBUTES = ("colour", "shape", "direction")
PSNR_CAP = 100.0  # dB reported for identical frames (JSON has no infinity)


@dataclass(frozen=True)
class Rules:
    """The evaluator's thresholds (pixels are of the judged video)."""

    foreground: int = 80  # brightest channel above this is foreground
    min_area: int = 30  # a frame "has the shape" when it covers at least this many pixels
    min_travel: float = 8.0  # centroid travel below this is direction "none"
    square_above: float = 0.89  # fill ratio above: square (1.0); between: circle (0.785)
    triangle_below: float = 0.66  # fill ratio below: triangle (0.5); small triangles measure up to ~0.6
    edge_frames: int = 3  # frames averaged at each end to measure the travel


DEFAULT_RULES = Rules()


# --------------------------------------------------------------------------------------------
# Measures of decoded frames
# --------------------------------------------------------------------------------------------


def foreground(frames: np.ndarray, rules: Rules = DEFAULT_RULES) -> np.ndarray:
    """Boolean ``(F, H, W)``: pixels whose brightest channel is above the threshold."""
    return np.asarray(frames).max(axis=-1) > rules.foreground


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a boolean ``(H, W)`` mask (all False when it is empty)."""
    import cv2  # OpenCV's labelling is exact and fast; numpy has no connected components

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # label 0 is the background
    return labels == biggest


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """Centroid ``(x, y)`` of a boolean ``(H, W)`` mask in continuous pixel coordinates (pixel i spans [i, i+1])."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def fill_ratio(mask: np.ndarray) -> float:
    """Share of the mask's bounding box that the mask fills (0 for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return 0.0
    return len(xs) / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))


def touches_border(mask: np.ndarray) -> bool:
    """Whether a boolean ``(H, W)`` mask has a pixel on the frame's outermost rows or columns."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def shape_fill_ratio(shapes: Sequence[np.ndarray]) -> float:
    """Median fill ratio of the shape masks, over those fully inside the frame when there are any."""
    inside = [m for m in shapes if not touches_border(m)]
    return float(np.median([fill_ratio(m) for m in inside or shapes]))


def nearest_colour(rgb: Sequence[float]) -> str:
    """The palette name nearest to an RGB triple."""
    names = list(PALETTE)
    table = np.asarray([PALETTE[name] for name in names], dtype=np.float64)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


def classify_fill(ratio: float, rules: Rules = DEFAULT_RULES) -> str:
    """Shape name of a fill ratio."""
    if ratio > rules.square_above:
        return "square"
    return "triangle" if ratio < rules.triangle_below else "circle"


def classify_travel(dx: float, dy: float, rules: Rules = DEFAULT_RULES) -> str:
    """Direction name of a centroid travel (image coordinates: y grows downwards), ``none`` if too short."""
    if max(abs(dx), abs(dy)) < rules.min_travel:
        return "none"
    step = (int(math.copysign(1, dx)), 0) if abs(dx) >= abs(dy) else (0, int(math.copysign(1, dy)))
    return next(name for name, vector in DIRECTIONS.items() if vector == step)


def judge_frames(frames: np.ndarray, rules: Rules = DEFAULT_RULES) -> dict:
    """Judge uint8 frames ``(F, H, W, 3)``: colour, shape, direction, persistence and the centroid track.

    Attributes that cannot be measured (no shape in any frame) are ``"none"``.
    """
    frames = np.asarray(frames)
    shapes = [largest_component(m) for m in foreground(frames, rules)]  # F x (H, W)
    areas = np.asarray([m.sum() for m in shapes])
    present = areas >= rules.min_area
    track = [centroid(m) if ok else None for m, ok in zip(shapes, present, strict=True)]

    result = {
        "colour": "none",
        "shape": "none",
        "direction": "none",
        "persistence": float(present.mean()),
        "fill_ratio": None,
        "mean_rgb": None,
        "travel": None,
        "track": [list(p) if p is not None else None for p in track],
    }
    if not present.any():
        return result
    pixels = np.concatenate([f[m] for f, m, ok in zip(frames, shapes, present, strict=True) if ok])  # (N, 3)
    mean_rgb = pixels.astype(np.float64).mean(axis=0)
    ratio = shape_fill_ratio([m for m, ok in zip(shapes, present, strict=True) if ok])
    points = np.asarray([p for p in track if p is not None])  # (K, 2)
    k = max(1, min(rules.edge_frames, len(points) // 4))
    dx, dy = points[-k:].mean(axis=0) - points[:k].mean(axis=0)
    result.update(
        colour=nearest_colour(mean_rgb),
        shape=classify_fill(ratio, rules),
        direction=classify_travel(float(dx), float(dy), rules),
        fill_ratio=ratio,
        mean_rgb=[round(float(v), 2) for v in mean_rgb],
        travel=[round(float(dx), 3), round(float(dy), 3)],
    )
    return result


def fill_outlines(edges: np.ndarray) -> np.ndarray:
    """The region an edge map ``(H, W)`` (bool) encloses: its outer contours filled, edges included.

    The centroid of an outline weighs each side by its pixel count, and a slanted side has more
    pixels per unit length than a level one, so an outlined triangle's centroid sits half a pixel
    towards its apex; the filled region's centroid is the shape's own.
    """
    import cv2

    outline = edges.astype(np.uint8)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(outline, contours, -1, 1, thickness=cv2.FILLED).astype(bool)


def control_track(control: np.ndarray, size: tuple[int, int], rules: Rules = DEFAULT_RULES) -> list:
    """Centroid of the shape a control (edge) video outlines, per frame, scaled to a video of ``size=(H, W)``."""
    scale_x, scale_y = size[1] / control.shape[2], size[0] / control.shape[1]
    points = []
    for mask in foreground(control, rules):
        point = centroid(fill_outlines(mask))
        points.append(None if point is None else (point[0] * scale_x, point[1] * scale_y))
    return points


def trajectory_error(track: Sequence, reference: Sequence) -> tuple[float | None, int]:
    """Mean distance (px) between two centroid tracks over the frames where both exist, and that frame count."""
    pairs = [(p, q) for p, q in zip(track, reference, strict=False) if p is not None and q is not None]
    if not pairs:
        return None, 0
    return float(np.mean([math.dist(p, q) for p, q in pairs])), len(pairs)


# --------------------------------------------------------------------------------------------
# Videos and folders
# --------------------------------------------------------------------------------------------


def evaluate_video(
    path: str | os.PathLike,
    expected: ClipSpec | Mapping | str | None = None,
    *,
    image: str | os.PathLike | None = None,
    control_video: str | os.PathLike | None = None,
    rules: Rules = DEFAULT_RULES,
) -> dict:
    """Decode a video file and judge it; compare with ``expected`` when given.

    ``expected`` is a :class:`ClipSpec`, a mapping with ``colour`` / ``shape`` / ``direction``, or a
    caption. ``image``: the given start image (adds ``psnr_first_frame``, the frame resized to the
    video if needed); ``control_video``: the control video it followed (adds
    ``trajectory_error_px``, the mean centroid distance, and ``trajectory_frames``).
    """
    frames = read_video(path).numpy()  # (F, H, W, 3)
    result = {"file": str(path), **judge_frames(frames, rules)}
    if expected is not None:
        spec = _as_spec(expected)
        result["expected"] = spec.attributes()
        result["held_out"] = spec.held_out
        for name in ATTRIBUTES:
            result[f"{name}_ok"] = result[name] == getattr(spec, name)
    if image is not None:
        reference = read_image(image, size=frames.shape[1:3]).numpy()
        result["psnr_first_frame"] = psnr(frames[0], reference, peak=255.0, cap=PSNR_CAP)
    if control_video is not None:
        control = read_video(control_video).numpy()
        error, count = trajectory_error(result["track"], control_track(control, frames.shape[1:3], rules))
        result["trajectory_error_px"], result["trajectory_frames"] = error, count
    return result


def _as_spec(expected: ClipSpec | Mapping | str) -> ClipSpec:
    if isinstance(expected, ClipSpec):
        return expected
    if isinstance(expected, str):
        return parse_caption(expected)
    return ClipSpec(*(expected[name] for name in ATTRIBUTES))


def _resolve_input(value: str | None, base: Path) -> Path | None:
    """An input path from a sidecar: as written if it exists, else relative to the sidecar's folder."""
    if not value:
        return None
    path = Path(value)
    return path if path.exists() or path.is_absolute() else base / path


def _expectations(folder: Path, prompts: Sequence[str] | None) -> list[tuple[Path, dict]]:
    """(video, sidecar-like dict) for every video in ``folder``: from ``.json`` sidecars or, failing that, prompts."""
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    if prompts is not None:
        if len(prompts) != len(videos):
            raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos in {folder}: the counts must match")
        return [(video, {"prompt": prompt}) for video, prompt in zip(videos, prompts, strict=True)]
    found = []
    for video in videos:
        sidecar = video.with_suffix(".json")
        if not sidecar.is_file():
            logger.warning("skipping %s: no %s next to it (or pass a prompts file)", video.name, sidecar.name)
            continue
        found.append((video, json.loads(sidecar.read_text())))
    return found


def _summarise(results: Iterable[dict]) -> dict:
    """Accuracy per attribute, mean persistence, and the mean PSNR / trajectory error where measured."""
    results = list(results)
    summary: dict = {"count": len(results)}
    if not results:
        return summary
    for name in ATTRIBUTES:
        summary[name] = float(np.mean([r[f"{name}_ok"] for r in results]))
    summary["persistence"] = float(np.mean([r["persistence"] for r in results]))
    summary["all_correct"] = float(np.mean([all(r[f"{n}_ok"] for n in ATTRIBUTES) for r in results]))
    for key in ("psnr_first_frame", "trajectory_error_px"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
            summary[f"{key}_count"] = len(values)
    missing = sum(1 for r in results if "trajectory_error_px" in r and r["trajectory_error_px"] is None)
    if missing:
        summary["trajectory_unmeasured"] = missing  # videos with no frame where both shapes exist
    return summary


def evaluate_folder(
    folder: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    rules: Rules = DEFAULT_RULES,
    progress: bool = True,
) -> dict:
    """Judge every video of a folder and report accuracies for seen, held-out and all combinations.

    What each video should show comes from the ``.json`` next to it (``videox-fun generate`` and
    :func:`~videox_fun.toyworld.dataset.write_dataset` write one): its ``colour`` / ``shape`` /
    ``direction`` if present, else its ``prompt`` read with the caption grammar. Optional keys
    ``image`` and ``control_video`` (paths, absolute or relative to the folder) add first-frame
    PSNR and trajectory error. With ``prompts`` (one per video, in file-name order) no sidecar is
    needed. Returns ``{"seen", "held_out", "all", "skipped", "videos", "rules"}``.
    """
    from tqdm import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    results, skipped = [], []
    for video, info in tqdm(_expectations(folder, prompts), desc="evaluating", disable=not progress):
        try:
            expected = info if all(k in info for k in ATTRIBUTES) else parse_caption(info.get("prompt", ""))
        except ValueError as err:
            skipped.append({"file": str(video), "reason": str(err)})
            continue
        result = evaluate_video(
            video,
            expected,
            image=_resolve_input(info.get("image"), folder),
            control_video=_resolve_input(info.get("control_video"), folder),
            rules=rules,
        )
        result["prompt"] = info.get("prompt")
        results.append(result)
    return {
        "seen": _summarise(r for r in results if not r["held_out"]),
        "held_out": _summarise(r for r in results if r["held_out"]),
        "all": _summarise(results),
        "skipped": skipped,
        "videos": results,
        "rules": asdict(rules),
    }


def format_report(report: Mapping) -> str:
    """A short table of a folder report (the JSON holds the details)."""
    columns = ("count", *ATTRIBUTES, "persistence", "psnr_first_frame", "trajectory_error_px")
    lines = ["group     " + "".join(f"{c:>20}" for c in columns)]
    for group in ("seen", "held_out", "all"):
        row = report[group]
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(f"{group:<10}" + "".join(f"{c:>20}" for c in cells))
    if report.get("skipped"):
        lines.append(f"skipped {len(report['skipped'])} video(s) whose prompt names no toy-world clip")
    return "\n".join(lines)
