"""The dataset: decoded samples checked against PyAV, reproducible randomness, bad files, collate, workers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import decode_video
from torch.utils.data import DataLoader

from videox_fun.io.video import frames_to_tensor, write_video
from videox_fun.training.data import (
    BadFileWarning,
    Bucket,
    BucketBatchSampler,
    DataConfig,
    MetadataError,
    SampleRequest,
    TooManyBadFilesError,
    VideoDataset,
    collate,
    write_test_dataset,
)
from videox_fun.training.data.workers import worker_context


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------
def test_samples_have_the_documented_shapes_and_match_an_independent_pyav_decode(mixed_config) -> None:
    dataset = VideoDataset(mixed_config())
    for index in range(len(dataset)):
        sample = dataset[index]
        key = dataset.bucket_keys()[index]
        pixels = sample["pixel_values"]
        assert pixels.dtype == torch.float32 and pixels.shape == (3, key.frames, key.height, key.width)
        assert pixels.min() >= -1.0 and pixels.max() <= 1.0
        assert sample["control_pixel_values"].shape == pixels.shape
        assert sample["data_type"] == key.data_type and sample["index"] == index
        if key.data_type == "video":
            assert (key.frames - 1) % 4 == 0
        else:
            assert key.frames == 1
    # A 48x48 video of 17 frames lands in the 48x48 bucket unresized: the clip is PyAV's frames
    # from some start on, and the control clip starts at the same frame.
    index = next(i for i, e in enumerate(dataset.entries) if e.file_path == "videos/00000003.mp4")
    sample = dataset[index]
    source = frames_to_tensor(decode_video(dataset.entries[index].path))  # (3, 17, 48, 48)
    control = frames_to_tensor(decode_video(dataset.entries[index].control_path))
    starts = [s for s in range(17 - 9 + 1) if torch.equal(source[:, s : s + 9], sample["pixel_values"])]
    assert len(starts) == 1
    assert torch.equal(control[:, starts[0] : starts[0] + 9], sample["control_pixel_values"])


def test_a_video_whose_header_has_no_frame_count_is_counted(tmp_path: Path) -> None:
    frames = np.zeros((13, 32, 32, 3), np.uint8)
    frames[:, 8:16, 8:16] = np.arange(13, dtype=np.uint8)[:, None, None, None] * 15  # distinct frames
    write_video(frames, tmp_path / "clip.webm", fps=8)  # VP9 in WebM: the header gives no frame count
    (tmp_path / "meta.json").write_text('[{"file_path": "clip.webm", "text": "a square"}]')
    config = DataConfig(train_data_meta=tmp_path / "meta.json", video_sample_size=32, video_sample_stride=1)
    dataset = VideoDataset(config)
    assert dataset.probe()[0].num_frames == 13
    assert dataset.bucket_keys()[0].frames == 13 and dataset[0]["pixel_values"].shape == (3, 13, 32, 32)


def test_clip_start_and_text_dropout_are_reproducible_per_seed_epoch_and_index(mixed_config) -> None:
    config = mixed_config(text_drop_ratio=0.5)
    dataset, again = VideoDataset(config), VideoDataset(config)
    index = next(i for i, e in enumerate(dataset.entries) if e.file_path == "videos/00000003.mp4")  # 17 frames
    bucket = Bucket(48, 48, 9)
    samples = [dataset[SampleRequest(index, bucket, epoch)] for epoch in range(12)]
    repeats = [again[SampleRequest(index, bucket, epoch)] for epoch in range(12)]
    for sample, repeat in zip(samples, repeats, strict=True):
        assert torch.equal(sample["pixel_values"], repeat["pixel_values"]) and sample["text"] == repeat["text"]
    assert len({s["pixel_values"].sum().item() for s in samples}) > 3  # different clip starts over epochs
    dropped = [s["text_dropped"] for s in samples]
    assert any(dropped) and not all(dropped)
    assert all(s["text"] == ("" if s["text_dropped"] else "a yellow square moving right") for s in samples)
    fixed = VideoDataset(mixed_config(random_clip_start=False))
    first = fixed[SampleRequest(index, bucket, 0)]["pixel_values"]
    assert torch.equal(first, frames_to_tensor(decode_video(dataset.entries[index].path)[:9]))


def test_text_dropout_rate(tmp_path: Path) -> None:
    meta = write_test_dataset(tmp_path, n_videos=0, n_images=4, sizes=[(16, 16)])
    dataset = VideoDataset(DataConfig(train_data_meta=meta, image_sample_size=16, text_drop_ratio=0.3))
    requests = [SampleRequest(i, Bucket(16, 16, 1), epoch) for epoch in range(100) for i in range(4)]
    drops = [dataset[r]["text_dropped"] for r in requests]
    assert np.mean(drops) == pytest.approx(0.3, abs=0.07)
    never = VideoDataset(DataConfig(train_data_meta=meta, image_sample_size=16, text_drop_ratio=0.0))
    assert all(never[i]["text"] for i in range(4))


def test_inpaint_samples_carry_a_reproducible_random_mask(mixed_config) -> None:
    dataset = VideoDataset(mixed_config(train_mode="inpaint"))
    masks = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        mask = sample["mask"]
        assert mask.shape == (1, *sample["pixel_values"].shape[1:]) and set(mask.unique().tolist()) <= {0.0, 1.0}
        masks.append(mask)
    dataset.set_epoch(0)
    assert torch.equal(dataset[0]["mask"], masks[0])
    assert len({m.sum().item() for m in masks}) > 1
    assert "mask" not in VideoDataset(mixed_config())[0]


def test_control_mode_needs_control_files_in_the_metadata(tmp_path: Path) -> None:
    meta = write_test_dataset(tmp_path, n_videos=2, sizes=[(16, 16)], lengths=[5])
    expected = r"(?s)control_file_path.*2 of 2 have none.*train_mode 'normal' or 'inpaint'"
    with pytest.raises(MetadataError, match=expected):
        VideoDataset(DataConfig(train_data_meta=meta, train_mode="control"))
    with pytest.raises(ValueError, match="train_data_meta is not set"):
        VideoDataset(DataConfig())


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta_with_bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 good videos, one corrupt and one missing: 2 of 10 entries bad."""
    folder = tmp_path_factory.mktemp("bad")
    return write_test_dataset(folder, n_videos=8, sizes=[(32, 32), (32, 64)], lengths=[9], corrupt=1, missing=1)


