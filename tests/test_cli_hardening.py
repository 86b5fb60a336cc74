"""``videox-fun generate`` against bad input and faults (issue 22): a user's files are never replaced, what cannot
finish is refused before loading, non-finite numbers never make a silent black video, and each failure is one
line on stderr with exit code 2 (Ctrl-C: 130; a full disk: 1), never a traceback.

Runs the real CLI on the packaged tiny model (in-process through :func:`videox_fun.cli.main`, or as a child
process where a signal or a resource limit must reach a real process).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HANG_GUARD_S, frame_count_and_size
from safetensors.torch import load_file, save_file

from videox_fun.api import GenerationResult, write_result
from videox_fun.cli import main
from videox_fun.families import get_family
from videox_fun.io.video import write_video

FAST = ["--steps", "1", "--frames", "5", "--height", "32", "--width", "32", "--quiet"]
PROMPT = ["--prompt", "a red circle moving right"]
NO_MODEL = ["--model", "no/such/model"]  # a check that came after loading would fail on this instead


def generate(*flags: str) -> int:
    """``videox-fun generate --prompt 'a red circle moving right' FLAGS`` in this process; its exit code."""
    return main(["generate", *PROMPT, *flags])


def one_line(err: str) -> str:
    """The single line a refusal prints on stderr (asserted to be one, and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def child(*args: str | bytes, cwd: Path, **kwargs) -> subprocess.Popen:
    """``videox-fun ARGS`` as a child process (stdout unbuffered, so its lines come as printed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "videox_fun.cli", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def default_sigint() -> None:
    """In a child before it runs the command: SIGINT back to its default action (Python then raises on it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` with what it holds: bytes and mode of files, the target of links."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            found[str(path)] = (path.read_bytes(), path.stat().st_mode)
        else:
            found[str(path)] = "folder"
    return found


# -- 1. never replace a file the run did not write ------------------------------------------------------------------
def test_an_existing_output_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the user's own video")
    assert generate("--output", str(out), *NO_MODEL) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: --output") and f"{out} exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"the user's own video"


def test_an_output_whose_sidecar_name_is_taken_is_refused(tmp_path, capsys):
    data = tmp_path / "ds"
    data.mkdir()
    (data / "metadata_train.json").write_text('[{"file_path": "a.mp4", "text": "a red circle"}]')
    before = snapshot(tmp_path)
    assert generate("--output", str(data / "metadata_train.mp4"), *NO_MODEL) == 2
    line = one_line(capsys.readouterr().err)
    assert "metadata_train.json" in line and "exists" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_symlink_or_device_as_output_is_refused_even_with_overwrite(tmp_path, capsys, overwrite):
    target = tmp_path / "target.mp4"
    target.write_bytes(b"what the link points at")
    (tmp_path / "link.mp4").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.mp4")  # not a regular file, like /dev/full
    before = snapshot(tmp_path)
    for name, why in (("link.mp4", "symbolic link"), ("fifo.mp4", "not a regular file")):
        assert generate("--output", str(tmp_path / name), *overwrite, *NO_MODEL) == 2
        assert why in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_run_and_numbered_names_skip_taken_ones(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"an earlier run")
    out.with_suffix(".json").write_text("{}")
    assert generate("--output", str(out), "--overwrite", *FAST) == 0
    assert frame_count_and_size(out) == (5, (32, 32))
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == "a red circle moving right"
    folder = tmp_path / "numbered"
    folder.mkdir()
    (folder / "00000001.json").write_text("a sidecar whose video was deleted")
    assert generate("--output-dir", str(folder), *FAST) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["00000001.json", "00000002.json", "00000002.mp4"]


def test_the_writer_never_replaces_a_file_that_appeared_during_the_run(tmp_path):
    frames = torch.zeros((5, 32, 32, 3), dtype=torch.uint8)
    result = GenerationResult(frames, frames, {"prompt": "x"}, get_family("wan").modes["t2v"], fps=8)
    (tmp_path / "late.mp4").write_bytes(b"written meanwhile by someone else")
    (tmp_path / "side.json").write_text("someone else's")
    before = snapshot(tmp_path)
    for name in ("late.mp4", "side.mp4"):
        with pytest.raises(FileExistsError, match="exists"):
            write_result(result, tmp_path / name, overwrite=False)
    assert snapshot(tmp_path) == before  # and nothing half-written beside them


# -- 2. sizes that cannot finish are refused before any allocation ---------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--height", "100000"], "--height 100000: at most 8192"),
        (["--frames", "100001"], "--frames 100001: at most 1025"),
        (["--height", "4096", "--width", "4096", "--frames", "1001"], "GiB of memory"),
    ],
)
def test_sizes_that_cannot_finish_are_refused_before_loading(flags, message, capsys):
    assert generate(*flags) == 2  # the packaged model: a refusal after loading would print its note first
    captured = capsys.readouterr()
    assert message in one_line(captured.err) and "note: model" not in captured.out


# -- 3. non-finite numbers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag",
    ["--guidance", "--guidance-2", "--shift", "--strength", "--lora-weight", "--lora-high-weight",
     "--cfg-skip-ratio", "--cache-threshold"],
)  # fmt: skip
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_flag_refuses_non_finite_values(flag, value, capsys):
    with pytest.raises(SystemExit) as exited:
        generate(f"{flag}={value}", *NO_MODEL)  # "=": argparse reads a lone -inf as a flag
    assert exited.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert flag in line and "finite" in line


def test_latents_that_turn_non_finite_stop_the_run_naming_the_step(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert generate("--output", str(out), "--guidance", "1e300", *FAST) == 2
    line = one_line(capsys.readouterr().err)
    assert "non-finite" in line and "step 1 of 1" in line and "--guidance" in line
    assert list(tmp_path.iterdir()) == []  # no black video, no sidecar


def test_a_lora_file_holding_nan_is_refused_naming_the_file_and_a_key(tmp_path, capsys):
    from videox_fun.models.wan.transformer import WanTransformer3DModel
    from videox_fun.registry import resolve_model
    from videox_fun.training.lora import add_lora, save_lora_file

    adapted = WanTransformer3DModel.from_pretrained(resolve_model(None, "t2v"))
    add_lora(adapted, rank=2, alpha=2.0, targets=("q",))
    lora = save_lora_file(adapted.state_dict(), tmp_path / "lora.safetensors", rank=2, alpha=2.0)
    tensors = load_file(str(lora))
    key = next(name for name in sorted(tensors) if tensors[name].ndim == 2)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(lora))
    out = tmp_path / "clip.mp4"
    assert generate("--lora-path", str(lora), "--output", str(out), *FAST) == 2
    line = one_line(capsys.readouterr().err)
    assert str(lora) in line and key in line and "non-finite" in line
    assert not out.exists()


# -- 5. prompts that are not UTF-8 -------------------------------------------------------------------------------------
def test_a_prompt_that_is_not_utf8_is_refused_before_loading(tmp_path):
    done = child("generate", "--prompt", b"a red \xff circle", *FAST, cwd=tmp_path)
    out, err = done.communicate(timeout=HANG_GUARD_S)
    assert done.returncode == 2, err
    line = one_line(err.decode())
    assert "--prompt" in line and "UTF-8" in line and "0xff" in line
    assert b"note: model" not in out and not (tmp_path / "samples").exists()


def test_a_prompts_file_that_is_not_utf8_is_named(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red circle moving right\na blue \xff square\n")
    assert main(["generate", "--prompts-file", str(prompts), *NO_MODEL]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(prompts) in line and "UTF-8" in line and "line 2" in line


# -- 6. a full disk and Ctrl-C: one line each -------------------------------------------------------------------------
def limit_file_size() -> None:
    """In the child: files may grow to 1 KiB (the video is larger), and going past fails the write (EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_write_that_fails_for_lack_of_room_is_one_line(tmp_path):
    done = child("generate", *PROMPT, *FAST, "--output", "clip.mp4", cwd=tmp_path, preexec_fn=limit_file_size)
    _, err = done.communicate(timeout=HANG_GUARD_S)
    assert done.returncode == 1, err
    line = one_line(err.decode())
    assert "could not write" in line and "clip.mp4" in line
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_a_full_disk_is_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it up to the last block
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        done = child("generate", *PROMPT, *FAST, "--output", str(disk / "clip.mp4"), cwd=tmp_path)
        _, err = done.communicate(timeout=HANG_GUARD_S)
        assert done.returncode == 1, err
        line = one_line(err.decode())
        assert "could not write" in line and "No space left on device" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("moment", ["loading", "sampling"])
def test_ctrl_c_stops_within_a_step_with_one_line(tmp_path, moment):
    quiet = ["--quiet"] if moment == "loading" else []  # sampling: its progress bar says when it has started
    # As from a terminal: a suite started in the background (``cmd &`` in a script) runs with SIGINT ignored,
    # and a child keeps an ignored signal ignored, as it should; Ctrl-C reaches a foreground command.
    run = child(
        "generate", *PROMPT, "--steps", "1000", "--frames", "5", *quiet, cwd=tmp_path, preexec_fn=default_sigint
    )
    assert run.stdout is not None and run.stderr is not None
    assert b"note: model" in run.stdout.readline()  # printed as the model starts loading
    seen = b""
    while moment == "sampling" and b"denoising" not in seen:
        chunk = os.read(run.stderr.fileno(), 4096)
        assert chunk, "the run ended before sampling"
        seen += chunk
    run.send_signal(signal.SIGINT)
    # No wall-clock bound (shared machines stall): a run that went on would finish its 1,000 steps and
    # write the video, which the last line forbids; the timeout only guards against a hang.
    _, err = run.communicate(timeout=HANG_GUARD_S)
    assert run.returncode == 130, err
    # One line says so (the progress bar may redraw itself once more as the interpreter exits), no traceback.
    lines = (seen + err).decode().replace("\r", "\n").strip().splitlines()
    said = [line for line in lines if "error:" in line]  # the bar leaves its line open: the error may follow on it
    assert len(said) == 1 and said[0].endswith("error: interrupted (Ctrl-C); nothing was left half-written"), said
    assert "Traceback" not in (seen + err).decode()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no video, no half-written temporary


# -- 7. misleading or missing messages ------------------------------------------------------------------------------
def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffa red circle moving right\n", encoding="utf-8")
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompts-file", str(prompts), "--output", str(out), *FAST]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == "a red circle moving right"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt", "   "], "--prompt is empty"),
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "x", "--prompts-file", "p.txt"], "--prompt and --prompts-file together"),
        (["--prompt", "x", "--camera", "pan_sideways"], "built-in trajectories: static, pan_left"),
    ],
)
def test_prompt_and_camera_mistakes_say_what_is_wrong(flags, message, capsys):
    assert main(["generate", *flags, *NO_MODEL]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_symlink_loop_is_named_as_one(tmp_path, capsys):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    for flags in (["--prompt", "x", "--image", str(loop)], ["--prompts-file", str(loop)]):
        assert main(["generate", *flags, *NO_MODEL]) == 2
        line = one_line(capsys.readouterr().err)
        assert "symlink loop" in line and "not found" not in line


def test_image_with_video_says_the_two_do_not_go_together(tmp_path, capsys):
    frames = np.zeros((5, 32, 32, 3), np.uint8)
    image, video = write_video(frames[:1], tmp_path / "a.png"), write_video(frames, tmp_path / "v.mp4")
    # The packaged InP model (never loaded: recognition reads its config) has no mode that reads both.
    assert generate("--model", "Wan2.1-Fun-Tiny-InP", "--image", str(image), "--video", str(video)) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "note: model" not in captured.out
    assert "--image and --video together: none of the modes t2v, i2v" in line and "takes no --" in line
