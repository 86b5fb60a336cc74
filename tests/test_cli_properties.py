"""A property of ``videox-fun generate`` over its arguments (issue 22), checked with hypothesis.

Whatever the flags hold (numbers of every sign and size, NaN and infinities, odd and non-UTF-8 text, missing,
looping, odd or foreign files), a run ends in one of two ways: exit 0 with a video PyAV plays, or exit 2 with
exactly one line on stderr. Never a traceback, and never a changed file the run did not write: a folder of
decoys (a dataset's metadata, someone's video, links, a loop) is byte-for-byte the same afterwards.

Each example is a valid tiny run (32x32, 5 frames, 2 steps, the packaged model) with up to three flags
changed, so both outcomes occur; runs are in-process through :func:`videox_fun.cli.main`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import av
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from videox_fun.cli import main
from videox_fun.io.video import write_video

BASE = ["--prompt", "a red circle moving right", "--height", "32", "--width", "32", "--frames", "5", "--steps", "2"]
MEDIA_SUFFIXES = (".mp4", ".png")

# Numbers of every sign and size: the ones a tiny run can take quickly, and those past every limit.
HUGE = st.integers(min_value=10**4, max_value=10**30)
NEGATIVE = st.integers(max_value=0)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e300, -1e300, 1e-300, -0.0])
ODD_TEXT = st.sampled_from(["", "   ", "nan", "1e999", "0x10", "a red \udcff circle", "\ufeffa red circle", "--"])
NUMBER_TEXT = st.one_of(ANY_FLOAT.map(repr), ANY_FLOAT.map(str), ODD_TEXT)


def ints(small: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """Integer flag values: ``small`` (fast valid runs), zero and negatives, huge ones, and text that is no int."""
    return st.one_of(small, NEGATIVE, HUGE).map(str) | ODD_TEXT


def decoys(folder: Path) -> Path:
    """A folder of files that no run may change: a dataset's metadata, a video, links, a loop, a FIFO."""
    folder.mkdir()
    (folder / "metadata_train.json").write_text('[{"file_path": "clip.mp4", "text": "a red circle"}]')
    (folder / "clip.mp4").write_bytes(b"someone's video")
    (folder / "clip.json").write_text("{}")
    (folder / "link.mp4").symlink_to(folder / "clip.mp4")
    (folder / "broken.mp4").symlink_to(folder / "nowhere.mp4")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "notes.txt").write_bytes(b"a red \xff circle\n")
    os.mkfifo(folder / "fifo.mp4")
    return folder


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: bytes and mode of files, the target of links, the kind of the rest."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder.parent))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = (path.read_bytes(), path.stat().st_mode)
        else:
            found[key] = ("other", path.stat().st_mode)
    return found


def replaceable(argv: list[str]) -> set[str]:
    """What the run was asked to replace: with ``--overwrite``, the last ``--output`` and its sidecar."""
    outputs = [argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag == "--output"]
    if "--overwrite" not in argv or not outputs:
        return set()
    return {outputs[-1], str(Path(outputs[-1]).with_suffix(".json"))}


# Paths a file flag may be given, by name (resolved in the example's folder): decoys, inputs, odd places.
PATHS = {
    "missing": "no/such/file.mp4",
    "folder": "decoys",
    "metadata": "decoys/metadata_train.json",
    "video_decoy": "decoys/clip.mp4",
    "link": "decoys/link.mp4",
    "broken": "decoys/broken.mp4",
    "loop": "decoys/loop.png",
    "fifo": "decoys/fifo.mp4",
    "not_utf8": "decoys/notes.txt",
    "not_utf8_name": "decoys/\udcff.mp4",
    "image": "media/start.png",
    "video": "media/clip.mp4",
}
OUTPUTS = {  # --output names: fresh ones may be written; the others belong to someone else
    "fresh": "out/clip.mp4",
    "fresh_png": "out/frame.png",
    "fresh_not_utf8": "out/\udcff.mp4",
    "odd_suffix": "out/clip.txt",
    "sidecar_taken": "decoys/metadata_train.mp4",
    "taken": "decoys/clip.mp4",
    "link": "decoys/link.mp4",
    "broken": "decoys/broken.mp4",
    "loop": "decoys/loop.png",
    "fifo": "decoys/fifo.mp4",
    "folder": "decoys",
    "under_a_file": "decoys/notes.txt/clip.mp4",
}


