"""Helpers of the trainer tests: paths, fast settings, child-process environment, a fixed-noise loss."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from helpers import state_dict_max_diff
from safetensors.torch import load_file

from videox_fun.training.config import TrainConfig
from videox_fun.training.data import BucketBatchSampler, DataConfig, VideoDataset, collate
from videox_fun.training.specs import FlowMatching, flow_matching_loss, get_spec, sample_generators

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "scripts" / "wan2.1_fun" / "train.py"
# Small and fast: 32x32 clips of 5 frames (2 latent frames of 4x4), one process, fp32.
FAST = dict(
    video_sample_size=[32],
    image_sample_size=[32],
    video_sample_n_frames=5,
    video_sample_stride=1,
    report_to="none",
    checkpointing_steps=1000,
    learning_rate=1e-3,
    train_batch_size=1,
)


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this checkout's package first, few threads each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def fixed_noise_loss(config: TrainConfig, transformer: torch.nn.Module, draws: int = 4) -> float:
    """Flow-matching loss of ``transformer`` on every sample, at fixed sigmas and noise (no dropout)."""
    config = TrainConfig(**{**config.to_dict(), "text_drop_ratio": 0.0})
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    models.transformer = transformer.eval()
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    sampler = BucketBatchSampler(dataset, batch_size=len(dataset), shuffle=False)
    objective = FlowMatching(sampling="uniform", shift=1.0)
    losses = []
    with torch.no_grad():
        for requests in sampler:
            batch = collate([dataset[r] for r in requests])
            for draw in range(draws):
                generators = sample_generators(1234, -1, draw, range(len(requests)))
                loss = flow_matching_loss(
                    spec, models, transformer, objective, batch, config.train_mode, generators, "cpu"
                )
                losses.append(loss.item())
    return sum(losses) / len(losses)


def write_train_yaml(config: TrainConfig, path: Path, **changes: object) -> Path:
    """The config (its set fields, with ``changes``) as the YAML file ``videox-fun train --config`` reads."""
    values = {**{k: v for k, v in config.to_dict().items() if v is not None}, **changes}
    path.write_text(yaml.safe_dump(values))
    return path


def check_resume_matches_uninterrupted(run: Callable[..., object], folder: Path, lora: bool, label: str) -> None:
    """A run stopped after 2 steps and resumed to 4 equals one that ran 4: the same losses exactly, the same
    weights within 1e-6. ``run(name, steps, **more)`` trains into ``folder / name / "out"`` (``more`` holds
    ``resume_from_checkpoint``) and returns the training result."""
    whole = run("whole", 4)
    first = run("split", 2)
    rest = run("split", 4, resume_from_checkpoint="latest")
    assert first.losses + rest.losses == whole.losses
    name = "lora.safetensors" if lora else "transformer/diffusion_pytorch_model.safetensors"
    difference = state_dict_max_diff(
        load_file(str(folder / "whole" / "out" / name)), load_file(str(folder / "split" / "out" / name))
    )
    print(f"{label} resumed vs uninterrupted max abs diff {difference:.2e}")
    assert difference <= 1e-6
