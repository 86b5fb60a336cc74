"""The latent cache: VAE latents and text embeddings computed once, read by training instead.

``videox-fun cache --config FILE`` encodes every sample of the training data with the family's
frozen encoders and writes, under ``cache_dir``:

- ``<index>.safetensors`` per sample: ``latents`` (z, F', h, w), ``context`` (tokens, C, without
  the zero padding), ``num_frames``, and what the model's conditions need: ``control_latents``,
  the masked-video latents of the whole-frame inpaint masks (``masked_latents_t2v`` / ``_i2v`` /
  ``_first_last``), ``clip_first`` (CLIP tokens of the first frame); Wan2.2-Animate's reference, pose and
  per-draw segment latents and its face crops as uint8 pixels (:func:`~.specs.wan_animate.animate_cache_records`);
- ``empty_context.safetensors``: the empty prompt's embedding (text dropout for CFG): ``context``, and for a family
  whose text inputs are several tensors (the image families) each of them by the name its records use;
- ``index.json``: the samples, their texts and shapes, and what made the cache.

A build replaces the whole folder: it is written under a hidden name beside ``cache_dir`` and
swapped in when complete, so the cache holds exactly the samples of this build (none of an
earlier one) and a build killed midway leaves the previous cache as it was.

Training with ``--use_cached_latents`` then runs no VAE and no text encoder. What the cache
cannot hold is said, not approximated: every sample is cut once (the clip start and size of
the first epoch, no ``random_hw_adapt``); inpaint masks are the whole-frame kinds (t2v, i2v,
first+last), spatial masks need pixels; the control_ref reference is the first frame.

Each cached sample carries ``text_dropped``, the dataset's own text-dropout draw for that entry and epoch
(:func:`~videox_fun.training.data.dataset.drops_text`): a spec that reads it drops the texts a run from the
decoded data drops.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..io.files import atomic_path, replace_dir, save_safetensors
from .config import TrainConfig, check_output_folder

if TYPE_CHECKING:
    from accelerate import PartialState

    from .data import BucketKey, DataConfig
    from .specs import FamilyModels, FamilySpec

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
EMPTY_FILE = "empty_context.safetensors"
CACHE_VERSION = 1


def cache_data_config(config: TrainConfig) -> DataConfig:
    """The data settings a cache is built with: every sample once, at its base size, text kept."""
    from .data import DataConfig

    values = {**config.to_dict(), "text_drop_ratio": 0.0, "random_hw_adapt": False}
    return DataConfig.from_mapping(values)


def _record_name(index: int) -> str:
    return f"{index:08d}.safetensors"


def _is_cache_file(path: Path) -> bool:
    """A file a cache build writes (or a hidden leftover of one)."""
    record = path.suffix == ".safetensors" and path.stem.isdigit()
    return path.is_file() and (record or path.name in (INDEX_FILE, EMPTY_FILE) or path.name.startswith("."))


def check_cache_dir(folder: Path) -> Path:
    """Fail (one line) unless ``folder`` is new, empty or a latent cache: a build replaces the whole folder."""
    check_output_folder(folder, "--cache_dir")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not _is_cache_file(p))
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise ValueError(
                f"--cache_dir {folder} holds other files than a latent cache ({shown}), and a build replaces the "
                "folder: give a new or empty --cache_dir"
            )
    return folder


def staging_dir(folder: Path) -> Path:
    """Where a build of ``folder`` is written before the swap: a hidden name beside it that every process knows."""
    return folder.with_name(f".{folder.name}.building")


def build_cache(config: TrainConfig) -> Path:
    """Encode the training data into ``config.resolved_cache_dir``; processes split the batches.

    Run under ``accelerate launch`` to use several devices: process i encodes batches i, i+n, ...
    and the main process writes the index when all are done. Everything goes to a staging folder
    (:func:`staging_dir`) that replaces ``cache_dir`` at the end, so an earlier cache there is
    replaced whole, never mixed with this one.
    """
    from accelerate import PartialState

    from .specs import get_spec, spec_name
    from .trainer import mixed_precision_dtype

    final = check_cache_dir(config.resolved_cache_dir)  # before anything loads
    state = PartialState()
    dtype = mixed_precision_dtype(config.mixed_precision)
    spec = get_spec(config)
    if not config.family:  # the index records the spec that made the cache
        config = TrainConfig(**{**config.to_dict(), "family": spec_name(config)})
    models = spec.load_models(TrainConfig(**{**config.to_dict(), "use_cached_latents": False}), dtype)
    device = state.device
    if not config.low_vram:
        for module in models.frozen.values():
            module.to(device)
    # Not atomic_dir: every process writes into the folder, so its name must be one they all know
    # without talking; rank 0 alone creates and swaps it, between barriers.
    staging = staging_dir(final)
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # what a killed build left
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        bad_files = _encode_into(staging, config, spec, models, state)
        if state.is_main_process:
            count = write_index(staging, config, models)
            replace_dir(staging, final)
    except BaseException:
        if state.is_main_process:  # the previous cache (if any) stays as it was
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if state.is_main_process:
        logger.info("cached %d samples in %s", count, final)
        if bad_files:
            logger.warning("%d data files were skipped: %s", len(bad_files), sorted(bad_files))
    state.wait_for_everyone()
    return final


def _encode_into(
    folder: Path, config: TrainConfig, spec: FamilySpec, models: FamilyModels, state: PartialState
) -> dict[str, str]:
    """Write this process's share of the records (and, on the main process, the empty prompt) into ``folder``.

    Returns the data files skipped as bad; all processes are done when it returns.
    """
    from .data import BucketBatchSampler, VideoDataset, collate

    device = state.device
    dataset = VideoDataset(cache_data_config(config), progress=state.is_main_process)
    sampler = BucketBatchSampler(dataset, batch_size=max(1, config.vae_mini_batch), shuffle=False)
    mine = [batch for i, batch in enumerate(sampler) if i % state.num_processes == state.process_index]
    for requests in tqdm(mine, desc="caching latents", disable=not state.is_main_process):
        batch = collate([dataset[r] for r in requests])
        records = spec.encode_for_cache(models, batch, config.train_mode, device)
        for row, record in enumerate(records):
            metadata = {"text": batch["text"][row], "file_path": batch["file_path"][row]}
            metadata["data_type"] = batch["data_type"][row]
            write_record(record, folder / _record_name(int(batch["index"][row])), metadata)
    if state.is_main_process:
        empty = spec.empty_context(models, device)  # (L, C), or the family's named text tensors
        save_safetensors(empty if isinstance(empty, dict) else {"context": empty}, folder / EMPTY_FILE)
    state.wait_for_everyone()
    return dataset.bad_files


def write_record(record: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """One sample's tensors, written under a temporary name first."""
    with atomic_path(path) as temporary:
        save_file(record, str(temporary), metadata=metadata)


