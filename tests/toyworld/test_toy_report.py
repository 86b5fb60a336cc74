"""``videox-fun toyworld report``: each section shows its progress while it generates."""

from __future__ import annotations

import json

from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.pipelines.wan import WanPipeline
from videox_fun.toyworld.report import _generate

TINY = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 1}


def test_generate_shows_a_bar_named_after_its_section_and_writes_each_video(tmp_path, capsys):
    pipe = WanPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "Tiny-InP", "inp"))
    jobs = [{"prompt": "a red circle moving right", **TINY}, {"prompt": "a blue square moving up", **TINY}]
    _generate(pipe, jobs, tmp_path / "t2v", fps=8)
    assert "report t2v" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "t2v").glob("*.mp4")) == ["00000000.mp4", "00000001.mp4"]
    assert json.loads((tmp_path / "t2v" / "00000001.json").read_text())["prompt"] == "a blue square moving up"

    _generate(pipe, jobs[:1], tmp_path / "quiet", fps=8, progress=False)
    assert "report" not in capsys.readouterr().err
