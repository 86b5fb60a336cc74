"""Video / image IO, checked against an independent PyAV decode of what was written."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import decode_video
from PIL import Image

from videox_fun.io import (
    VideoReadError,
    frames_to_tensor,
    read_image,
    read_video,
    tensor_to_frames,
    video_info,
    write_video,
)


def _smooth_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """A moving colour gradient: smooth enough that lossy codecs keep it within a few levels."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(num_frames):
        r = 128 + 80 * np.sin((xs + 3 * t) / width * np.pi)
        g = 128 + 80 * np.cos((ys + 2 * t) / height * np.pi)
        b = np.full_like(xs, 60 + 8 * t)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)  # (F, H, W, 3)


def _mean_abs_error(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_mp4_round_trip_matches_independent_pyav_decode(tmp_path: Path) -> None:
    frames = _smooth_frames(9, 48, 64)
    written = write_video(torch.from_numpy(frames), tmp_path / "sub" / "clip.mp4", fps=8)
    assert written == tmp_path / "sub" / "clip.mp4" and written.is_file()
    assert not [p for p in written.parent.iterdir() if ".partial" in p.name]

    decoded = decode_video(written)
    assert decoded.shape == (9, 48, 64, 3)
    assert _mean_abs_error(decoded, frames) < 3.0
    with av.open(str(written)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"

    ours = read_video(written)
    assert ours.dtype == torch.uint8 and ours.shape == (9, 48, 64, 3)
    assert np.array_equal(ours.numpy(), decoded)
    info = video_info(written)
    assert (info.num_frames, info.height, info.width) == (9, 48, 64) and info.fps == pytest.approx(8)


def test_the_same_frames_encode_to_the_same_file(tmp_path: Path) -> None:
    # Noise with a square: with x264's mb-tree on, 60 encodes of such a clip gave 12 different videos.
    frames = np.random.default_rng(0).integers(0, 255, (17, 64, 64, 3), dtype=np.uint8)
    frames[:, 20:40, 20:40] = 200
    files = {write_video(frames, tmp_path / f"{i}.mp4", fps=8).read_bytes() for i in range(30)}
    assert len(files) == 1


def test_read_video_stride_count_and_resize(tmp_path: Path) -> None:
    frames = _smooth_frames(10, 32, 48)
    path = write_video(frames, tmp_path / "clip.mp4")
    decoded = decode_video(path)

    strided = read_video(path, num_frames=3, stride=2)
    assert np.array_equal(strided.numpy(), decoded[[0, 2, 4]])
    assert read_video(path, num_frames=50).shape[0] == 10  # a short source gives what it has

    resized = read_video(path, num_frames=2, size=(16, 40))
    assert resized.shape == (2, 16, 40, 3)
    cropped = read_video(path, num_frames=2, size=(16, 16), crop=True)
    expected = np.asarray(Image.fromarray(decoded[0][:, 8:40]).resize((16, 16), Image.BICUBIC))
    assert np.array_equal(cropped[0].numpy(), expected)


def test_webm_and_gif(tmp_path: Path) -> None:
    frames = _smooth_frames(5, 32, 32)
    webm = write_video(frames, tmp_path / "clip.webm", fps=10)
    decoded = decode_video(webm)
    assert decoded.shape == (5, 32, 32, 3) and _mean_abs_error(decoded, frames) < 4.0

    gif = write_video(frames, tmp_path / "clip.gif", fps=10)
    decoded = decode_video(gif)
    assert decoded.shape == (5, 32, 32, 3) and _mean_abs_error(decoded, frames) < 6.0
    assert np.array_equal(read_video(gif).numpy(), decoded)


def test_image_folder_single_image_and_modes(tmp_path: Path) -> None:
    frames = _smooth_frames(12, 20, 24)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # names whose plain sort would put 10 before 2
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    video = read_video(folder)
    assert np.array_equal(video.numpy(), frames)
    assert np.array_equal(read_video(folder, num_frames=2, stride=5).numpy(), frames[[0, 5]])

    single = read_video(folder / "frame_3.png")
    assert single.shape == (1, 20, 24, 3) and np.array_equal(single[0].numpy(), frames[3])

    rgba = np.concatenate([frames[0], np.full((20, 24, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png").numpy(), frames[0])
    Image.fromarray(frames[0][..., 0], "L").save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (20, 24, 3) and np.array_equal(gray[..., 1].numpy(), frames[0][..., 0])
    assert read_image(tmp_path / "gray.png", size=(10, 12)).shape == (10, 12, 3)


def test_one_frame_becomes_png(tmp_path: Path) -> None:
    frame = _smooth_frames(1, 16, 16)
    written = write_video(frame, tmp_path / "still.mp4")
    assert written == tmp_path / "still.png" and not (tmp_path / "still.mp4").exists()
    assert np.array_equal(np.asarray(Image.open(written)), frame[0])  # PNG is lossless


def test_odd_size_is_padded_with_a_warning(tmp_path: Path) -> None:
    frames = _smooth_frames(3, 31, 45)
    with pytest.warns(UserWarning, match="odd"):
        path = write_video(frames, tmp_path / "odd.mp4")
    decoded = decode_video(path)
    assert decoded.shape == (3, 32, 46, 3)
    assert _mean_abs_error(decoded[:, :31, :45], frames) < 3.0
    # the padding repeats the edge, so the extra row looks like the last one
    assert _mean_abs_error(decoded[:, 31], decoded[:, 30]) < 4.0


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.mp4"):
        read_video(tmp_path / "nowhere.mp4")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        read_image(tmp_path / "nowhere.png")

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoReadError, match=r"corrupt\.mp4"):
        read_video(corrupt)
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"\x89PNG garbage")
    with pytest.raises(VideoReadError, match=r"bad\.png"):
        read_video(bad_image)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="empty"):
        read_video(empty)
    assert issubclass(VideoReadError, ValueError)


def test_truncated_video_is_an_error(tmp_path: Path) -> None:
    frames = _smooth_frames(9, 32, 32)
    path = write_video(frames, tmp_path / "clip.mp4")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # the moov atom (index) is at the end: unreadable
    with pytest.raises(VideoReadError, match=r"cut\.mp4"):
        read_video(cut)


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="shape"):
        write_video(np.zeros((2, 8, 8), np.uint8), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="format"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "x.xyz")
    assert not list(tmp_path.iterdir())


def test_frames_tensor_conversion() -> None:
    frames = torch.randint(0, 256, (3, 4, 5, 3), dtype=torch.uint8)
    video = frames_to_tensor(frames)
    assert video.shape == (3, 3, 4, 5) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert video[:, 1, 2, 3].tolist() == pytest.approx((frames[1, 2, 3].float() / 127.5 - 1).tolist())
    assert torch.equal(tensor_to_frames(video), frames)
    clamped = tensor_to_frames(torch.tensor([-3.0, 0.0, 3.0]).view(3, 1, 1, 1))
    assert clamped.flatten().tolist() == [0, 128, 255]


def test_16_bit_and_float_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.array([[0, 257, 32896, 65535], [128, 129, 65406, 32768]], dtype=np.uint16)
    expected = np.array([[0, 1, 128, 255], [0, 1, 254, 128]], dtype=np.uint8)  # round(v / 257)
    Image.fromarray(levels).save(tmp_path / "gray16.png")  # PIL mode I;16, as a 16-bit PNG
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    image = read_image(tmp_path / "gray16.png")
    assert image.shape == (2, 4, 3) and np.array_equal(image.numpy(), np.repeat(expected[..., None], 3, axis=-1))
    # a mid-grey 16-bit mask or video frame reads as mid-grey, not as white
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "mid.png")
    assert read_video(tmp_path / "mid.png").unique().tolist() == [128]

    for name, data in [
        ("big_endian.tif", levels.astype(">u2")),  # I;16B
        ("int32.tif", levels.astype(np.int32)),  # I: what older Pillow releases give 16-bit PNGs
        ("float.tif", levels.astype(np.float32) / 65535),  # F: 0..1
    ]:
        Image.fromarray(data).save(tmp_path / name)
        assert np.array_equal(read_image(tmp_path / name)[..., 0].numpy(), expected), name

    # values outside the range a mode is scaled by fail, naming the file, instead of being clipped
    for name, data in [
        ("hdr.tif", np.array([[0.0, 2.5]], np.float32)),
        ("nan.tif", np.array([[0.0, np.nan]], np.float32)),
        ("wide.tif", np.array([[0, 70000]], np.int32)),
    ]:
        Image.fromarray(data).save(tmp_path / name)
        with pytest.raises(VideoReadError, match=rf"{name}.*(0\.\.1|NaN|0\.\.65535)"):
            read_image(tmp_path / name)


def test_stretching_to_another_aspect_ratio_is_said_once(tmp_path, caplog):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((20, 400, 3), 90, dtype=np.uint8)).save(wide)
    with caplog.at_level(logging.WARNING, logger="videox_fun.io.video"):
        assert read_image(wide, size=(64, 64)).shape == (64, 64, 3)
        read_image(wide, size=(64, 64))
        read_image(wide, size=(20, 400))  # same aspect: no note
    notes = [r.message for r in caplog.records if "stretched" in r.message]
    assert notes == ["input frames of 400x20 are stretched to 64x64 (aspect 20.00 -> 1.00)"]