def write_index(folder: Path, config: TrainConfig, models: FamilyModels) -> int:
    """List the cached samples of ``folder`` (read back from their files) in ``index.json``; returns their count."""
    entries = []
    for path in sorted(folder.glob("[0-9]*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shape = list(f.get_slice("latents").get_shape())
            names = sorted(f.keys())
        entries.append({"file": path.name, "index": int(path.stem), "shape": shape, "tensors": names, **metadata})
    index = {
        "version": CACHE_VERSION,
        "family": config.family,
        "model": str(models.folder),
        "train_mode": config.train_mode,
        "train_data_meta": str(config.train_data_meta),
        "entries": entries,
    }
    with atomic_path(folder / INDEX_FILE) as temporary:
        temporary.write_text(json.dumps(index, indent=2))
    return len(entries)


# ----------------------------------------------------------------------------------------
# Reading the cache
# ----------------------------------------------------------------------------------------
class CachedLatentDataset(Dataset):
    """The records of a latent cache, bucketed by latent shape for :class:`BucketBatchSampler`."""

    def __init__(self, folder: str | os.PathLike, config: TrainConfig):
        from .data import DataConfig

        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"no latent cache at {self.folder} ({INDEX_FILE} missing): build it with "
                "`videox-fun cache --config FILE` (same config), or train without --use_cached_latents"
            )
        index = json.loads(index_path.read_text())
        self.entries: list[dict[str, Any]] = index["entries"]
        if not self.entries:
            raise ValueError(f"the latent cache {self.folder} holds no samples: rebuild it from data that loads")
        if index.get("train_mode") != config.train_mode:
            logger.warning(
                "the cache was built for train_mode %s, training runs %s", index.get("train_mode"), config.train_mode
            )
        # The sampler reads seed and sizes from a DataConfig; cached samples have fixed sizes.
        self.config = DataConfig(seed=config.seed, train_mode=config.train_mode)
        self.text_drop_ratio = config.text_drop_ratio
        self.empty = load_file(str(self.folder / EMPTY_FILE))  # "context" (L, C), and a family's other text tensors
        self.empty_context = self.empty["context"]

    def __len__(self) -> int:
        return len(self.entries)

    def bucket_keys(self) -> list[BucketKey]:
        """One bucket per latent shape (data type, height, width, latent frames)."""
        from .data import BucketKey

        return [
            BucketKey(e.get("data_type", "video"), e["shape"][2], e["shape"][3], e["shape"][1]) for e in self.entries
        ]

    def source_sides(self) -> list[float]:
        """``sqrt(h x w)`` of every record's latent, one float per entry (the sampler's size planning input)."""
        return [math.sqrt(e["shape"][2] * e["shape"][3]) for e in self.entries]

    def __getitem__(self, request: int) -> dict[str, Any]:
        from .data.dataset import drops_text

        entry = self.entries[int(request)]
        sample: dict[str, Any] = dict(load_file(str(self.folder / entry["file"])))
        sample.update(text=entry.get("text", ""), index=entry["index"])
        sample.update({f"empty_{name}": tensor for name, tensor in self.empty.items()})
        # The epoch comes with the sampler's request (a SampleRequest); the draw is the decoding dataset's.
        dropped = drops_text(self.config.seed, getattr(request, "epoch", 0), entry["index"], self.text_drop_ratio)
        sample["text_dropped"] = torch.tensor(dropped)
        return sample


def collate_cached(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack cached records; text contexts are zero-padded to the longest (the transformer pads anyway)."""
    length = max(max(s["context"].shape[0], s["empty_context"].shape[0]) for s in samples)
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name in ("context", "empty_context"):
            batch[name] = torch.stack([F.pad(v, (0, 0, 0, length - v.shape[0])) for v in values])
        elif isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    batch["index"] = torch.tensor(batch["index"])
    return batch