def file_flag(flag: str) -> st.SearchStrategy[list[str]]:
    """``flag`` with one of :data:`PATHS`."""
    return st.sampled_from(sorted(PATHS)).map(lambda name: [flag, PATHS[name]])


FLAGS = st.one_of(
    *(st.tuples(st.just(flag), ints(st.sampled_from([16, 32, 33]))).map(list) for flag in ("--height", "--width")),
    st.tuples(st.just("--frames"), ints(st.integers(1, 9))).map(list),
    st.tuples(st.just("--steps"), ints(st.integers(1, 3))).map(list),
    st.tuples(st.just("--fps"), ints(st.integers(1, 60))).map(list),
    st.tuples(st.just("--seed"), ints(st.integers())).map(list),
    st.tuples(st.just("--riflex-k"), ints(st.integers(1, 8))).map(list),
    st.tuples(st.just("--partial-video-length"), ints(st.integers(2, 4))).map(list),
    *(
        st.tuples(st.just(flag), NUMBER_TEXT).map(list)
        for flag in ("--guidance", "--guidance-2", "--shift", "--strength", "--lora-weight", "--cfg-skip-ratio")
    ),
    st.tuples(st.just("--cache"), st.sampled_from(["teacache", "first-block"])).map(list),
    st.tuples(st.just("--cache-threshold"), NUMBER_TEXT).map(lambda pair: ["--cache", "teacache", *pair]),
    *(
        st.tuples(st.just(flag), st.text(st.characters(blacklist_characters="\x00"), max_size=12) | ODD_TEXT).map(list)
        for flag in ("--prompt", "--negative-prompt", "--device", "--camera")
    ),
    st.sampled_from([["--mode", "t2v"], ["--mode", "i2v"], ["--mode", "v2v"], ["--mode", "control"]]),
    *(file_flag(flag) for flag in ("--image", "--video", "--prompts-file", "--lora-path", "--transformer-path")),
    st.sampled_from(sorted(OUTPUTS)).map(lambda name: ["--output", OUTPUTS[name]]),
    st.sampled_from([["--output-dir", "out/numbered"], ["--output-dir", "decoys/notes.txt"], ["--overwrite"]]),
)


def run(argv: list[str]) -> tuple[int, str]:
    """``videox-fun ARGV`` in this process: (exit code, stderr). An exception escaping it fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exited:  # argparse refusing a value
            code = exited.code if isinstance(exited.code, int) else 1
    return code, err.getvalue()


def written_media(folder: Path) -> list[Path]:
    """Videos and images the run wrote under ``folder`` (outside the decoys and the inputs)."""
    return [
        p
        for p in folder.rglob("*")
        if p.suffix in MEDIA_SUFFIXES and p.is_file() and p.parts[len(folder.parts)] not in ("decoys", "media")
    ]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(changes=st.lists(FLAGS, max_size=3))
def test_every_run_ends_in_a_video_or_one_line_and_never_touches_others_files(changes):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        decoy = decoys(folder / "decoys")
        frames = np.zeros((5, 32, 32, 3), np.uint8)
        frames[:, 8:24, 8:24] = (220, 40, 40)
        write_video(frames[:1], folder / "media" / "start.png")
        write_video(frames, folder / "media" / "clip.mp4")
        before = snapshot(decoy)
        argv = ["generate", *BASE, "--quiet", *(value for change in changes for value in change)]
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            code, err = run(argv)
        finally:
            os.chdir(cwd)
        event(f"exit {code}")  # --hypothesis-show-statistics: how many runs made a video
        assert "Traceback" not in err, err
        allowed = replaceable(argv)
        after = snapshot(decoy)
        assert {k: v for k, v in after.items() if k not in allowed} == {
            k: v for k, v in before.items() if k not in allowed
        }, argv
        if code == 0:
            (media,) = written_media(folder)
            with av.open(str(media)) as container:
                assert sum(1 for _ in container.decode(video=0)) >= 1
        else:
            assert code == 2, (argv, code, err)
            assert len(err.strip().splitlines()) == 1, (argv, err)
