"""Bucketing: which samples may share a batch, at which size and frame count they are decoded.

Every entry gets a :class:`BucketKey`: its kind (video / image), its base size and its frame
count. The base size is the sample size, or with ``enable_bucket`` the size of a fixed list
(:func:`bucket_sizes`: multiples of 16, about ``side^2`` pixels, aspect ratios 1:4 to 4:1) that is
closest to the entry's aspect ratio. The frame count is the longest 4k+1 clip the video holds at
the stride, capped at ``video_sample_n_frames`` (1 for images).

:class:`BucketBatchSampler` batches entries of one key. Each batch then gets a :class:`Bucket`,
the shape every member is decoded to (:func:`plan_batch`): the base size, or with
``random_hw_adapt`` a size drawn at random as VideoX-Fun's training scripts do (downscaled by
1, 1.25, 1.5, 2... by side; with the token budget, a side between ``video_sample_size`` and
``image_sample_size`` no bigger than 1.25x the videos' own), and with
``training_with_video_token_length`` the most frames (4k+1) such that
``frames x H x W <= video_sample_n_frames x token_sample_size^2``. The plan travels with each
index (:class:`SampleRequest`), so data-loader workers decode exactly what the sampler chose.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
from torch.utils.data import Sampler

from .config import SIZE_MULTIPLE, DataConfig

MAX_ASPECT = 4.0  # bucket sizes span aspect ratios from 1:4 to 4:1
TOKEN_SIDE_STEP = 128  # sides tried with the token budget: video side, +128, ... up to the image side
ADAPT_KEEP_PROB = 0.9  # random_hw_adapt keeps the full size this often (VideoX-Fun's choice)


class Bucket(NamedTuple):
    """The shape every sample of a batch is decoded to: ``(3, frames, height, width)``."""

    height: int
    width: int
    frames: int


class BucketKey(NamedTuple):
    """What samples are grouped by: kind, base size (before ``random_hw_adapt``) and frame count."""

    data_type: str
    height: int
    width: int
    frames: int


# --------------------------------------------------------------------------------------------
# Sizes and frame counts
# --------------------------------------------------------------------------------------------


def snap(value: float) -> int:
    """The nearest multiple of 16 (at least 16)."""
    return max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def floor_4k1(count: int) -> int:
    """The largest 4k+1 not above ``count`` (at least 1): the frame counts the Wan VAE takes."""
    return max(1, (count - 1) // 4 * 4 + 1)


@functools.lru_cache(maxsize=64)
def bucket_sizes(side: int) -> tuple[tuple[int, int], ...]:
    """``(height, width)`` sizes of about ``side^2`` pixels, multiples of 16, from 1:4 to 4:1.

    Heights step by 16 per 256 px of side (32 at 512, as VideoX-Fun's 512 table), so bigger
    sides do not split a dataset into many more buckets.
    """
    step = SIZE_MULTIPLE * max(1, side // 256)
    area = side * side
    wide: list[tuple[int, int]] = []  # landscape and square; portrait sizes are their mirror images
    for height in range(snap(side / math.sqrt(MAX_ASPECT)), side + 1, step):
        size = (height, snap(area / height))
        if size not in wide and size[0] <= size[1]:
            wide.append(size)
    tall = [(w, h) for h, w in reversed(wide) if h != w]
    return (*wide, *tall)


def closest_size(height: int, width: int, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The size whose aspect ratio is nearest to ``height / width`` (on a log scale, so 1:2 and 2:1 are alike)."""
    target = math.log(height / width)
    return min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - target))


def clip_frames(num_frames: int, stride: int, max_frames: int) -> int:
    """Frames (4k+1) of the longest clip a ``num_frames`` video holds at ``stride``, at most ``max_frames``."""
    available = 1 + (num_frames - 1) // stride
    return floor_4k1(min(available, max_frames))


