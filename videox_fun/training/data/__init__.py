"""The training data layer: metadata, the dataset, buckets and the batch sampler, inpaint masks.

Typical use::

    config = DataConfig(train_data_meta="data/metadata.json", enable_bucket=True)
    dataset = VideoDataset(config)
    sampler = BucketBatchSampler(dataset, batch_size=2)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2,
                        multiprocessing_context=worker_context(2))  # forkserver: see workers.py
"""

from .buckets import (
    Bucket,
    BucketBatchSampler,
    BucketKey,
    SampleRequest,
    bucket_sizes,
    closest_size,
    entry_key,
    plan_batch,
    token_frames,
)
from .config import CONTROL_MODES, DataConfig
from .dataset import BadFileWarning, EntryInfo, TooManyBadFilesError, VideoDataset, collate
from .masks import MASK_KINDS, choose_mask_kind, generate_mask, random_generate_mask
from .metadata import MetadataError, MetaEntry, load_metadata
from .synthetic import write_test_dataset

__all__ = [
    "CONTROL_MODES",
    "MASK_KINDS",
    "BadFileWarning",
    "Bucket",
    "BucketBatchSampler",
    "BucketKey",
    "DataConfig",
    "EntryInfo",
    "MetaEntry",
    "MetadataError",
    "SampleRequest",
    "TooManyBadFilesError",
    "VideoDataset",
    "bucket_sizes",
    "choose_mask_kind",
    "closest_size",
    "collate",
    "entry_key",
    "generate_mask",
    "load_metadata",
    "plan_batch",
    "random_generate_mask",
    "token_frames",
    "write_test_dataset",
]
