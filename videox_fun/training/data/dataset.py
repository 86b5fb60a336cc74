"""The training dataset: metadata entries decoded with PyAV into ``(3, F, H, W)`` samples in [-1, 1].

A sample is a dict::

    pixel_values          float (3, F, H, W) in [-1, 1]   F = 1 for images, 4k+1 for videos
    control_pixel_values  float (3, F, H, W)               when the entry has a control video
    camera_poses          float64 (F, 19)                  when its control file is a camera trajectory (.txt)
    mask                  float (1, F, H, W), 1 = generate  with train_mode "inpaint" or "vace"
    face_pixel_values     float (3, F, 512, 512)           Animate modes: the face crops (face_file_path)
    ref_pixel_values      float (3, H, W)                  Animate modes: ref_file_path letterboxed to the
                                                           clip's size, else a frame of the clip drawn per sample
    background_pixel_values  float (3, F, H, W)            Animate modes: background_file_path (zeros without)
    person_mask           float (1, F, H, W), 1 = person   Animate modes: mask_file_path (ones without)
    text                  str ("" with probability text_drop_ratio)
    text_dropped          bool
    data_type             "video" | "image"
    file_path             str, the file that was decoded
    index                 int, its entry
    skipped               {path: reason} of files that failed on the way to this sample

Every random choice of a sample (text dropout, clip start, mask) is drawn from
``(seed, epoch, index)``, so a sample is the same in every process and after a resume.

Bad files: a missing or unreadable file is skipped with a :class:`BadFileWarning` and counted in
``dataset.bad_files`` ({path: reason}). Building the sampler checks every file's header once,
so most bad files are known before the first step; a file that fails later, while decoding, is
replaced by another entry of the same bucket. When more than ``max_bad_share`` of the files
checked are bad (judged once at least 20 files, or all, have been checked), loading stops with a
:class:`TooManyBadFilesError` that lists them.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ...io.camera import read_camera_trajectory
from ...io.video import VideoReadError, frames_to_tensor, letterbox, read_image, read_video, video_info
from .buckets import Bucket, BucketKey, entry_key, plan_batch
from .config import ANIMATE_MODES, DataConfig
from .masks import random_generate_mask
from .metadata import MetaEntry, load_metadata

MIN_JUDGED = 20  # files checked before the bad share is judged (or all of them, if fewer)
MAX_SUBSTITUTES = 3  # other entries tried when a file fails while decoding
WARN_EACH = 20  # bad files warned about one by one; later ones are only counted
SHOWN_IN_ERROR = 20  # bad files listed in TooManyBadFilesError
FACE_SIZE = 512  # side of the face crops Wan2.2-Animate's motion encoder takes (its preprocessing writes them so)


class BadFileWarning(UserWarning):
    """A data file was skipped because it is missing or cannot be decoded."""


class TooManyBadFilesError(ValueError):
    """More than ``max_bad_share`` of the data files are missing or unreadable.

    A ValueError: bad input, which the command line reports as one message (exit code 2), not a traceback.
    """


class BadFileError(Exception):
    """One file of an entry failed (internal: turned into a warning and a count)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class EntryInfo:
    """What a file's header says: size and frame count (1 for images)."""

    height: int
    width: int
    num_frames: int


def _guarded(path: Path, action: Any) -> Any:
    """Run ``action()``; a missing or unreadable file becomes a :class:`BadFileError` for ``path``."""
    try:
        return action()
    except (OSError, VideoReadError) as err:  # FileNotFoundError and PIL's errors are OSErrors
        raise BadFileError(path, str(err)) from err


