"""Bucket sizes, frame counts, the token budget and the batch sampler (grouping, coverage, resume)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from videox_fun.training.data import (
    BucketBatchSampler,
    BucketKey,
    DataConfig,
    VideoDataset,
    bucket_sizes,
    closest_size,
    plan_batch,
    token_frames,
)
from videox_fun.training.data.buckets import clip_frames, token_sides


# --------------------------------------------------------------------------------------------
# Sizes and frames
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [64, 256, 512, 768, 1024])
def test_bucket_sizes_are_multiples_of_16_with_the_area_of_the_side(side: int) -> None:
    sizes = bucket_sizes(side)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in sizes)
    assert all(abs(h * w / side**2 - 1) < 0.2 for h, w in sizes)
    ratios = sorted(h / w for h, w in sizes)
    assert ratios[0] == pytest.approx(0.25, abs=0.05) and ratios[-1] == pytest.approx(4.0, rel=0.2)
    assert set(sizes) == {(w, h) for h, w in sizes}  # portrait sizes mirror the landscape ones
    assert (side, side) in sizes


def test_closest_size_picks_the_nearest_aspect_ratio() -> None:
    sizes = bucket_sizes(512)
    for height, width in [(480, 832), (1080, 1920), (720, 720), (1920, 1080), (300, 1200)]:
        chosen = closest_size(height, width, sizes)
        best = min(abs(math.log(h / w) - math.log(height / width)) for h, w in sizes)
        assert abs(math.log(chosen[0] / chosen[1]) - math.log(height / width)) == pytest.approx(best)
    assert closest_size(480, 832, sizes) == (384, 688)  # 16:9-ish landscape at 512^2 pixels


@pytest.mark.parametrize(
    ("num_frames", "stride", "cap", "expected"),
    [(17, 1, 17, 17), (13, 1, 17, 13), (12, 1, 17, 9), (17, 4, 81, 5), (81, 2, 49, 41), (3, 1, 17, 1), (1, 4, 17, 1)],
)
def test_clip_frames_is_the_longest_4k_plus_1_clip(num_frames: int, stride: int, cap: int, expected: int) -> None:
    assert clip_frames(num_frames, stride, cap) == expected


def test_token_budget_trades_frames_for_size_as_videox_fun_documents() -> None:
    # VideoX-Fun's README: 49 frames at 512x512 -> 21 at 768x768 -> 9 at 1024x1024 for token_sample_size 512.
    config = DataConfig(video_sample_n_frames=49, token_sample_size=512, training_with_video_token_length=True)
    assert token_frames(512, 512, 49, config) == 49
    assert token_frames(768, 768, 49, config) == 21
    assert token_frames(1024, 1024, 49, config) == 9
    for height, width in bucket_sizes(1024):
        frames = token_frames(height, width, 49, config)
        assert (frames - 1) % 4 == 0 and frames * height * width <= config.token_budget
    assert token_frames(1024, 1024, 49, DataConfig(video_sample_n_frames=49)) == 49  # budget off


def test_random_hw_adapt_draws_smaller_sizes_mostly_keeping_the_full_one() -> None:
    config = DataConfig(video_sample_size=1024, video_sample_n_frames=17, enable_bucket=True, random_hw_adapt=True)
    key = BucketKey("video", 1024, 1024, 17)
    rng = np.random.default_rng(0)
    drawn = Counter(plan_batch(key, config, rng).height for _ in range(2000))
    assert set(drawn) == {1024, 816, 688, 512}  # 1024 / (1, 1.25, 1.5, 2), snapped to 16
    assert drawn[1024] / 2000 == pytest.approx(0.9, abs=0.03)
    assert plan_batch(key, config) == (1024, 1024, 17)  # no generator: the base size


def test_token_budget_with_random_hw_adapt_picks_a_side_and_its_frames() -> None:
    config = DataConfig(
        video_sample_size=256,
        image_sample_size=1024,
        token_sample_size=512,
        video_sample_n_frames=81,
        random_hw_adapt=True,
        training_with_video_token_length=True,
    )
    assert token_sides(config) == [256, 384, 512, 640, 768, 896, 1024]
    key = BucketKey("video", 256, 256, 81)
    rng = np.random.default_rng(1)
    plans = {plan_batch(key, config, rng, source_side=600.0) for _ in range(300)}
    assert {p.height for p in plans} == {256, 384, 512, 640}  # sides below 1.25 x 600
    for plan in plans:
        assert plan.frames == token_frames(plan.height, plan.width, 81, config)
        assert plan.frames * plan.height * plan.width <= config.token_budget
    assert min(p.frames for p in plans) < 81 == max(p.frames for p in plans)


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------
def _flat(batches: list[list[int]]) -> list[int]:
    return [int(i) for batch in batches for i in batch]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_batches_share_a_bucket_and_every_sample_is_seen_once_per_epoch(mixed_config, batch_size: int) -> None:
    dataset = VideoDataset(mixed_config())
    sampler = BucketBatchSampler(dataset, batch_size=batch_size)
    keys = dataset.bucket_keys()
    assert len(set(keys)) >= 6  # mixed aspect ratios x frame counts x kinds
    for _ in range(3):  # epochs 0, 1, 2: the sampler moves on by itself
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len({keys[i] for i in batch}) == 1
            assert len({i.bucket for i in batch}) == 1
        assert sorted(_flat(batches)) == list(range(len(dataset)))
    # Partial batches: one at most per bucket, all at the end of the epoch.
    partial = [len(b) < batch_size for b in batches]
    assert partial == sorted(partial)  # full batches first
    assert sum(partial) <= len(set(keys))


def test_drop_last_keeps_only_full_batches(mixed_config) -> None:
    dataset = VideoDataset(mixed_config())
    sampler = BucketBatchSampler(dataset, batch_size=3, drop_last=True)
    batches = list(sampler)
    assert batches and all(len(b) == 3 for b in batches)
    per_key = Counter(dataset.bucket_keys())
    assert len(batches) == sum(n // 3 for n in per_key.values())
    assert len(set(_flat(batches))) == 3 * len(batches)


def test_order_is_deterministic_given_seed_and_epoch(mixed_config) -> None:
    dataset = VideoDataset(mixed_config())
    first, second = BucketBatchSampler(dataset, 2), BucketBatchSampler(dataset, 2)
    epoch0 = list(first)
    assert list(second) == epoch0
    epoch1 = list(first)
    assert epoch1 != epoch0 and sorted(_flat(epoch1)) == sorted(_flat(epoch0))
    second.set_epoch(1)
    assert list(second) == epoch1
    assert list(BucketBatchSampler(dataset, 2, seed=8)) != epoch0
    unshuffled = list(BucketBatchSampler(dataset, 2, shuffle=False))
    assert unshuffled == list(BucketBatchSampler(dataset, 2, shuffle=False))


def test_resume_from_state_gives_the_identical_rest_of_the_epoch(mixed_config) -> None:
    dataset = VideoDataset(mixed_config(random_sizes=True))
    reference = BucketBatchSampler(dataset, 2)
    full = [list(reference) for _ in range(2)]  # epochs 0 and 1, uninterrupted

    interrupted = BucketBatchSampler(dataset, 2)
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    done = [next(iterator) for _ in range(3)]
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3

    resumed = BucketBatchSampler(dataset, 2)  # a fresh process
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer's epoch loop: same epoch, so the position is kept
    rest = list(resumed)
    assert done + rest == full[1]
    assert len({b[0].bucket for b in full[1]}) > len(set(dataset.bucket_keys()))  # random sizes...
    assert [b[0].bucket for b in done + rest] == [b[0].bucket for b in full[1]]  # ...the same after resuming
    assert resumed.state_dict()["epoch"] == 2  # moved on to the next epoch by itself

    # A state taken with fewer batches trained than handed out (loader workers read ahead).
    ahead = BucketBatchSampler(dataset, 2)
    iterator = iter(ahead)
    [next(iterator) for _ in range(4)]
    state = ahead.state_dict(batches_done=2)
    again = BucketBatchSampler(dataset, 2)
    again.load_state_dict(state)
    assert list(again) == full[0][2:]


def test_state_from_other_data_is_refused(mixed_config) -> None:
    dataset = VideoDataset(mixed_config())
    state = BucketBatchSampler(dataset, 2).state_dict()
    with pytest.raises(ValueError, match=r"batch_size 2 -> 3.*same metadata, seed and batch size"):
        BucketBatchSampler(dataset, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="seed 7 -> 9"):
        BucketBatchSampler(dataset, 2, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="positive int"):
        BucketBatchSampler(dataset, 0)


def test_without_buckets_samples_group_by_kind_and_frame_count_at_the_sample_size(mixed_config) -> None:
    dataset = VideoDataset(mixed_config(enable_bucket=False, video_sample_size=(32, 48)))
    keys = set(dataset.bucket_keys())
    assert {(k.height, k.width) for k in keys if k.data_type == "video"} == {(32, 48)}
    assert {(k.height, k.width) for k in keys if k.data_type == "image"} == {(32, 32)}
    assert {k.frames for k in keys} == {1, 5, 9}
