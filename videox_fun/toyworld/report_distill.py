"""The distilled students beside their teachers (``videox-fun toyworld report-distill``): issue #21's measures.

- **headline**: each model at its own defaults (teacher: 20 steps with guidance; student: 4 steps,
  guidance 1, ``Flow_Distill``), on the toy-world report's seeds: t2v over every combination (seen and
  held-out apart), i2v on rendered first frames (first-frame PSNR) for an InP model, control videos
  (mean centroid error) for a Control model; with the transformer evaluations per video;
- **sweep**: t2v accuracy against the number of steps for both (each with its own guidance and sampler),
  plotted when matplotlib is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..api import LoadedPipeline, load_pipeline
from ..registry import resolve_model
from .evaluate import evaluate_folder
from .report import _clip_inputs, _generate, _summary
from .world import caption, combinations

SWEEP_STEPS = (1, 2, 4, 8, 20)
ATTRIBUTES = ("colour", "shape", "direction")


def evaluations_per_video(pipe: LoadedPipeline, steps: int | None = None) -> int:
    """Transformer evaluations of one video at the folder's defaults (``steps`` instead, when given): one per
    step, two with classifier-free guidance."""
    defaults = pipe.recognised.defaults
    count = steps or defaults.steps
    return count * (2 if defaults.guidance_scale != 1.0 else 1)


def headline(pipe: LoadedPipeline, out: Path, repeats: int, progress: bool) -> dict:
    """The report's sections for one model at its defaults: t2v, then i2v (InP) or control (Control)."""
    section: dict = {"model": pipe.folder.name, "evaluations_per_video": evaluations_per_video(pipe)}
    defaults = pipe.recognised.defaults
    section["settings"] = {"steps": defaults.steps, "guidance": defaults.guidance_scale, "sampler": defaults.sampler}
    clips = _clip_inputs(out / "inputs", len(combinations("all")), seed=1000, progress=progress)
    if "control" in pipe.recognised.modes and "t2v" not in pipe.recognised.modes:
        jobs = [{"prompt": c, "control_video": str(ctrl), "mode": "control"} for c, _, ctrl in clips]
        _generate(pipe, jobs, out / "control", fps=8, progress=progress)
        section["control"] = _summary(evaluate_folder(out / "control", progress=False))
        return section
    prompts = [caption(spec) for spec in combinations("all")] * repeats
    _generate(pipe, [{"prompt": p} for p in prompts], out / "t2v", fps=8, progress=progress)
    section["t2v"] = _summary(evaluate_folder(out / "t2v", progress=False))
    jobs = [{"prompt": c, "image": str(img), "mode": "i2v"} for c, img, _ in clips]
    _generate(pipe, jobs, out / "i2v", fps=8, progress=progress)
    section["i2v"] = _summary(evaluate_folder(out / "i2v", progress=False))
    return section


def sweep(
    pipe: LoadedPipeline, out: Path, steps: tuple[int, ...], progress: bool, prompts: list[str] | None = None
) -> list[dict]:
    """t2v of ``prompts`` (default: every combination once) per step count, with the model's guidance and
    sampler: accuracy per count."""
    points = []
    prompts = prompts or [caption(spec) for spec in combinations("all")]
    for count in steps:
        folder = out / f"steps_{count:02d}"
        _generate(pipe, [{"prompt": p, "steps": count} for p in prompts], folder, fps=8, progress=progress)
        summary = _summary(evaluate_folder(folder, progress=False))
        points.append({"steps": count, "evaluations_per_video": evaluations_per_video(pipe, count), **summary})
    return points


def run_distill_report(
    out: str | Path,
    student: str,
    teacher: str | None = None,
    repeats: int = 2,
    steps: tuple[int, ...] = SWEEP_STEPS,
    progress: bool = True,
) -> dict:
    """Teacher and student side by side (headline at their defaults, t2v sweep over ``steps``); writes
    OUT/report_distill.json (and OUT/accuracy_vs_steps.png with matplotlib). teacher: default the
    student's recipe's."""
    out = Path(out)
    student_folder = resolve_model(student)
    if teacher is None:
        recipe = json.loads((student_folder / "recipe.json").read_text())
        teacher = recipe["teacher"]
    report: dict = {}
    for role, name in (("teacher", teacher), ("student", str(student_folder))):
        pipe = load_pipeline(resolve_model(name))
        try:
            report[role] = headline(pipe, out / role, repeats, progress)
            if "t2v" in report[role]:
                report[role]["sweep"] = sweep(pipe, out / role / "sweep", steps, progress)
        finally:
            pipe.close()
    report["ratio_of_evaluations"] = report["teacher"]["evaluations_per_video"] / max(
        1, report["student"]["evaluations_per_video"]
    )
    (out / "report_distill.json").write_text(json.dumps(report, indent=2))
    if "sweep" in report["teacher"]:
        plot_sweep(report, out / "accuracy_vs_steps.png")
    return report


def plot_sweep(report: dict, path: Path) -> Path | None:
    """Accuracy (colour, shape, direction over all combinations) against steps, teacher and student; None
    without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ATTRIBUTES), figsize=(12, 3.6), sharey=True)
    for ax, attribute in zip(axes, ATTRIBUTES, strict=True):
        for role, style in (("teacher", "o-"), ("student", "s--")):
            points = report[role]["sweep"]
            label = f"{role} ({report[role]['model']}, guidance {report[role]['settings']['guidance']:g})"
            ax.plot([p["steps"] for p in points], [100 * p["all"][attribute] for p in points], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(SWEEP_STEPS, [str(s) for s in SWEEP_STEPS])
        ax.set_xlabel("sampling steps")
        ax.set_title(f"t2v {attribute} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
