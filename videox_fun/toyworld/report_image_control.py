"""Measure an image model's Fun control stream on the toy world: does the shape go where the control image puts it?

``videox-fun toyworld report-image-control OUT --model FOLDER`` renders one still per colour x shape pair and repeat
(fresh seeds the training data never used: a random place and size), takes its Canny edge image as the control
image, and generates ``control`` with the still's caption ("a red circle"); each image is written as PNG with its
sidecar, beside its control image. The model-free judges of the other reports score it: colour and shape as
``report-image`` judges them (:func:`.report_image.judge_image`), and the **centroid error** (px): the distance
between the generated shape's centroid and the centroid of the shape the control image outlines
(:func:`.evaluate.control_track`, as ``toyworld report`` measures control videos). The baseline runs the same
prompts and seeds as t2i (the control stream unused): the centroid error of an image the control does not steer,
what chance gives. Seen and held-out pairs are reported apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..api import GenerationRequest, LoadedPipeline, RuntimeOptions, load_pipeline
from ..io.video import write_video
from .evaluate import control_track
from .render import render_clip
from .report_image import judge_image, still_specs, summarise
from .world import ClipSpec, caption

REPORT = "report_image_control.json"
FIRST_SEED = 3000  # the stills' render seeds start here (the recipes' data use other seeds)
NEAR_PX = 3.0  # a shape this close to the control's counts as placed


def control_inputs(specs: Sequence[ClipSpec], folder: Path, first_seed: int = FIRST_SEED) -> list[tuple[Path, Any]]:
    """One still per spec rendered from seed ``first_seed + i``: its control image written as PNG in ``folder``,
    and the control shape's centroid (x, y) in its pixels (None when the edges outline nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for index, spec in enumerate(specs):
        clip = render_clip(spec, frames=1, seed=first_seed + index)
        path = write_video(clip.control[:1], folder / f"control_{index:04d}.png")
        inputs.append((path, control_track(clip.control[:1], clip.control.shape[1:3])[0]))
    return inputs


def centroid_error(judged: dict, reference: Any) -> float | None:
    """Distance (px) between the judged image's shape centroid and the control's; None when either is missing."""
    if judged["centroid"] is None or reference is None:
        return None
    return math.dist(judged["centroid"], reference)


def centroid_summary(results: Iterable[dict]) -> dict:
    """Mean / median centroid error (px) per split, the share of images within :data:`NEAR_PX`, and how many could
    not be measured (no shape found)."""
    results = list(results)
    splits = {"seen": [r for r in results if not r["held_out"]], "held_out": [r for r in results if r["held_out"]],
              "all": results}  # fmt: skip
    summary = {}
    for split, items in splits.items():
        if not items:
            continue
        errors = [r["centroid_error_px"] for r in items if r["centroid_error_px"] is not None]
        summary[split] = {
            "count": len(items),
            "measured": len(errors),
            "centroid_error_px": float(np.mean(errors)) if errors else None,
            "centroid_error_px_median": float(np.median(errors)) if errors else None,
            f"within_{NEAR_PX:g}px": float(np.mean([e <= NEAR_PX for e in errors])) if errors else None,
        }
    return summary


def generate_controlled(
    pipe: LoadedPipeline,
    specs: Sequence[ClipSpec],
    controls: Sequence[tuple[Path, Any]],
    folder: Path,
    mode: str,
    settings: dict,
    progress: bool = True,
) -> list[dict]:
    """Each spec's still in ``mode`` (``control`` with its control image, or ``t2i``), seed = its index, written as
    PNG + sidecar; the judgements with the centroid error against its control image."""
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for index, (spec, (control, reference)) in enumerate(
        tqdm(list(zip(specs, controls, strict=True)), desc=f"report {mode}", unit="image", disable=not progress)
    ):
        inputs = {"control_video": str(control)} if mode == "control" else {}
        request = GenerationRequest(caption(spec, image=True), mode=mode, seed=index, **inputs, **settings)
        generated = pipe.generate(request, progress=False)
        path = write_video(generated.frames, folder / f"{index:08d}.png")
        judged = {"file": path.name, "prompt": request.prompt, "control_image": str(control),
                  **judge_image(generated.frames[0].numpy(), spec)}  # fmt: skip
        judged["centroid_error_px"] = centroid_error(judged, reference)
        path.with_suffix(".json").write_text(json.dumps({**generated.sidecar, "judged": judged}, indent=2))
        results.append(judged)
    return results


def run_image_control_report(
    out: str | Path,
    model: str | Path,
    repeats: int = 4,
    control_path: str | Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    control_context_scale: float | None = None,
    baseline: bool = True,
    progress: bool = True,
    specs: Sequence[ClipSpec] | None = None,
) -> dict:
    """``control`` over every colour x shape pair ``repeats`` times (and the t2i baseline); writes ``OUT/REPORT``
    (``OUT/control/``, ``OUT/t2i/`` and ``OUT/inputs/`` hold the images) and returns the summary.

    ``control_path``: another control file than the folder config's; ``steps`` / ``guidance_scale`` /
    ``control_context_scale``: other sampling settings than the folder's; ``specs``: other pairs than all 18.
    """
    out = Path(out)
    pipe = load_pipeline(model, RuntimeOptions(), mode="control")
    path = str(control_path) if control_path else None
    given = {"control_path": path, "control_context_scale": control_context_scale}
    extra = {key: value for key, value in given.items() if value is not None}  # the family's settings
    sampling = {"steps": steps, "guidance_scale": guidance_scale}
    settings: dict[str, Any] = {key: value for key, value in sampling.items() if value is not None}
    chosen = list(specs or still_specs()) * repeats
    controls = control_inputs(chosen, out / "inputs")
    report: dict = {"model": str(pipe.folder), "control_path": str(control_path or ""), "repeats": repeats,
                    "settings": {**asdict(pipe.recognised.config.defaults), **settings, **extra}}  # fmt: skip
    sections = {"control": {**settings, "extra": extra}}
    if baseline:
        sections["t2i"] = settings
    for mode, mode_settings in sections.items():
        results = generate_controlled(pipe, chosen, controls, out / mode, mode, mode_settings, progress)
        report[mode] = {"accuracy": summarise(results), "centroid": centroid_summary(results)}
    pipe.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    return report