def _bad_config(meta: Path, **overrides) -> DataConfig:
    settings = dict(train_data_meta=meta, video_sample_size=32, video_sample_n_frames=9, video_sample_stride=1)
    settings.update(overrides)
    return DataConfig(**settings)


def test_a_corrupt_and_a_missing_file_are_skipped_with_warnings_and_counted(meta_with_bad_files: Path) -> None:
    dataset = VideoDataset(_bad_config(meta_with_bad_files, max_bad_share=0.25, enable_bucket=True))
    with pytest.warns(BadFileWarning) as caught:
        sampler = BucketBatchSampler(dataset, batch_size=2)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert any("corrupt_00.mp4" in m and "cannot open video" in m for m in messages)
    assert any("missing_00.mp4" in m and "not found" in m for m in messages)
    assert sorted(Path(p).name for p in dataset.bad_files) == ["corrupt_00.mp4", "missing_00.mp4"]
    # Training goes on over the 8 good entries, each once per epoch, in full batches of one bucket.
    seen = []
    for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
        assert batch["pixel_values"].shape[0] == len(batch["index"]) and not batch["bad_files"]
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(8))
    assert dataset[8] is None and dataset[9] is None  # bad entries asked for directly


def test_above_the_bad_share_loading_stops_and_names_the_files(meta_with_bad_files: Path) -> None:
    dataset = VideoDataset(_bad_config(meta_with_bad_files, max_bad_share=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadFileWarning)
        with pytest.raises(TooManyBadFilesError) as raised:
            BucketBatchSampler(dataset, batch_size=2)
    message = str(raised.value)
    assert "2 of 10 data files" in message and "max_bad_share 0.1" in message
    assert "corrupt_00.mp4" in message and "missing_00.mp4" in message
    assert "Fix or remove these entries" in message and "raise max_bad_share" in message


def test_a_file_that_fails_while_decoding_is_replaced_from_its_bucket(tmp_path: Path) -> None:
    meta = write_test_dataset(tmp_path, n_videos=6, sizes=[(32, 32)], lengths=[9])
    dataset = VideoDataset(_bad_config(meta, max_bad_share=0.5))
    sampler = BucketBatchSampler(dataset, batch_size=3, shuffle=False)
    (tmp_path / "videos" / "00000001.mp4").write_bytes(b"\x00" * 64)  # broken after the headers were checked
    with pytest.warns(BadFileWarning, match="00000001.mp4"):
        batches = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
    assert [len(b["index"]) for b in batches] == [3, 3]  # batches keep their size
    first = batches[0]
    assert first["index"].tolist() == [0, 2, 2]  # entry 1 replaced by entry 2 of the same bucket
    assert list(first["bad_files"]) == [str(tmp_path / "videos" / "00000001.mp4")]
    assert str(tmp_path / "videos" / "00000001.mp4") in dataset.bad_files
    assert dataset[SampleRequest(1, Bucket(32, 32, 9))]["index"] == 2


def test_collate_stacks_and_refills_dropped_samples(mixed_config) -> None:
    dataset = VideoDataset(mixed_config())
    keys = dataset.bucket_keys()
    same = [i for i, k in enumerate(keys) if k == keys[0]][:2]
    batch = collate([dataset[same[0]], None, dataset[same[1]]])
    assert batch["pixel_values"].shape == (3, 3, *dataset[same[0]]["pixel_values"].shape[1:])
    assert batch["control_pixel_values"].shape == batch["pixel_values"].shape
    assert batch["index"].tolist() == [same[0], same[1], same[0]]
    assert len(batch["text"]) == 3 and batch["text_dropped"].dtype == torch.bool
    with pytest.raises(TooManyBadFilesError, match="none of the 2 samples"):  # a user error, not a bug
        collate([None, None])
    other = next(i for i, k in enumerate(keys) if k[1:] != keys[0][1:])  # another (height, width, frames)
    with pytest.raises(ValueError, match="BucketBatchSampler"):
        collate([dataset[same[0]], dataset[other]])


def test_worker_processes_decode_the_same_batches(mixed_config) -> None:
    config = mixed_config(train_mode="inpaint", text_drop_ratio=0.5, random_sizes=True)
    dataset = VideoDataset(config)

    def run(workers: int) -> list[dict]:
        sampler = BucketBatchSampler(dataset, batch_size=3)
        return list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                               multiprocessing_context=worker_context(workers)))  # fmt: skip

    in_process, in_workers = run(0), run(2)
    assert len(in_process) == len(in_workers)
    for a, b in zip(in_process, in_workers, strict=True):
        assert torch.equal(a["index"], b["index"]) and a["text"] == b["text"]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["mask"], b["mask"])