def _count_frames(path: Path) -> int:
    """Frames of a video whose header does not say (webm, some gifs): count packets, decode nothing."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except (av.FFmpegError, IndexError) as err:
        raise VideoReadError(f"cannot count the frames of {path}: {err}") from err


def _video_header(path: Path) -> EntryInfo:
    info = video_info(path)
    frames = info.num_frames or _count_frames(path)
    if frames < 1 or info.height < 1 or info.width < 1:
        raise VideoReadError(f"{path} has no frames")
    return EntryInfo(info.height, info.width, frames)


def _image_header(path: Path) -> EntryInfo:
    with Image.open(path) as image:  # reads the header only
        width, height = image.size
    return EntryInfo(height, width, 1)


def is_camera_file(path: Path) -> bool:
    """Whether a control file is a camera trajectory (RealEstate10K-style lines in a .txt), not a video."""
    return path.suffix.lower() == ".txt"


def _probe(entry: MetaEntry) -> EntryInfo:
    """Check that an entry's files exist and open; raise :class:`BadFileError` naming the one that does not."""
    if entry.is_video:
        info = _guarded(entry.path, lambda: _video_header(entry.path))
    elif entry.width and entry.height:  # the metadata gives the size: no need to open the image
        if not entry.path.is_file():
            raise BadFileError(entry.path, "file not found")
        info = EntryInfo(entry.height, entry.width, 1)
    else:
        info = _guarded(entry.path, lambda: _image_header(entry.path))
    control = entry.control_path
    if control is not None:
        if not control.is_file():
            raise BadFileError(control, "control file not found")
        if is_camera_file(control):  # a camera trajectory: one pose per frame, any count (the last one repeats)
            _guarded(control, lambda: read_camera_trajectory(control))
        elif entry.is_video:  # a clip must fit in both videos
            control_info = _guarded(control, lambda: _video_header(control))
            info = EntryInfo(info.height, info.width, min(info.num_frames, control_info.num_frames))
    for name, path in entry.extra_paths:
        if not path.is_file():
            raise BadFileError(path, f"{name} not found")
        if entry.is_video and name != "ref_file_path":  # the clip must fit in the Animate videos too
            frames = _guarded(path, functools.partial(_video_header, path)).num_frames
            info = EntryInfo(info.height, info.width, min(info.num_frames, frames))
    return info


def sample_seeds(seed: int, epoch: int, index: int) -> list[np.random.SeedSequence]:
    """The seeds of entry ``index``'s random choices in ``epoch``: text dropout, clip start, mask, reference frame."""
    return np.random.SeedSequence([seed, epoch, index]).spawn(4)  # spawned children depend on their index only


def drops_text(seed: int, epoch: int, index: int, ratio: float) -> bool:
    """Whether entry ``index`` trains with the empty prompt in ``epoch`` (``text_drop_ratio`` ``ratio``): drawn from
    (seed, epoch, index) alone, so a latent cache's reader draws what decoding draws."""
    return bool(np.random.default_rng(sample_seeds(seed, epoch, index)[0]).random() < ratio)


