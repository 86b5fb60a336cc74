"""``videox-fun toyworld render | write-dataset | prompts`` and ``videox-fun eval toyworld``, run as a user would."""

from __future__ import annotations

import json
from pathlib import Path

from videox_fun.cli import main
from videox_fun.io.video import read_image, read_video
from videox_fun.toyworld.world import caption, combinations


def test_prompts_lists_every_combination(tmp_path: Path):
    out = tmp_path / "prompts.txt"
    assert main(["toyworld", "prompts", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines == [caption(spec) for spec in combinations("all")] and len(lines) == 72
    assert main(["toyworld", "prompts", str(out), "--split", "heldout", "--repeats", "2"]) == 0
    assert len(out.read_text().splitlines()) == 24


def test_render_then_eval_scores_the_ground_truth(tmp_path: Path, capsys):
    videos = tmp_path / "videos"
    for index, prompt in enumerate(["a red circle moving right", "a blue circle moving up"]):
        args = ["toyworld", "render", prompt, "--output", str(videos / f"{index:08d}.mp4"), "--seed", str(index)]
        if index == 0:
            extra = ["--control", str(tmp_path / "edges.mp4"), "--first-frame", str(tmp_path / "start.png")]
            args += [*extra, "--masks", str(tmp_path / "masks"), "--size", "48x80"]
        assert main(args) == 0
    assert read_video(videos / "00000000.mp4").shape == read_video(tmp_path / "edges.mp4").shape == (17, 48, 80, 3)
    assert read_image(tmp_path / "start.png").shape == (48, 80, 3)
    assert len(list((tmp_path / "masks").glob("00000000_*.mp4"))) == 4

    report_path = tmp_path / "report.json"
    assert main(["eval", "toyworld", str(videos), "--json", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert report["seen"]["count"] == 1 and report["held_out"]["count"] == 1
    assert report["all"]["all_correct"] == 1.0
    assert "held_out" in capsys.readouterr().out


def test_write_dataset_and_errors(tmp_path: Path, capsys):
    assert main(["toyworld", "write-dataset", str(tmp_path / "data"), "--n", "3", "--quiet", "--split", "all"]) == 0
    metadata = json.loads((tmp_path / "data" / "metadata_all.json").read_text())
    assert [e["file_path"] for e in metadata] == [f"all/{i:08d}.mp4" for i in (1, 2, 3)]
    assert main(["eval", "toyworld", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["toyworld", "render", "a red blob", "--output", str(tmp_path / "x.mp4")]) == 2


def test_train_all_until_a_stage_is_for_the_cogvideox_recipe(tmp_path: Path, capsys):
    assert main(["toyworld", "train-all", str(tmp_path / "wan"), "--until", "vae"]) != 0
    assert "--until is only for --family cogvideox" in capsys.readouterr().err
    assert not (tmp_path / "wan").exists()  # refused before any work
    assert (
        main(["toyworld", "train-all", str(tmp_path / "cog"), "--family", "cogvideox", "--until", "data", "--smoke"])
        == 0
    )
    assert (tmp_path / "cog" / "data" / "metadata_train.json").is_file()
    assert not (tmp_path / "cog" / "cogvideox_vae_run").exists()
