"""``videox-fun toyworld report``: each section shows its progress while it generates."""

from __future__ import annotations

import json

from videox_fun.api import load_pipeline
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.toyworld.report import _generate

TINY = {"num_frames": 5, "height": 32, "width": 32, "steps": 1}


def test_generate_shows_a_bar_named_after_its_section_and_writes_each_video(tmp_path, capsys):
    pipe = load_pipeline(build_tiny_model_folder(tmp_path / "Tiny-InP", "inp"))
    jobs = [{"prompt": "a red circle moving right", **TINY}, {"prompt": "a blue square moving up", **TINY}]
    _generate(pipe, jobs, tmp_path / "t2v", fps=8)
    assert "report t2v" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "t2v").glob("*.mp4")) == ["00000000.mp4", "00000001.mp4"]
    assert json.loads((tmp_path / "t2v" / "00000001.json").read_text())["prompt"] == "a blue square moving up"

    _generate(pipe, jobs[:1], tmp_path / "quiet", fps=8, progress=False)
    assert "report" not in capsys.readouterr().err


def test_report_runs_a_cogvideox_folder_through_the_programmatic_entry(tmp_path):
    from videox_fun.models.cogvideox.tiny import build_tiny_cogvideox_folder
    from videox_fun.toyworld.report import default_control_model, vae_reconstruction

    pipe = load_pipeline(build_tiny_cogvideox_folder(tmp_path / "Cog-InP", "inp"))
    jobs = [{"prompt": "a red circle moving right", "num_frames": 9, "height": 32, "width": 32, "steps": 1}]
    _generate(pipe, jobs, tmp_path / "t2v", fps=8, progress=False)
    sidecar = json.loads((tmp_path / "t2v" / "00000000.json").read_text())
    assert sidecar["model"] == "Cog-InP" and sidecar["num_frames"] == 9
    scores = vae_reconstruction(pipe, count=2, progress=False)
    assert scores["all"]["count"] == 2 and scores["all"]["psnr_mean"] > 0
    assert default_control_model(pipe) is None  # no packaged CogVideoX control model: the section is skipped
