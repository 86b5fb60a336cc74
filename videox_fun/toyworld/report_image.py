"""Measure a toy-world image model: t2i colour and shape, seen vs held-out combinations, and its VAE.

``videox-fun toyworld report-image OUT --model FOLDER`` generates one image per colour x shape pair
and seed (prompt "a red circle", seeds 0..N-1 over the pairs) at the folder's defaults, writes each
as PNG with its sidecar, and judges it with the model-free evaluator on its single frame
(:func:`.evaluate.judge_frames`: colour = the palette entry nearest to the shape's mean colour,
shape = its fill ratio in its bounding box). A still has no motion, so direction is not judged.
``--transformer-path`` measures other weights in the same folder, e.g. a training checkpoint's
``trainable_0.safetensors``. The VAE section is the folder VAE's reconstruction of freshly rendered
first frames: PSNR, and colour / shape judged as above.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import GenerationRequest, LoadedPipeline, RuntimeOptions, load_pipeline
from ..io.video import frames_to_tensor, tensor_to_frames, write_video
from ..metrics import psnr
from .evaluate import PSNR_CAP, judge_frames
from .render import render_clip
from .world import COLOURS, SHAPES, ClipSpec, caption

JUDGED = ("colour", "shape")
SPLIT_NAMES = ("seen", "held_out", "all")


def still_specs() -> list[ClipSpec]:
    """Every colour x shape pair (18; 3 held out), one direction each: a still shows none."""
    return [ClipSpec(colour, shape, "right") for colour in COLOURS for shape in SHAPES]


def judge_image(frame: np.ndarray, spec: ClipSpec) -> dict:
    """Judge one uint8 image (H, W, 3) against the pair it should show: colour, shape, and whether each is right."""
    judged = judge_frames(frame[None])
    result = {name: judged[name] for name in (*JUDGED, "fill_ratio", "mean_rgb")}
    result["present"] = judged["persistence"] == 1.0  # the shape covers at least the evaluator's minimum area
    result["centroid"] = judged["track"][0]
    result["expected"] = {"colour": spec.colour, "shape": spec.shape}
    result["held_out"] = spec.held_out
    for name in JUDGED:
        result[f"{name}_ok"] = result[name] == getattr(spec, name)
    return result


def summarise(results: Iterable[dict]) -> dict:
    """Accuracy of colour, shape and both, and the share of images with a shape, per split."""
    results = list(results)
    splits = {"seen": [r for r in results if not r["held_out"]], "held_out": [r for r in results if r["held_out"]]}
    splits["all"] = results
    summary = {}
    for split, items in splits.items():
        if not items:
            continue
        entry = {"count": len(items)}
        for name in JUDGED:
            entry[name] = float(np.mean([r[f"{name}_ok"] for r in items]))
        entry["both"] = float(np.mean([r["colour_ok"] and r["shape_ok"] for r in items]))
        entry["present"] = float(np.mean([r["present"] for r in items]))
        summary[split] = entry
    return summary


def generate_images(
    pipe: LoadedPipeline,
    specs: Sequence[ClipSpec],
    repeats: int,
    folder: Path,
    settings: dict,
    progress: bool = True,
) -> list[dict]:
    """t2i of every pair ``repeats`` times (seed = the image's index), written as PNG + sidecar; the judgements."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = list(specs) * repeats
    results = []
    for index, spec in enumerate(tqdm(specs, desc="report t2i", unit="image", disable=not progress)):
        request = GenerationRequest(caption(spec, image=True), seed=index, **settings)
        generated = pipe.generate(request, progress=False)
        path = write_video(generated.frames, folder / f"{index:08d}.png")
        judged = {"file": path.name, "prompt": request.prompt, **judge_image(generated.frames[0].numpy(), spec)}
        path.with_suffix(".json").write_text(json.dumps({**generated.sidecar, "judged": judged}, indent=2))
        results.append(judged)
    return results


def vae_reconstruction(vae: torch.nn.Module, count: int = 72, seed: int = 2000, progress: bool = True) -> dict:
    """The image VAE (``encode`` / ``decode`` of (B, 3, H, W)) on freshly rendered first frames, one per pair in
    turn, from seeds the training data never used: PSNR (dB), and colour / shape of the reconstructions."""
    specs = still_specs()
    results = []
    with torch.no_grad():
        for i in tqdm(range(count), desc="report vae", unit="image", disable=not progress):
            spec = specs[i % len(specs)]
            frame = render_clip(spec, frames=1, seed=seed + i).frames  # (1, H, W, 3) uint8
            image = frames_to_tensor(frame).transpose(0, 1)  # (1, 3, H, W) in [-1, 1]
            decoded = tensor_to_frames(vae.decode(vae.encode(image)).transpose(0, 1)).numpy()  # (1, H, W, 3)
            judged = judge_image(decoded[0], spec)
            judged["psnr"] = psnr(decoded, frame, peak=255.0, cap=PSNR_CAP)
            results.append(judged)
    summary = summarise(results)
    for split, entry in summary.items():
        values = [r["psnr"] for r in results if split == "all" or r["held_out"] == (split == "held_out")]
        entry.update(psnr_mean=float(np.mean(values)), psnr_min=float(np.min(values)))
    return summary


def run_image_report(
    out: str | Path,
    model: str | Path,
    repeats: int = 8,
    transformer_path: str | Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    progress: bool = True,
    specs: Sequence[ClipSpec] | None = None,
) -> dict:
    """t2i over every colour x shape pair ``repeats`` times and the VAE's reconstructions; writes
    ``OUT/report_image.json`` (``OUT/t2i/`` holds the images) and returns the summary.

    ``steps`` / ``guidance_scale``: other sampling settings than the folder's defaults; ``specs``: other
    pairs than all 18 (:func:`still_specs`), e.g. a few for a quick check.
    """
    out = Path(out)
    options = RuntimeOptions(transformer_path=Path(transformer_path) if transformer_path else None)
    pipe = load_pipeline(model, options, mode="t2i")
    settings = {
        key: value for key, value in (("steps", steps), ("guidance_scale", guidance_scale)) if value is not None
    }
    report: dict = {"model": str(pipe.folder), "transformer_path": str(transformer_path or ""), "repeats": repeats}
    report["settings"] = {**asdict(pipe.recognised.config.defaults), **settings}
    report["vae"] = vae_reconstruction(pipe.pipe.vae, progress=progress)
    results = generate_images(pipe, specs or still_specs(), repeats, out / "t2i", settings, progress)
    report["t2i"] = summarise(results)
    report["fill_ratio_by_shape"] = {
        shape: float(np.median([r["fill_ratio"] for r in results if r["expected"]["shape"] == shape and r["present"]]
                               or [np.nan]))
        for shape in SHAPES
    }  # fmt: skip
    pipe.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report_image.json").write_text(json.dumps(report, indent=2))
    return report
