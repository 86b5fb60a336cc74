"""Measure the tiny models on the toy world: t2v, i2v and control, seen vs held-out combinations.

``videox-fun toyworld report OUT_DIR`` generates videos from fixed seeds with the packaged (or
given) models, writes them with their sidecars, and judges them with the model-free evaluator.
Any family's folder works: models load through the programmatic entry
(:func:`videox_fun.api.load_pipeline`, :class:`~videox_fun.api.GenerationRequest`). The control
section needs a control model: by default the packaged Wan one for a Wan InP model; none for a
family without a packaged control model (``control_model="none"`` skips it always).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import GenerationRequest, LoadedPipeline, load_pipeline
from ..io.video import frames_to_tensor, tensor_to_frames, write_video
from ..metrics import psnr
from ..registry import DEFAULT_CONTROL_MODEL, resolve_model
from .evaluate import PSNR_CAP, evaluate_folder
from .render import render_clip
from .world import caption, combinations


def _generate(pipe: LoadedPipeline, jobs: list[dict], folder: Path, fps: int, progress: bool = True) -> None:
    """Run each job (:class:`GenerationRequest` fields: prompt, mode, image, sizes, steps...) with seed =
    its index and write video + sidecar, as ``videox-fun generate`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    # One bar per section (named after its folder: t2v, i2v, control); the per-step bars stay off.
    for index, job in enumerate(tqdm(jobs, desc=f"report {folder.name}", unit="video", disable=not progress)):
        result = pipe.generate(GenerationRequest(seed=index, **job), progress=False)
        path = write_video(result.frames, folder / f"{index:08d}.mp4", fps=fps)
        path.with_suffix(".json").write_text(json.dumps(result.sidecar, indent=2))


def _clip_inputs(folder: Path, count: int, seed: int, progress: bool = True) -> list[tuple[str, Path, Path]]:
    """Rendered clips over all combinations: caption, first-frame PNG, Canny control video."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = combinations("all")
    out = []
    for i in tqdm(range(count), desc="report inputs", unit="clip", disable=not progress):
        clip = render_clip(specs[i % len(specs)], seed=seed + i)
        image = write_video(clip.frames[:1], folder / f"first_{i:04d}.png")
        control = write_video(clip.control, folder / f"control_{i:04d}.mp4", fps=8)
        out.append((clip.caption, image, control))
    return out


def vae_reconstruction(
    model_folder: str | Path | LoadedPipeline, count: int = 72, seed: int = 2000, progress: bool = True
) -> dict:
    """PSNR (dB, uint8 frames) of the model's VAE on freshly rendered clips, seen vs held-out combinations.

    The clips come straight from the renderer (no video codec) with seeds the training data never
    used, one per combination in turn, so every clip is held out from the VAE's training. The VAE
    is the loaded model's (any family: its wrapper's ``decode(encode(video))``, clamped to [-1, 1]).
    """
    pipe = model_folder if isinstance(model_folder, LoadedPipeline) else load_pipeline(model_folder)
    return reconstruction_psnr(pipe.pipe.vae, count, seed, progress)


def reconstruction_psnr(vae: Any, count: int = 72, seed: int = 2000, progress: bool = True) -> dict:
    """:func:`vae_reconstruction` of a VAE wrapper (``WanVAE``, ``CogVideoXVAE``: ``decode(encode(video))``),
    e.g. a training checkpoint's."""
    specs = combinations("all")
    scores: dict[str, list[float]] = {"seen": [], "held_out": []}
    with torch.no_grad():
        for i in tqdm(range(count), desc="report vae", unit="clip", disable=not progress):
            spec = specs[i % len(specs)]
            frames = render_clip(spec, seed=seed + i).frames  # (F, H, W, 3) uint8
            video = frames_to_tensor(frames)[None]  # (1, 3, F, H, W) in [-1, 1]
            decoded = tensor_to_frames(vae.decode(vae.encode(video)).clamp(-1, 1)[0]).numpy()  # (F, H, W, 3)
            scores["held_out" if spec.held_out else "seen"].append(psnr(decoded, frames, peak=255.0, cap=PSNR_CAP))
    scores["all"] = scores["seen"] + scores["held_out"]
    return {
        split: {"count": len(v), "psnr_mean": float(np.mean(v)), "psnr_min": float(np.min(v))}
        for split, v in scores.items()
        if v
    }


def default_control_model(inp: LoadedPipeline) -> str | None:
    """The control model measured beside ``inp`` when none is named: the packaged Wan one for a Wan
    model, none for another family (no packaged control model)."""
    return DEFAULT_CONTROL_MODEL if inp.recognised.family.name == "wan" else None


def run_report(
    out: str | Path,
    repeats: int = 2,
    inp_model: str | None = None,
    control_model: str | None = None,
    progress: bool = True,
) -> dict:
    """t2v over every combination ``repeats`` times, i2v and control on rendered clips; JSON summary.

    ``inp_model``: any family's InP folder or name (default: the packaged Wan one). ``control_model``:
    a control folder or name, ``"none"`` to skip control, or None for :func:`default_control_model`.

    ``progress`` shows a bar per section (report vae / t2v / inputs / i2v / control) on stderr.
    """
    out = Path(out)
    report: dict = {}
    inp = load_pipeline(resolve_model(inp_model or None, "t2v"))
    report["model"] = inp.folder.name
    report["vae"] = vae_reconstruction(inp, progress=progress)
    prompts = [caption(spec) for spec in combinations("all")] * repeats
    _generate(inp, [{"prompt": p} for p in prompts], out / "t2v", fps=8, progress=progress)
    report["t2v"] = _summary(evaluate_folder(out / "t2v", progress=False))
    clips = _clip_inputs(out / "inputs", len(combinations("all")), seed=1000, progress=progress)
    i2v_jobs = [{"prompt": c, "image": str(img), "mode": "i2v"} for c, img, _ in clips]
    _generate(inp, i2v_jobs, out / "i2v", fps=8, progress=progress)
    report["i2v"] = _summary(evaluate_folder(out / "i2v", progress=False))
    control_name = default_control_model(inp) if control_model is None else control_model
    inp.close()
    if control_name and control_name != "none":
        control = load_pipeline(resolve_model(control_name, "control"))
        report["control_model"] = control.folder.name
        jobs = [{"prompt": c, "control_video": str(ctrl), "mode": "control"} for c, _, ctrl in clips]
        _generate(control, jobs, out / "control", fps=8, progress=progress)
        report["control"] = _summary(evaluate_folder(out / "control", progress=False))
        control.close()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _summary(evaluation: dict) -> dict:
    return {split: evaluation[split] for split in ("seen", "held_out", "all")}
