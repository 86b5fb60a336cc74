"""Video and image reading / writing with PyAV and PIL.

Frames travel as ``uint8`` tensors of shape ``(F, H, W, 3)`` (RGB). Models take float videos of
shape ``(3, F, H, W)`` in ``[-1, 1]``; :func:`frames_to_tensor` / :func:`tensor_to_frames` convert.

Readers accept a video file (mp4, webm, mkv, mov, avi, gif...), a folder of images (one frame per
image, in natural name order) or a single image file (one frame); 16-bit and float grey images
are scaled to 8 bits, never clipped. Writers put H.264 mp4 (or VP9 webm / gif by suffix) and write
every file under a temporary name first, so a crash never leaves a half-written video behind under
the real name.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .files import atomic_path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Containers written with H.264 (libx264, yuv420p); .webm gets VP9, .gif is written by PIL.
H264_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
VIDEO_SUFFIXES = (*H264_SUFFIXES, ".webm", ".gif")


class VideoReadError(ValueError):
    """A video or image file that exists but cannot be decoded."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream (``num_frames`` may be 0 when unknown)."""

    num_frames: int
    fps: float
    height: int
    width: int


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _resize(frame: np.ndarray, size: tuple[int, int] | None, crop: bool) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 frame to ``size=(height, width)`` (bicubic), center-cropping if asked."""
    if size is None:
        return frame
    height, width = size
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    image = Image.fromarray(frame)
    if not crop:
        _note_stretch(frame.shape[:2], (height, width))
    if crop:
        # Crop the largest centered box with the target aspect ratio, so nothing is stretched.
        src_w, src_h = image.size
        scale = min(src_w / width, src_h / height)
        crop_w, crop_h = round(width * scale), round(height * scale)
        left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image.resize((width, height), Image.BICUBIC))


STRETCH_TOLERANCE = 0.05  # aspect ratios this close (5 %) are resized without a note


@functools.lru_cache(maxsize=64)
def _note_stretch(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> None:
    """Say once per size pair that frames of another aspect ratio are stretched (VideoX-Fun does the same)."""
    source_aspect, target_aspect = source_hw[1] / source_hw[0], target_hw[1] / target_hw[0]
    if abs(source_aspect / target_aspect - 1) > STRETCH_TOLERANCE:
        logger.warning(
            "input frames of %dx%d are stretched to %dx%d (aspect %.2f -> %.2f)",
            source_hw[1], source_hw[0], target_hw[1], target_hw[0], source_aspect, target_aspect,
        )  # fmt: skip


# PIL modes of one-channel images deeper than 8 bits, which ``convert("RGB")`` would clip at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _deep_gray_to_uint8(image: Image.Image, path: Path) -> np.ndarray:
    """An ``I;16*`` / ``I`` / ``F`` image as ``(H, W)`` uint8, scaled by its value range, never clipped.

    16-bit (``I;16*``, and ``I``, the mode older Pillow releases give 16-bit PNGs) maps 0..65535
    to 0..255 by ``round(v / 257)``, so 65535 stays white and 257 * n reads back as n. Float
    (``F``) maps 0..1 to 0..255. An ``I`` image with values outside 0..65535 or an ``F`` image
    outside 0..1 (or with NaN / inf) has no range to scale by: it fails, naming the range it
    holds, rather than coming out clipped.
    """
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise VideoReadError(f"cannot read float image {path}: it holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise VideoReadError(
                f"cannot read float image {path}: values span {low}..{high}; only 0..1 is scaled to 8 bits"
            )
        return np.rint(values * 255.0).astype(np.uint8)
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise VideoReadError(
            f"cannot read {image.mode} image {path}: values span {low}..{high}; only 0..65535 is scaled to 8 bits"
        )
    return ((values + 128) // 257).astype(np.uint8)  # round(v / 257): no exact halves, 257 is odd


def _open_image_rgb(path: Path) -> np.ndarray:
    """Decode one image file as ``(H, W, 3)`` uint8 RGB (RGBA, L, P... are converted).

    16-bit and float grey images are scaled to 8 bits (:func:`_deep_gray_to_uint8`), not clipped.
    """
    try:
        with Image.open(path) as image:
            if image.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
                gray = _deep_gray_to_uint8(image, path)
                return np.repeat(gray[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"))
    except VideoReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise VideoReadError(f"cannot decode image {path}: {err}") from err


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None, crop: bool = False) -> torch.Tensor:
    """Read an image as a uint8 tensor ``(H, W, 3)`` (RGB), optionally resized to ``size=(height, width)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return torch.from_numpy(_resize(_open_image_rgb(path), size, crop).copy())