class VideoDataset(Dataset):
    """Videos and images of a metadata file, decoded at the size their batch's bucket asks for.

    Index it with the :class:`~videox_fun.training.data.buckets.SampleRequest` objects a
    :class:`~videox_fun.training.data.buckets.BucketBatchSampler` yields; a plain int decodes at
    the entry's own bucket (full size, no random size) in epoch ``dataset.epoch``. Returns a
    sample dict (see the module docstring), or None when the entry and its substitutes all fail.
    """

    def __init__(self, config: DataConfig, entries: list[MetaEntry] | None = None, progress: bool = True) -> None:
        if entries is None:
            if config.train_data_meta is None:
                raise ValueError("train_data_meta is not set: give the metadata file (.json or .csv) of the data")
            entries = load_metadata(
                config.train_data_meta, config.train_data_dir, config.needs_control, config.required_fields
            )
        if config.video_repeat > 0:  # VideoX-Fun: images once, then the videos video_repeat times
            entries = [e for e in entries if not e.is_video] + [e for e in entries if e.is_video] * config.video_repeat
        self.config = config
        self.entries = entries
        self.progress = progress
        self.epoch = 0
        self.bad_files: dict[str, str] = {}
        self._distinct = len(set(entries))  # files, counting a repeated video once
        self._bad: set[MetaEntry] = set()
        self._checked: set[MetaEntry] = set()
        self._infos: dict[MetaEntry, EntryInfo | None] = {}
        self._keys: list[BucketKey | None] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """The epoch plain-int indexing draws its random choices for."""
        self.epoch = epoch

    # -- bad files -------------------------------------------------------------------------------
    def _record_bad(self, entry: MetaEntry, error: BadFileError) -> None:
        self._checked.add(entry)
        if entry in self._bad:
            return
        self._bad.add(entry)
        self.bad_files[str(error.path)] = error.reason
        if len(self._bad) <= WARN_EACH:
            named = error.reason if str(error.path) in error.reason else f"{error.path}: {error.reason}"
            warnings.warn(f"skipping {entry.where}: {named}", BadFileWarning, stacklevel=3)
        elif len(self._bad) == WARN_EACH + 1:
            message = "more bad files are skipped without a warning each; see dataset.bad_files"
            warnings.warn(message, BadFileWarning, stacklevel=3)

    def check_bad_share(self) -> None:
        """Raise :class:`TooManyBadFilesError` when more than ``max_bad_share`` of the files checked are bad."""
        judged = max(len(self._checked), min(self._distinct, MIN_JUDGED))
        if len(self._bad) <= self.config.max_bad_share * judged:
            return
        listed = [f"{path}: {reason}" for path, reason in list(self.bad_files.items())[:SHOWN_IN_ERROR]]
        if len(self.bad_files) > SHOWN_IN_ERROR:
            listed.append(f"... and {len(self.bad_files) - SHOWN_IN_ERROR} more")
        raise TooManyBadFilesError(
            f"{len(self._bad)} of {len(self._checked)} data files checked are missing or unreadable, more than "
            f"max_bad_share {self.config.max_bad_share:g} allows:\n  " + "\n  ".join(listed) + "\n"
            f"Fix or remove these entries of {self.config.train_data_meta}, or raise max_bad_share."
        )

    # -- headers and buckets ---------------------------------------------------------------------
    def _info(self, entry: MetaEntry) -> EntryInfo | None:
        """The entry's header info, checked once; None when a file is bad (recorded)."""
        if entry not in self._infos:
            try:
                self._infos[entry] = _probe(entry)
            except BadFileError as error:
                self._infos[entry] = None
                self._record_bad(entry, error)
            self._checked.add(entry)
        return self._infos[entry]

    def probe(self) -> list[EntryInfo | None]:
        """Check every file's header once (bad files are warned about and counted), then judge the bad share."""
        pending = [e for e in dict.fromkeys(self.entries) if e not in self._infos]
        show = self.progress and len(pending) > 200
        for entry in tqdm(pending, desc="checking data files", unit="file", disable=not show):
            self._info(entry)
        self.check_bad_share()
        return [self._infos[e] for e in self.entries]

    def _key(self, index: int) -> BucketKey | None:
        entry = self.entries[index]
        info = self._info(entry)
        if info is None:
            return None
        return entry_key(entry.data_type, info.height, info.width, info.num_frames, self.config)

    def bucket_keys(self) -> list[BucketKey | None]:
        """Every entry's bucket (None for a bad one); checks all files the first time."""
        if self._keys is None:
            self.probe()
            self._keys = [self._key(i) for i in range(len(self))]
        return self._keys

    def source_sides(self) -> list[float]:
        """``sqrt(height x width)`` of every entry's file (0 for a bad one)."""
        return [math.sqrt(i.height * i.width) if i else 0.0 for i in self.probe()]

    # -- loading ---------------------------------------------------------------------------------
    def _clip_start(self, entry: MetaEntry, bucket: Bucket, rng: np.random.Generator) -> int:
        """First frame of the clip: random within the video when it is longer than the clip needs."""
        info = self._info(entry) if entry.is_video else None
        if not (self.config.random_clip_start and info):
            return 0
        span = (bucket.frames - 1) * self.config.video_sample_stride + 1
        return int(rng.integers(0, info.num_frames - span + 1)) if info.num_frames > span else 0

    def _frames(
        self, path: Path, entry: MetaEntry, bucket: Bucket, start: int, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Decode one file's clip, uint8 ``(F, H, W, 3)``: at the bucket's size (resize + centre crop), or resized
        to ``size``."""
        crop, size = size is None, size or (bucket.height, bucket.width)
        if not entry.is_video:
            return _guarded(path, lambda: read_image(path, size=size, crop=crop))[None]  # (1, H, W, 3)
        stride = self.config.video_sample_stride
        frames = _guarded(path, lambda: read_video(path, bucket.frames, stride, size, crop=crop, start=start))
        if len(frames) < bucket.frames:
            raise BadFileError(
                path, f"only {len(frames)} of {bucket.frames} frames decoded (from frame {start}, stride {stride})"
            )
        return frames

    def _read(self, path: Path, entry: MetaEntry, bucket: Bucket, start: int) -> torch.Tensor:
        """Decode one file at the bucket's size (resize + centre crop): ``(3, F, H, W)`` in [-1, 1]."""
        return frames_to_tensor(self._frames(path, entry, bucket, start))  # (3, F, H, W)

    def _animate_inputs(
        self, entry: MetaEntry, bucket: Bucket, start: int, video: torch.Tensor, seed: np.random.SeedSequence
    ) -> dict[str, torch.Tensor]:
        """The Animate inputs of a clip (see the module docstring), read at the video's frames. ``video``
        (3, F, H, W) gives the reference frame when the entry names no reference image."""
        face = frames_to_tensor(self._frames(entry.path_of("face_file_path"), entry, bucket, start, (FACE_SIZE,) * 2))
        reference = entry.path_of("ref_file_path")
        if reference is not None:
            image = _guarded(reference, lambda: read_image(reference))
            ref = frames_to_tensor(letterbox(image, bucket.height, bucket.width)[None])[:, 0]  # (3, H, W)
        else:
            ref = video[:, int(np.random.default_rng(seed).integers(video.shape[1]))]
        background, person = entry.path_of("background_file_path"), entry.path_of("mask_file_path")
        if background is None or person is None:  # an animation sample: nothing known outside the person
            return {
                "face_pixel_values": face,
                "ref_pixel_values": ref,
                "background_pixel_values": torch.zeros_like(video),
                "person_mask": torch.ones_like(video[:1]),
            }
        mask = self._frames(person, entry, bucket, start)[..., 0].float() / 255.0  # (F, H, W), as the pipeline reads
        return {
            "face_pixel_values": face,
            "ref_pixel_values": ref,
            "background_pixel_values": self._read(background, entry, bucket, start),
            "person_mask": mask[None],
        }

    def _camera(self, path: Path, bucket: Bucket, start: int) -> torch.Tensor:
        """The poses (F, 19) of the clip's frames (from ``start``, every ``video_sample_stride``-th) as trajectory
        lines; a trajectory shorter than the video repeats its last pose (as sampling does)."""
        poses = _guarded(path, lambda: read_camera_trajectory(path))
        stride = self.config.video_sample_stride
        chosen = [poses[min(start + i * stride, len(poses) - 1)] for i in range(bucket.frames)]
        return torch.tensor([pose.to_values() for pose in chosen], dtype=torch.float64)

    def load(self, index: int, bucket: Bucket, epoch: int) -> dict[str, Any]:
        """Decode entry ``index`` at ``bucket``; raises :class:`BadFileError` for a bad file."""
        entry = self.entries[index]
        _, start_seed, mask_seed, ref_seed = sample_seeds(self.config.seed, epoch, index)
        dropped = drops_text(self.config.seed, epoch, index, self.config.text_drop_ratio)
        start = self._clip_start(entry, bucket, np.random.default_rng(start_seed))
        sample: dict[str, Any] = {
            "pixel_values": self._read(entry.path, entry, bucket, start),
            "text": "" if dropped else entry.text,
            "text_dropped": dropped,
            "data_type": entry.data_type,
            "file_path": str(entry.path),
            "index": index,
        }
        if entry.control_path is not None and is_camera_file(entry.control_path):
            sample["camera_poses"] = self._camera(entry.control_path, bucket, start)
        elif entry.control_path is not None:
            sample["control_pixel_values"] = self._read(entry.control_path, entry, bucket, start)
        if self.config.train_mode in ("inpaint", "vace"):  # VACE's masked-editing samples use these masks
            generator = torch.Generator().manual_seed(int(mask_seed.generate_state(1)[0]))
            sample["mask"] = random_generate_mask(bucket.frames, bucket.height, bucket.width, generator)
        if self.config.train_mode in ANIMATE_MODES:
            sample.update(self._animate_inputs(entry, bucket, start, sample["pixel_values"], ref_seed))
        self._checked.add(entry)
        return sample

    def _candidates(self, index: int, bucket: Bucket) -> Iterator[int]:
        """``index``, then up to :data:`MAX_SUBSTITUTES` good entries that can fill its place in the batch."""
        if self.entries[index] not in self._bad:
            yield index
        keys = self.bucket_keys()
        key, count = keys[index], len(self)
        after = [(index + step) % count for step in range(1, count)]
        same_key = [i for i in after if keys[i] is not None and keys[i] == key]
        # Any entry of the kind with enough frames also fits: it is resized and cropped to the bucket.
        kind = self.entries[index].data_type
        same_kind = [i for i in after if keys[i] and keys[i].data_type == kind and keys[i].frames >= bucket.frames]
        tried = 0
        for candidate in dict.fromkeys(same_key + same_kind):
            if tried == MAX_SUBSTITUTES:
                return
            if self.entries[candidate] not in self._bad:
                tried += 1
                yield candidate

    def __getitem__(self, request: int) -> dict[str, Any] | None:
        index = int(request)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} entries")
        epoch = getattr(request, "epoch", self.epoch)
        bucket = getattr(request, "bucket", None)
        if bucket is None:
            key = self._key(index)
            if key is None:
                self.check_bad_share()
                return None
            bucket = plan_batch(key, self.config)
        skipped: dict[str, str] = {}
        for candidate in self._candidates(index, bucket):
            try:
                sample = self.load(candidate, bucket, epoch)
            except BadFileError as error:
                self._record_bad(self.entries[candidate], error)
                skipped[str(error.path)] = error.reason
                self.check_bad_share()
                continue
            sample["skipped"] = skipped
            return sample
        return None


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------

