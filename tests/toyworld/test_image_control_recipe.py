"""The toy-world control recipe for an image model (``toyworld train-image-control`` / ``report-image-control``) on a
tiny random Z-Image base for two steps: the chain runs, the folder it writes steers ``control`` generation from its
folder config, a rerun keeps the finished folder, and the report's centroid error is the evaluator's (near zero on the
rendered truth)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videox_fun.cli import main
from videox_fun.models.zimage.tiny import build_tiny_zimage_folder
from videox_fun.toyworld.recipe_image_control import CONTROL_FILE, SUFFIX
from videox_fun.toyworld.render import render_clip
from videox_fun.toyworld.report_image import judge_image, still_specs
from videox_fun.toyworld.report_image_control import REPORT, centroid_error, centroid_summary, control_inputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base folder, control folder): a smoke run of the recipe on a tiny random Z-Image, through the CLI."""
    root = tmp_path_factory.mktemp("toy_image_control")
    base = build_tiny_zimage_folder(root / "Z-Image-Toy-Random", "turbo", seed=1, note="tiny random weights")
    assert main(["toyworld", "train-image-control", str(root / "work"), "--base", str(base), "--smoke"]) == 0
    return base, root / "work" / (base.name + SUFFIX)


def test_the_centroid_error_of_the_rendered_truth_is_near_zero(tmp_path: Path):
    specs = still_specs()
    controls = control_inputs(specs, tmp_path)
    results = []
    for index, (spec, (_, reference)) in enumerate(zip(specs, controls, strict=True)):
        judged = judge_image(render_clip(spec, frames=1, seed=3000 + index).frames[0], spec)  # the stills rendered
        results.append({**judged, "centroid_error_px": centroid_error(judged, reference)})
    summary = centroid_summary(results)
    worst = max(r["centroid_error_px"] for r in results)
    print(f"rendered stills vs their own control images: mean centroid error {summary['all']['centroid_error_px']:.3f}"
          f" px, worst {worst:.3f} px over {len(results)}")  # fmt: skip
    assert summary["all"]["measured"] == 18 and worst < 1.0 and summary["all"]["within_3px"] == 1.0
    assert centroid_error({"centroid": None}, (1.0, 2.0)) is None


def test_the_recipe_writes_a_control_folder_and_keeps_it(trained):
    base, folder = trained
    record = json.loads((folder / "recipe_control.json").read_text())
    assert record["recipe"]["steps"] == 2 and set(record["timings_s"]) == {"data", "control"}
    config = (folder / "videox_fun.yaml").read_text()
    assert f"control_path: {CONTROL_FILE}" in config and "control_context_scale: 1.0" in config
    control = load_file(str(folder / CONTROL_FILE))
    assert control["control_all_x_embedder.2-1.weight"].shape[1] == 4 * 33  # a new 2.1 stream: 33 channels
    base_weights = load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    copied = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(base_weights[k], copied[k]) for k in base_weights)  # the base stays as it was
    stamp = (folder / CONTROL_FILE).stat().st_mtime_ns
    run = folder.parent
    assert main(["toyworld", "train-image-control", str(run), "--base", str(base), "--smoke"]) == 0
    assert (folder / CONTROL_FILE).stat().st_mtime_ns == stamp  # finished: nothing reran


def test_the_report_measures_control_against_the_baseline(trained, tmp_path: Path):
    _, folder = trained
    out = tmp_path / "report"
    argv = ["toyworld", "report-image-control", str(out), "--model", str(folder), "--repeats", "1", "--steps", "2",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / REPORT).read_text())
    for mode in ("control", "t2i"):
        for split in ("seen", "held_out"):
            centroid = report[mode]["centroid"][split]
            assert centroid["count"] == (15 if split == "seen" else 3)
            assert centroid["centroid_error_px"] is None or math.isfinite(centroid["centroid_error_px"])
            assert set(report[mode]["accuracy"][split]) >= {"colour", "shape", "both", "present"}
    sidecar = json.loads((out / "control" / "00000000.json").read_text())
    assert sidecar["mode"] == "control" and sidecar["control_path"].endswith(CONTROL_FILE)
    assert "centroid_error_px" in sidecar["judged"] and (out / "inputs" / "control_0000.png").is_file()
    print(f"tiny random base, 2 steps: control centroid error {report['control']['centroid']['all']} vs the t2i "
          f"baseline {report['t2i']['centroid']['all']}")  # fmt: skip
