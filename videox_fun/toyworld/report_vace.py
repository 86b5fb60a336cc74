"""Measure a VACE model on the toy world: reference-to-video and masked completion, seen vs held-out.

``videox-fun toyworld report-vace OUT_DIR --model FOLDER`` renders fresh clips (seeds no training
clip used), then for each:

- **reference-to-video**: a still of the clip's shape (its middle frame) as ``--ref-image`` and
  the clip's caption; the video should show the reference's colour and shape moving as the prompt
  says (colour, shape and direction judged by the model-free evaluator); again with a prompt that
  names the motion alone ("moving right"), so colour and shape can only come from the reference;
- **masked completion**: the clip with its second half masked out (whole frames, ending on a
  latent-frame boundary: 9 of 17 frames known); the completed frames should continue the
  shape's path: the mean distance between the generated and the true centroid over them (px),
  and colour / shape over the whole video.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..api import GenerationRequest, LoadedPipeline, load_pipeline
from ..io.video import write_video
from ..registry import resolve_model
from .evaluate import ATTRIBUTES, evaluate_video, judge_frames, trajectory_error
from .render import Clip, render_clip
from .world import combinations


def known_frames(num_frames: int) -> int:
    """Pixel frames kept in masked completion: up to a latent-frame boundary (1 + 4k) near the middle."""
    latent_frames = (num_frames - 1) // 4 + 1
    return 1 + 4 * ((latent_frames - 1) // 2)


def completion_mask(num_frames: int, height: int, width: int) -> np.ndarray:
    """The mask video (F, H, W, 3) uint8: black = keep (the first :func:`known_frames`), white = generate."""
    mask = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    mask[known_frames(num_frames) :] = 255
    return mask


def _run(pipe: LoadedPipeline, request: GenerationRequest, path: Path) -> np.ndarray:
    result = pipe.generate(request, progress=False)
    write_video(result.frames, path, fps=8)
    path.with_suffix(".json").write_text(json.dumps(result.sidecar, indent=2))
    return result.frames.numpy() if hasattr(result.frames, "numpy") else np.asarray(result.frames)


def _accuracy(results: list[dict], held_out: bool) -> dict:
    chosen = [r for r in results if r["held_out"] == held_out]
    summary: dict = {"count": len(chosen)}
    if not chosen:
        return summary
    for name in ATTRIBUTES:
        summary[name] = float(np.mean([r[f"{name}_ok"] for r in chosen]))
    errors = [r["completion_error_px"] for r in chosen if r.get("completion_error_px") is not None]
    if errors:
        summary["completion_error_px"] = float(np.mean(errors))
        summary["completion_unmeasured"] = len(chosen) - len(errors)
    return summary


def _clips(folder: Path, repeats: int, seed: int, section: str, progress: bool) -> Iterator[tuple[int, Clip]]:
    """Fresh clips of every combination ``repeats`` times (seed + index each), with a bar; creates ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = combinations("all") * repeats
    for index, spec in enumerate(tqdm(specs, desc=f"report {section}", unit="video", disable=not progress)):
        yield index, render_clip(spec, seed=seed + index)


def direction_only(clip: Clip) -> str:
    """A prompt naming the motion alone (the colour and shape must come from the reference): "moving right"."""
    return f"moving {clip.spec.direction}"


def reference_to_video(
    pipe: LoadedPipeline, folder: Path, repeats: int, seed: int, progress: bool, prompt_of=None
) -> list[dict]:
    """Every combination ``repeats`` times: a still of the shape as the reference, judged against the clip.

    ``prompt_of(clip)``: the prompt (default the clip's caption; :func:`direction_only` names the motion alone).
    """
    results = []
    for index, clip in _clips(folder, repeats, seed, folder.name, progress):
        middle = len(clip.frames) // 2
        still = write_video(clip.frames[middle : middle + 1], folder / f"ref_{index:04d}.png")
        video = folder / f"{index:08d}.mp4"
        prompt = prompt_of(clip) if prompt_of else clip.caption
        _run(pipe, GenerationRequest(prompt=prompt, mode="r2v", ref_image=str(still), seed=index), video)
        results.append({**evaluate_video(video, clip.spec), "prompt": prompt})
    return results


def masked_completion(pipe: LoadedPipeline, folder: Path, repeats: int, seed: int, progress: bool) -> list[dict]:
    """Every combination ``repeats`` times: the clip's second half masked, the completion judged on its path."""
    results = []
    for index, clip in _clips(folder, repeats, seed, "completion", progress):
        frames, height, width = clip.frames.shape[:3]
        source = write_video(clip.frames, folder / f"source_{index:04d}.mp4", fps=8)
        mask = write_video(completion_mask(frames, height, width), folder / f"mask_{index:04d}.mp4", fps=8)
        video = folder / f"{index:08d}.mp4"
        request = GenerationRequest(prompt=clip.caption, mode="inpaint", video=str(source), mask=str(mask), seed=index)
        generated = _run(pipe, request, video)
        result = {**evaluate_video(video, clip.spec), "prompt": clip.caption}
        start = known_frames(frames)
        truth = judge_frames(clip.frames)["track"][start:]
        made = judge_frames(generated)["track"][start:]
        result["completion_error_px"], result["completion_frames"] = trajectory_error(made, truth)
        results.append(result)
    return results


def run_vace_report(out: str | Path, model: str, repeats: int = 2, seed: int = 3000, progress: bool = True) -> dict:
    """Reference-to-video and masked completion of a VACE model; ``OUT/report_vace.json``."""
    out = Path(out)
    pipe = load_pipeline(resolve_model(model, "r2v"))
    try:
        r2v = reference_to_video(pipe, out / "r2v", repeats, seed, progress)
        motion_only = reference_to_video(pipe, out / "r2v_direction_only", repeats, seed, progress, direction_only)
        completion = masked_completion(pipe, out / "completion", repeats, seed + 10_000, progress)
    finally:
        pipe.close()
    report = {
        "model": pipe.folder.name,
        "r2v": {"seen": _accuracy(r2v, False), "held_out": _accuracy(r2v, True)},
        "r2v_direction_only": {"seen": _accuracy(motion_only, False), "held_out": _accuracy(motion_only, True)},
        "completion": {"seen": _accuracy(completion, False), "held_out": _accuracy(completion, True)},
        "settings": {"repeats": repeats, "seed": seed, "known_frames": "first 1 + 4k (9 of 17)"},
    }
    (out / "report_vace.json").write_text(json.dumps(report, indent=2))
    return report