_STACKED = ("pixel_values", "control_pixel_values", "mask", "camera_poses")
_STACKED += ("face_pixel_values", "ref_pixel_values", "background_pixel_values", "person_mask")  # Animate modes
_LISTED = ("text", "data_type", "file_path")


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack samples into a batch: tensors ``(B, C, F, H, W)``, lists of strings, ``index`` and ``text_dropped``.

    None samples (bad files) are dropped and their places filled by repeating the loaded ones, so
    the batch keeps its size. ``bad_files`` gathers what the samples skipped (from worker
    processes too). A key is stacked only when every sample has it.
    """
    loaded = [s for s in samples if s is not None]
    if not loaded:  # bad data, not a bug: the command line prints it as one message
        raise TooManyBadFilesError(
            f"none of the {len(samples)} samples of this batch could be loaded (see the BadFileWarning messages); "
            "fix or remove the bad files of the metadata"
        )
    filled = [loaded[i % len(loaded)] for i in range(len(samples))]
    shapes = {tuple(s["pixel_values"].shape) for s in filled}
    if len(shapes) > 1:
        raise ValueError(
            f"samples of one batch differ in shape {sorted(shapes)}: batch with BucketBatchSampler, "
            "which groups samples of one bucket"
        )
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in filled]) for k in _STACKED if all(k in s for s in filled)}
    batch.update({k: [s[k] for s in filled] for k in _LISTED})
    batch["index"] = torch.tensor([s["index"] for s in filled], dtype=torch.long)
    batch["text_dropped"] = torch.tensor([s["text_dropped"] for s in filled], dtype=torch.bool)
    batch["bad_files"] = {path: reason for s in loaded for path, reason in s.get("skipped", {}).items()}
    return batch
