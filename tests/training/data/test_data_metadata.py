"""Metadata files (JSON list, JSON Lines, CSV) and the data config: parsing and the messages of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videox_fun.training.config import TrainConfig
from videox_fun.training.data import DataConfig, MetadataError, load_metadata

ENTRIES = [
    {"file_path": "train/00000001.mp4", "text": "a red circle moving right", "type": "video"},
    {"file_path": "train/00000002.png", "text": "", "type": "image", "width": 832, "height": 480},
    {"file_path": "train/00000003.webm", "text": "a blue square", "control_file_path": "control/00000003.mp4"},
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _csv(entries: list[dict]) -> str:
    columns = ["file_path", "text", "type", "control_file_path", "width", "height"]
    rows = [",".join(columns)] + [",".join(str(e.get(c, "")) for c in columns) for e in entries]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_the_three_formats_give_the_same_entries(tmp_path: Path, suffix: str) -> None:
    text = {
        ".json": json.dumps(ENTRIES, indent=2),
        ".jsonl": "".join(json.dumps(e) + "\n" for e in ENTRIES),
        ".csv": _csv(ENTRIES),
    }[suffix]
    meta = _write(tmp_path / "data" / f"metadata{suffix}", text)
    entries = load_metadata(meta, tmp_path / "root")
    assert [e.file_path for e in entries] == [e["file_path"] for e in ENTRIES]
    assert entries[0].path == tmp_path / "root" / "train/00000001.mp4"
    assert [e.data_type for e in entries] == ["video", "image", "video"]  # the third told from its suffix
    assert [e.text for e in entries] == [e["text"] for e in ENTRIES]  # an empty caption stays a caption
    assert (entries[1].width, entries[1].height) == (832, 480) and entries[0].width is None
    assert entries[2].control_path == tmp_path / "root" / "control/00000003.mp4"
    assert entries[0].control_path is None
    # Without a data folder, paths are relative to the metadata file's folder; absolute ones stay.
    assert load_metadata(meta)[0].path == tmp_path / "data" / "train/00000001.mp4"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "clip.mp4"
    meta = _write(tmp_path / "m.json", json.dumps([{"file_path": str(absolute), "text": "x"}]))
    assert load_metadata(meta, tmp_path / "root")[0].path == absolute


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "meta.json",
            '[\n  {"file_path": "a.mp4", "text": "one"},\n  {"file_path": "b.mp4" "text": "two"}\n]\n',
            r"cannot parse .*meta\.json: Expecting ',' delimiter at line 3 column",
        ),
        (
            "meta.json",
            '[\n  {"file_path": "a.mp4", "text": "one"}\n  {"file_path": "b.mp4"}\n]',
            r"expected ',' or '\]' after the entry ending on line 3",
        ),
        ("meta.json", '{"file_path": "a.mp4", "text": "one"}', r"holds a list of entries"),
        ("meta.jsonl", '{"file_path": "a.mp4", "text": "one"}\n{"file_path": \n', r"jsonl: Expecting value at line 2"),
        ("meta.csv", "file_path,text\na.mp4,one\nb.mp4,two,three\n", r"line 3 has more cells than the header"),
        ("meta.csv", "path,caption\na.mp4,one\n", r"must name the columns, e\.g\. file_path,text,type"),
    ],
)
def test_a_file_that_does_not_parse_names_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        load_metadata(_write(tmp_path / name, text))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"text": "no path"}, r"entry 2 \(line 4\): 'file_path' is missing or empty"),
        ({"file_path": "b.mp4"}, r"entry 2 \(line 4\): 'text' is missing"),
        ({"file_path": "b.mp4", "text": "x", "type": "clip"}, r"type 'clip' is unknown; use 'video' or 'image'"),
        ({"file_path": "b.dat", "text": "x"}, r"no 'type' and the suffix of 'b.dat' does not tell"),
        ({"file_path": "b.mp4", "text": "x", "width": "wide"}, r"width 'wide' is not a positive whole number"),
        ({"file_path": "b.mp4", "text": "x", "height": -4}, r"height -4 is not a positive whole number"),
        ({"file_path": "b.mp4", "text": 3}, r"'text' must be a string"),
        ("b.mp4", r"an entry is an object like"),
    ],
)
def test_a_bad_entry_is_named_with_its_line(tmp_path: Path, entry: object, message: str) -> None:
    good = {"file_path": "a.mp4", "text": "fine"}
    meta = _write(tmp_path / "meta.json", "[\n" + json.dumps(good) + ",\n\n" + json.dumps(entry) + "\n]\n")
    with pytest.raises(MetadataError, match=message):
        load_metadata(meta)


@pytest.mark.parametrize(("name", "text"), [("m.json", "[]"), ("m.json", " [ \n ] "), ("m.csv", "file_path,text\n")])
def test_an_empty_dataset_says_what_to_add(tmp_path: Path, name: str, text: str) -> None:
    meta = _write(tmp_path / name, text)
    with pytest.raises(MetadataError, match=r"has no entries, so there is nothing to train on: add one entry per"):
        load_metadata(meta)


def test_missing_control_paths_fail_in_control_modes(tmp_path: Path) -> None:
    meta = _write(tmp_path / "m.json", json.dumps(ENTRIES, indent=2))
    with pytest.raises(MetadataError) as raised:
        load_metadata(meta, require_control=True)
    message = str(raised.value)
    assert "needs a 'control_file_path'" in message and "2 of 3 have none" in message
    assert "m.json entry 1 (line 2): train/00000001.mp4" in message and "00000003" not in message
    assert "m.json entry 2 (line 7): train/00000002.png" in message
    assert load_metadata(meta)  # fine for the other modes


def test_missing_or_unknown_metadata_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metadata file not found"):
        load_metadata(tmp_path / "nope.json")
    with pytest.raises(MetadataError, match=r"unknown metadata format '.txt'; use .json \(a list\), .jsonl or .csv"):
        load_metadata(_write(tmp_path / "m.txt", "[]"))
    bad = tmp_path / "latin.csv"
    bad.write_bytes(b"file_path,text\na.mp4,caf\xe9\n")
    with pytest.raises(MetadataError, match="not UTF-8"):
        load_metadata(bad)


# --------------------------------------------------------------------------------------------
# DataConfig
# --------------------------------------------------------------------------------------------
def test_config_sizes_and_their_corrections() -> None:
    config = DataConfig(video_sample_size=[480, 832], image_sample_size=512)
    assert config.video_size == (480, 832) and config.image_size == (512, 512)
    assert config.video_sample_size == [480, 832] and config.image_sample_size == [512]  # as given
    assert config.video_side == 631 and config.image_side == 512
    with pytest.warns(UserWarning, match="500x500 is not a multiple of 16: using 496x496"):
        assert DataConfig(video_sample_size=500).video_size == (496, 496)
    with pytest.raises(ValueError, match="one int or"):
        DataConfig(video_sample_size=[1, 2, 3])


def test_config_refuses_what_cannot_work_and_says_what_to_change() -> None:
    with pytest.raises(ValueError) as raised:
        DataConfig(train_mode="t2v", video_sample_n_frames=16, video_sample_stride=0, text_drop_ratio=1.5)
    message = str(raised.value)
    assert "train_mode 't2v' is unknown; choose one of normal, inpaint, i2v, ti2v, control, control_ref" in message
    assert "video_sample_n_frames 16 must be 4k+1" in message
    assert "video_sample_stride must be at least 1" in message and "text_drop_ratio must be between 0 and 1" in message


def test_config_from_the_training_config() -> None:
    train = TrainConfig(train_data_meta="m.json", video_sample_size=[256, 448], train_mode="inpaint", seed=3)
    config = DataConfig.from_mapping(train.to_dict())
    assert config.train_data_meta == "m.json" and config.video_size == (256, 448)
    assert config.train_mode == "inpaint" and config.seed == 3 and config.needs_control is False
    # One declaration: the training config's data defaults are the data layer's.
    assert DataConfig.from_mapping(TrainConfig().to_dict()) == DataConfig()
    assert DataConfig(train_mode="control_ref").needs_control
