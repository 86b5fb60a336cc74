"""A training step with and without the latent cache, on tiny Wan models at the toy world's size.

    python benchmarks/bench_latent_cache.py [--repeats 5] [--out benchmarks/results/latent_cache_cpu.json]

Each step is the trainer's: load the batch (decode the mp4s, or read the cached safetensors),
build the transformer inputs (VAE + text encoder, or nothing), forward, backward, AdamW step.
Both kinds of step run interleaved, so load from other processes hits them alike; the JSON
keeps wall and CPU times (median and min) and the speed-up of the cached step.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videox_fun.benchmarks.common import summarize, time_interleaved, write_json
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.training.cache import CachedLatentDataset, build_cache, collate_cached
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import (
    BucketBatchSampler,
    DataConfig,
    VideoDataset,
    collate,
    write_test_dataset,
)
from videox_fun.training.specs import FlowMatching, flow_matching_loss, get_spec, sample_generators

SIZE, FRAMES, BATCH = 64, 17, 2  # the toy world's clips: 64x64, 17 frames


def step_function(config: TrainConfig, cached: bool) -> Callable[[], None]:
    """A closure running one training step on the next batch (cycling through the data)."""
    config = TrainConfig(**{**config.to_dict(), "use_cached_latents": cached})
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    if cached:
        dataset, collate_fn = CachedLatentDataset(config.resolved_cache_dir, config), collate_cached
    else:
        dataset, collate_fn = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False), collate
    batches = itertools.cycle(list(BucketBatchSampler(dataset, BATCH, seed=0)))
    objective = FlowMatching(shift=spec.default_shift(models))
    transformer = models.transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    step = itertools.count()

    def run() -> None:
        with torch.enable_grad():
            batch = collate_fn([dataset[r] for r in next(batches)])
            generators = sample_generators(0, next(step), 0, range(BATCH))
            loss = flow_matching_loss(spec, models, transformer, objective, batch, config.train_mode, generators, "cpu")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def run(repeats: int) -> dict:
    """Time both kinds of step for a T2V (normal) and an InP (inpaint) model."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        meta = write_test_dataset(root / "data", n_videos=4, sizes=((SIZE, SIZE),), lengths=(FRAMES,))
        for variant, mode in (("t2v", "normal"), ("inp", "inpaint")):
            config = TrainConfig(
                pretrained_model_name_or_path=str(build_tiny_model_folder(root / variant, variant)),
                train_data_meta=str(meta),
                train_mode=mode,
                video_sample_size=[SIZE],
                video_sample_n_frames=FRAMES,
                video_sample_stride=1,
                cache_dir=str(root / f"cache_{variant}"),
                vae_mini_batch=BATCH,
            )
            build_cache(config)
            times = time_interleaved(
                {"pixels": step_function(config, cached=False), "cached": step_function(config, cached=True)}, repeats
            )
            summary = {name: summarize(t) for name, t in times.items()}
            results[mode] = {
                **summary,
                "speedup_wall_median": summary["pixels"]["wall_s_median"] / summary["cached"]["wall_s_median"],
                "speedup_cpu_median": summary["pixels"]["cpu_s_median"] / summary["cached"]["cpu_s_median"],
            }
            print(f"{mode}: cached step {results[mode]['speedup_wall_median']:.1f}x faster (wall, median)")
    return {
        "benchmark": "latent_cache",
        "what": "one training step (data + inputs + forward + backward + AdamW) with and without the latent cache",
        "setup": {"size": SIZE, "frames": FRAMES, "batch": BATCH, "repeats": repeats, "model": "tiny Wan (2 layers)"},
        "results": results,
    }


def main() -> None:
    """Parse ``--repeats`` / ``--out``, run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_cache_cpu.json"), help="JSON out")
    args = parser.parse_args()
    write_json(run(args.repeats), args.out)


if __name__ == "__main__":
    main()