def letterbox(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (h, w, 3) -> (height, width, 3): resized to fit, keeping its aspect ratio, centred on black (as
    Wan-Animate's ``padding_resize`` places its reference image)."""
    h, w = image.shape[:2]
    size = (height, int(height / h * w)) if h / w > height / width else (int(width / w * h), width)
    pixels = image.permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    resized = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    resized = resized.round().clamp(0, 255)
    canvas = torch.zeros(height, width, 3, dtype=torch.uint8)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    canvas[top : top + size[0], left : left + size[1]] = resized[0].permute(1, 2, 0).to(torch.uint8)
    return canvas


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _decode_container(path: Path) -> Iterator[np.ndarray]:
    """Yield the RGB frames of a video file; any decoder failure becomes a :class:`VideoReadError`."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoReadError(f"cannot open video {path}: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoReadError(f"cannot decode video {path}: {err}") from err


def _select(frames: Iterator[np.ndarray], num_frames: int | None, stride: int, start: int = 0) -> Iterator[np.ndarray]:
    """Keep every ``stride``-th frame from ``start`` on; stop once ``num_frames`` are taken (no more is decoded)."""
    taken = 0
    for index, frame in enumerate(frames):
        if index < start or (index - start) % stride:
            continue
        yield frame
        taken += 1
        if num_frames is not None and taken >= num_frames:
            return


def _image_frames(files: list[Path]) -> Iterator[np.ndarray]:
    for file in files:
        yield _open_image_rgb(file)


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    crop: bool = False,
    start: int = 0,
) -> torch.Tensor:
    """Read a video, an image folder or a single image as a uint8 tensor ``(F, H, W, 3)``.

    ``start`` skips the first frames (for a clip of a longer video), ``stride`` then keeps every
    n-th frame, ``num_frames`` caps how many are returned (fewer come back when the source is
    shorter; check ``len``). ``size=(height, width)`` resizes every frame
    (bicubic); with ``crop=True`` the frame is center-cropped to the target aspect ratio first.
    Raises ``FileNotFoundError`` for a missing path and :class:`VideoReadError` for a file that
    cannot be decoded, both naming the path.
    """
    path = Path(path)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")

    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise VideoReadError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        source = _image_frames(files)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        source = _image_frames([path])
    else:
        source = _decode_container(path)

    try:
        frames = [_resize(frame, size, crop) for frame in _select(source, num_frames, stride, start)]
    finally:
        source.close()  # closes the container now, not whenever the generator is collected
    if not frames:
        raise VideoReadError(f"no frames could be decoded from {path}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoReadError(f"frames of {path} differ in size {sorted(shapes)}; pass size=(height, width)")
    return torch.from_numpy(np.stack(frames))  # (F, H, W, 3)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size of a video file, read from its header (no decoding)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(
                num_frames=int(stream.frames or 0),
                fps=float(rate) if rate else 0.0,
                height=stream.codec_context.height,
                width=stream.codec_context.width,
            )
    except (av.FFmpegError, OSError) as err:
        raise VideoReadError(f"cannot open video {path}: {err}") from err


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _as_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Validate ``(F, H, W, 3)`` uint8 frames and return them as a contiguous numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}; convert a [-1, 1] video with tensor_to_frames()")
    if frames.shape[0] == 0:
        raise ValueError("no frames to write")
    return np.ascontiguousarray(frames)


def _pad_even(frames: np.ndarray, path: Path) -> np.ndarray:
    """yuv420p subsamples chroma 2x2, so H and W must be even: replicate the last row / column."""
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frames
    warnings.warn(
        f"{path.name}: size {height}x{width} is odd; yuv420p needs even sizes, so the frames are padded "
        f"to {height + pad_h}x{width + pad_w} by repeating the last row / column",
        stacklevel=4,  # point at the caller of write_video
    )
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode_av(frames: np.ndarray, path: Path, fps: float, crf: int, codec: str) -> None:
    """Encode frames with PyAV: libx264 or libvpx-vp9, yuv420p, constant quality ``crf``."""
    frames = _pad_even(frames, path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf)}
        if codec == "libx264":
            # x264's macroblock-tree rate control gave different bitstreams (and pixels) for the same
            # frames: 12 variants in 60 encodes of one clip, single-threaded too; without it, one.
            options["x264-params"] = "mbtree=0"
        if codec == "libvpx-vp9":
            options["b"] = "0"  # VP9 is in constant-quality mode only with a zero target bit rate
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def _encode_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    """GIF through PIL: it builds an adaptive palette per frame (PyAV's gif encoder needs pal8 input)."""
    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = max(10, round(1000 / fps / 10) * 10)  # GIF delays are in 1/100 s
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def _write_image(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame).save(path)  # PIL picks the format from the suffix (kept by the temporary name)


def write_video(
    frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 16, crf: int = 18, overwrite: bool = True
) -> Path:
    """Write uint8 frames ``(F, H, W, 3)`` and return the path actually written.

    The suffix picks the format: ``.mp4`` / ``.mkv`` / ``.mov`` / ``.avi`` are H.264 (libx264,
    yuv420p, quality ``crf``), ``.webm`` is VP9, ``.gif`` is an animated GIF, and an image suffix
    (``.png``, ``.jpg``...) takes a single frame. A single frame given a video suffix is written
    as a PNG next to it (the returned path says so). Odd sizes are padded to even ones for
    yuv420p with a warning. Parent folders are created; the file appears under its final name
    only once complete, and with ``overwrite`` False only if no file has that name by then
    (``FileExistsError`` otherwise).
    """
    array = _as_frames(frames)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES and suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot tell the format of {path}: use one of {VIDEO_SUFFIXES + IMAGE_SUFFIXES}")
    if suffix in IMAGE_SUFFIXES and len(array) > 1:
        raise ValueError(f"{path} is an image name but {len(array)} frames were given; use .mp4, .webm or .gif")
    if len(array) == 1 and suffix in VIDEO_SUFFIXES and suffix != ".gif":
        logger.info("one frame given for %s: writing a PNG instead", path)
        path, suffix = path.with_suffix(".png"), ".png"
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")

    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary keeps the suffix, by which the muxer / PIL pick the format.
    with atomic_path(path, overwrite=overwrite) as temporary:
        if suffix in IMAGE_SUFFIXES:
            _write_image(array[0], temporary)
        elif suffix == ".gif":
            _encode_gif(array, temporary, fps)
        else:
            _encode_av(array, temporary, fps, crf, "libvpx-vp9" if suffix == ".webm" else "libx264")
    return path


def write_image(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 image ``(H, W, 3)``; the suffix picks the format (``.png`` if not an image suffix)."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        path = path.with_suffix(".png")
    return write_video(array[None], path)


# --------------------------------------------------------------------------------------------
# Model-side conversion
# --------------------------------------------------------------------------------------------


def frames_to_tensor(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames ``(F, H, W, 3)`` -> float32 video ``(3, F, H, W)`` in ``[-1, 1]``."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {frames.dtype}")
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)  # (3, F, H, W)


def tensor_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Float video ``(3, F, H, W)`` in ``[-1, 1]`` -> uint8 frames ``(F, H, W, 3)`` (clamped, rounded)."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must have shape (3, F, H, W), got {tuple(video.shape)}")
    pixels = (video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()  # (F, H, W, 3)