def entry_key(data_type: str, height: int, width: int, num_frames: int, config: DataConfig) -> BucketKey:
    """The bucket of an entry whose file is ``height x width`` with ``num_frames`` frames."""
    is_video = data_type == "video"
    if config.enable_bucket:
        size = closest_size(height, width, bucket_sizes(config.video_side if is_video else config.image_side))
    else:
        size = config.video_size if is_video else config.image_size
    frames = clip_frames(num_frames, config.video_sample_stride, config.video_sample_n_frames) if is_video else 1
    return BucketKey(data_type, size[0], size[1], frames)


def token_frames(height: int, width: int, frames: int, config: DataConfig) -> int:
    """``frames`` capped so that ``frames x height x width`` fits the token budget (4k+1, at least 1)."""
    if not config.training_with_video_token_length:
        return frames
    return min(frames, floor_4k1(config.token_budget // (height * width)))


def token_sides(config: DataConfig) -> list[int]:
    """Sides a video batch may take with the token budget and ``random_hw_adapt``."""
    low, high = config.video_side, config.image_side
    if high <= low:
        return [low]
    sides = list(range(low, high + 1, TOKEN_SIDE_STEP))
    return sides if sides[-1] == high else [*sides, high]


def downsample_ratios(side: int, extra: tuple[float, ...] = ()) -> list[float]:
    """The factors ``random_hw_adapt`` divides a side by; the first (1, full size) is the likeliest."""
    if side >= 1536:
        ratios = [1, 1.25, 1.5, 2, 2.5, 3]
    elif side >= 1024:
        ratios = [1, 1.25, 1.5, 2]
    elif side >= 768:
        ratios = [1, 1.25, 1.5]
    else:
        ratios = [1]
    return [*ratios, *extra] if side >= 512 else ratios


def _draw_ratio(ratios: list[float], rng: np.random.Generator) -> float:
    if len(ratios) == 1:
        return ratios[0]
    rest = (1.0 - ADAPT_KEEP_PROB) / (len(ratios) - 1)
    return float(rng.choice(ratios, p=[ADAPT_KEEP_PROB] + [rest] * (len(ratios) - 1)))


def _adapt_scale(key: BucketKey, config: DataConfig, rng: np.random.Generator, source_side: float | None) -> float:
    """The factor ``random_hw_adapt`` scales a batch's base size by."""
    if key.data_type == "image":
        to_video = config.image_side / config.video_side  # images may also train at the video size
        return 1.0 / _draw_ratio(downsample_ratios(config.image_side, (to_video,) if to_video > 1 else ()), rng)
    if config.training_with_video_token_length:
        sides = token_sides(config)
        # Never train a video much above its own size: keep sides below 1.25x the smallest member's.
        fitting = [s for s in sides if source_side is None or s < source_side * 1.25] or sides
        return float(rng.choice(fitting)) / config.video_side
    return 1.0 / _draw_ratio(downsample_ratios(config.video_side), rng)


def plan_batch(
    key: BucketKey, config: DataConfig, rng: np.random.Generator | None = None, source_side: float | None = None
) -> Bucket:
    """The shape of a batch of ``key``; ``rng`` draws the ``random_hw_adapt`` size (None: the base size).

    ``source_side`` is the smallest ``sqrt(H x W)`` of the batch's files (token-budget sizes stay near it).
    """
    scale = 1.0 if rng is None or not config.random_hw_adapt else _adapt_scale(key, config, rng, source_side)
    height, width = (key.height, key.width) if scale == 1.0 else (snap(key.height * scale), snap(key.width * scale))
    frames = 1 if key.data_type == "image" else token_frames(height, width, key.frames, config)
    return Bucket(height, width, frames)


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


class SampleRequest(int):
    """An entry index (it *is* that int) carrying the batch's :class:`Bucket` and the epoch.

    The data loader hands indices to the dataset as they are, also to worker processes, so the
    dataset decodes each sample at the size the sampler planned for its whole batch.
    """

    bucket: Bucket | None
    epoch: int

    def __new__(cls, index: int, bucket: Bucket | None = None, epoch: int = 0) -> SampleRequest:
        request = super().__new__(cls, index)
        request.bucket, request.epoch = bucket, epoch
        return request

    def __reduce__(self) -> tuple[Any, ...]:
        return SampleRequest, (int(self), self.bucket, self.epoch)

    def __repr__(self) -> str:
        return f"SampleRequest({int(self)}, {self.bucket}, epoch={self.epoch})"


class BucketedDataset(Protocol):
    """What the sampler needs of a dataset (:class:`~videox_fun.training.data.dataset.VideoDataset` has it)."""

    config: DataConfig

    def __len__(self) -> int: ...

    def bucket_keys(self) -> list[BucketKey | None]:
        """Every entry's bucket, one per entry in index order (None for an entry that cannot load)."""
        ...

    def source_sides(self) -> list[float]:
        """Every entry's side: ``sqrt(height x width)`` of its source, one float per entry (0 for a bad one)."""
        ...


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of entry indices whose samples share one bucket; deterministic given (seed, epoch).

    Every good entry (one whose file could be checked) appears once per epoch; each bucket's
    last partial batch is kept (at the end of the epoch) unless ``drop_last``. Building the
    sampler checks every file's header once (the dataset counts and reports bad ones).

    Resume: :meth:`state_dict` holds the epoch and how many batches of it were handed out; after
    :meth:`load_state_dict` iteration continues with the rest of that epoch, in the same order.
    With data-loader workers the loader asks for batches ahead of training, so pass the number of
    batches actually trained on: ``state_dict(batches_done=n)``. At the end of an epoch the
    sampler moves to the next one by itself; :meth:`set_epoch` with another epoch starts it afresh.

    With accelerate on several processes, let it split each batch (``split_batches=True``) or use
    ``drop_last=True``: its sharding drops batches shorter than ``batch_size``.
    """

    def __init__(
        self,
        dataset: BucketedDataset,
        batch_size: int,
        seed: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = dataset.config.seed if seed is None else seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.keys = dataset.bucket_keys()  # checks every file once; bad ones are None
        self.epoch = 0
        self.position = 0  # batches of this epoch handed out
        self._cache: tuple[int, list[list[SampleRequest]]] | None = None

    def _groups(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as index lists: full ones as they fill along the order, partial ones last."""
        count = len(self.keys)
        order = np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle else range(count)
        filling: dict[BucketKey, list[int]] = {}
        groups = []
        for index in order:
            key = self.keys[index]
            if key is None:
                continue
            group = filling.setdefault(key, [])
            group.append(int(index))
            if len(group) == self.batch_size:
                groups.append(filling.pop(key))
        if not self.drop_last:
            groups.extend(filling.values())
        return groups

    def epoch_batches(self, epoch: int | None = None) -> list[list[SampleRequest]]:
        """Every batch of an epoch (default: the current one), with its plan."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch, 1])  # its own stream: plans do not move the order
        sides = self.dataset.source_sides()
        batches = []
        for group in self._groups(epoch):
            bucket = plan_batch(self.keys[group[0]], self.dataset.config, rng, min(sides[i] for i in group))
            batches.append([SampleRequest(i, bucket, epoch) for i in group])
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        while self.position < len(batches):
            self.position += 1
            yield list(batches[self.position - 1])
        self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        """Batches per epoch (the same in every epoch)."""
        return len(self.epoch_batches())

    def set_epoch(self, epoch: int) -> None:
        """Go to ``epoch`` (from its start, unless it is the current one, whose position is kept)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """Where the sampler is: epoch and batches of it done (default: handed out)."""
        position = self.position if batches_done is None else batches_done
        return {
            "epoch": self.epoch,
            "position": position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_entries": len(self.keys),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where :meth:`state_dict` was taken; the data and settings must be the same."""
        mine = self.state_dict()
        changed = [k for k in ("seed", "batch_size", "num_entries") if state.get(k) != mine[k]]
        if changed:
            details = ", ".join(f"{k} {state.get(k)} -> {mine[k]}" for k in changed)
            raise ValueError(
                f"the sampler state was saved for other data or settings ({details}); resume with the same "
                "metadata, seed and batch size, or start a new run"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
