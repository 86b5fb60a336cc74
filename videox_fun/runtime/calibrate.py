"""Fit TeaCache coefficients for any model from uncached runs (``videox-fun calibrate-cache``)."""

from __future__ import annotations

from pathlib import Path

from .cache import CALIBRATION_FILE, CacheRecorder, fit_coefficients, save_calibration
from .options import teacache_indicator

CALIBRATION_PROMPTS = (
    "a red circle moving right",
    "a blue square moving up",
    "a yellow triangle moving left",
    "a cyan square moving down",
)


def calibration_target(folder: Path, out: Path | None) -> Path:
    """Where the fit is written: ``out``, else the folder's ``cache_calibration.json`` (never inside the package)."""
    from ..io.files import check_output_location
    from ..registry import PACKAGED_DIR

    if out is None and folder.resolve().is_relative_to(PACKAGED_DIR.resolve()):
        raise ValueError(f"{folder.name} ships inside the package with its calibration: give --out FILE to fit another")
    target = out or folder / CALIBRATION_FILE
    check_output_location(target, None, "--out")  # before the runs, not after them
    return target


def calibrate_cache(
    model: str | Path | None,
    prompts: list[str] | None = None,
    steps: int | None = None,
    indicator: str | None = None,
    degree: int = 4,
    out: Path | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    image: str | None = None,
    control_video: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
) -> Path:
    """Run the prompts uncached, record (indicator change, residual change) per step, fit and save.

    Works on any family whose transformer declares a TeaCache indicator. Models that do not
    generate from text alone need the ``control_video`` (or ``image``) to run on. Sizes left as
    None are the model's defaults; fit at the size you will generate at.
    """
    from ..api import RuntimeOptions, load_pipeline, resolve_folder
    from ..families import recognise

    folder = resolve_folder(model, "control" if control_video else None)
    target = calibration_target(folder, out)
    prompts = prompts or list(CALIBRATION_PROMPTS)
    recognised = recognise(folder)
    steps = steps or recognised.defaults.steps
    if len(prompts) * (steps - 1) <= degree:  # each run gives steps - 1 pairs at most
        raise ValueError(
            f"{len(prompts)} prompt(s) x {steps - 1} step pairs cannot fit a degree-{degree} polynomial: "
            "give more --steps or prompts, or a lower --degree"
        )
    from_text = any(not mode.needs for mode in recognised.mode_table().values())  # t2v, t2i
    if not from_text and not (control_video or image):
        raise ValueError(
            f"{folder.name} does not generate from text alone ({', '.join(recognised.modes)}): "
            "give the --control-video (or --image) to calibrate on"
        )
    pipe = load_pipeline(folder, RuntimeOptions(device=device, dtype=dtype), recognised=recognised).pipe
    two_experts = len(pipe.transformers) > 1
    indicator = teacache_indicator(indicator, two_experts, pipe.transformers[0])  # generate's default: it finds the fit
    # Each expert records its own consecutive steps; one polynomial is fitted to them all, as
    # VideoX-Fun uses one set for both Wan2.2 A14B experts.
    recorders = [CacheRecorder(transformer, indicator) for transformer in pipe.transformers]
    given = {"control_video": control_video, "image": image, "height": height, "width": width, "num_frames": num_frames}
    inputs = {name: value for name, value in given.items() if value is not None}
    for i, prompt in enumerate(prompts):
        pipe(prompt, num_inference_steps=steps, seed=seed + i, **inputs)  # the model's defaults otherwise
    samples = [sample for recorder in recorders for sample in recorder.samples]
    coefficients = fit_coefficients(samples, degree)
    note = f"{len(prompts)} prompts"
    if two_experts:
        note += ", both experts (" + " + ".join(f"{len(r.samples)}" for r in recorders) + " step pairs, high + low)"
    save_calibration(target, coefficients, indicator, len(samples), note=note)
    print(f"wrote {target}: {len(samples)} step pairs ({indicator}), coefficients {coefficients}")
    return target
