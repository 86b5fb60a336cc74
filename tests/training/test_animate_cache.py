"""Wan2.2-Animate training from the latent cache (``videox-fun cache``, then ``--use_cached_latents``).

The cache holds what the frozen encoders make (the clip's, reference's and pose video's latents, y's segment part for
every carry-over count and background outcome, the reference's CLIP tokens, the text context) and the face crops as
uint8 pixels (they feed the motion encoder, which trains). On the tiny Animate model and the Animate training tests'
data (tests/training/test_animate_training.py's fixtures: 32 x 32 clips with face-crop videos, entry 2 a replacement):

- a cached batch's inputs equal the decoded batch's for the same draws, every carry-over count (0, 1, 5) and both
  background outcomes of a replacement sample, half the texts dropped (max diff 0; the text context <= 8.3e-7, as
  the text encoder ran on one prompt at a time for the cache and on three at once for the batch);
- 3 steps from the cache equal 3 steps from the videos, from a copy of the model folder without VAE, text encoder or
  CLIP: the same losses and weights max diff 0 (animate full and LoRA, replace full and LoRA);
- a run from the cache stopped at 2 steps and resumed to 4 equals 4 straight (losses identical, weights <= 1e-6);
- a cache built for another train mode or another model's is refused in one line.

The cache keeps the face crops at the size the dataset reads them (the motion encoder's), whatever it is.
``pytest tests/training/test_animate_cache.py -s`` prints the measured figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import max_diff, state_dict_max_diff
from safetensors.torch import load_file
from test_animate_training import animate_config, animate_data, animate_model, one_batch, replace_data
from training_helpers import check_resume_matches_uninterrupted, write_train_yaml

from videox_fun.cli import main
from videox_fun.io.video import tensor_to_frames
from videox_fun.training.cache import CachedLatentDataset, build_cache, collate_cached
from videox_fun.training.config import TrainConfig
from videox_fun.training.data.dataset import drops_text
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.specs.wan_animate import draw_background_drop, draw_carried
from videox_fun.training.trainer import train

__all__ = ["animate_data", "animate_model", "replace_data"]  # module fixtures shared with the Animate training tests

SEED = 44  # its first 3 steps (batch 1, 5 frames) carry [1, 0, 1] frames and drop the background at step 2
DROP = 0.5  # text_drop_ratio: the cached run must drop the texts the decoded run drops
ENCODERS = ("vae", "text_encoder", "image_encoder")
LORA = dict(use_lora=True, rank=4, network_alpha=4.0)
WEIGHTS = {False: "transformer/diffusion_pytorch_model.safetensors", True: "lora.safetensors"}


def cache_config(model: Path, meta: Path, out: Path, **overrides: Any) -> TrainConfig:
    """An Animate run into ``out / "run"`` with its cache in ``out / "cache"`` (seed :data:`SEED`, :data:`DROP`)."""
    values = {"seed": SEED, "text_drop_ratio": DROP, "cache_dir": str(out / "cache"), **overrides}
    return animate_config(model, meta, out / "run", **values)


def lean_copy(folder: Path, target: Path) -> Path:
    """``folder`` without its VAE, text encoder and CLIP tower: what a run from the cache may not read."""
    shutil.copytree(folder, target)
    for name in ENCODERS:
        shutil.rmtree(target / name)
    return target


def test_the_seed_draws_every_outcome_in_three_steps():
    """The end-to-end runs' draws (batch 1, position 0; build_inputs draws first): frames carried and not, the
    background dropped and kept, texts dropped and kept."""
    draws = [sample_generators(SEED, step, 0, [0]) for step in range(3)]
    carried = [draw_carried(g, 5)[0] for g in draws]
    dropped = [draw_background_drop(g)[0] for g in draws]  # the same generators, after the carry draws
    texts = [drops_text(SEED, 0, index, DROP) for index in range(3)]
    assert carried == [1, 0, 1] and dropped == [False, False, True] and any(texts) and not all(texts)


def test_cached_inputs_equal_the_decoded_ones(animate_model, animate_data, tmp_path):
    """The whole dataset as one batch of 9-frame clips (entry 2 a replacement), 12 draws: every input from the cache
    equals the decoded one (max diff 0; the text context to fp32 rounding), across carry-overs 0 / 1 / 5 and both
    background outcomes of entry 2."""
    config = cache_config(animate_model, animate_data, tmp_path, video_sample_n_frames=9)
    assert main(["cache", "--config", str(write_train_yaml(config, tmp_path / "cache.yaml"))]) == 0
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)  # the encoders, for the decoded batch
    decoded = one_batch(config)  # entries 0, 1, 2 with the dataset's text drops (epoch 0)
    record = load_file(str(tmp_path / "cache" / "00000002.safetensors"))
    faces = decoded["face_pixel_values"][2]  # (3, 9, S, S): the crops at the size the dataset reads them
    assert record["face_frames"].dtype == torch.uint8 and torch.equal(record["face_frames"], tensor_to_frames(faces))
    assert record["segments"].shape == (2, 3, 20, 3, 4, 4) and record["carry_counts"].tolist() == [0, 1, 5]
    dataset = CachedLatentDataset(config.resolved_cache_dir, config)
    cached = collate_cached([dataset[index] for index in range(3)])
    assert cached["text_dropped"].tolist() == decoded["text_dropped"].tolist()
    assert any(cached["text_dropped"].tolist()) and not all(cached["text_dropped"].tolist())
    seen, gaps = set(), {}
    for step in range(12):
        expected = spec.build_inputs(models, decoded, "animate", sample_generators(SEED, step, 0, range(3)), "cpu")
        actual = spec.build_inputs(models, cached, "animate", sample_generators(SEED, step, 0, range(3)), "cpu")
        generators = sample_generators(SEED, step, 0, range(3))
        seen.add((draw_carried(generators, 9)[2], draw_background_drop(generators)[2]))
        gaps["latents"] = max(gaps.get("latents", 0.0), max_diff(actual.latents, expected.latents))
        for name, value in expected.conditions.items():
            mine = actual.conditions[name]
            if name == "context":  # cached contexts are cut to the longest prompt; the encoder's are zero-padded
                mine = F.pad(mine, (0, 0, 0, value.shape[1] - mine.shape[1]))
            gaps[name] = max(gaps.get(name, 0.0), max_diff(mine, value))
    print(f"Animate cached vs decoded inputs over 12 draws, max diff: {gaps}; entry 2's (carry, dropped): {seen}")
    assert {count for count, _ in seen} == {0, 1, 5} and {drop for _, drop in seen} == {False, True}
    # The text encoder ran on one prompt at a time for the cache (vae_mini_batch 1), on the three at once here: fp32
    # rounding of batched matmuls (measured 4.8e-7 to 8.3e-7); the rest is the same computation.
    assert gaps.pop("context") <= 2e-6 and all(gap == 0.0 for gap in gaps.values())


@pytest.mark.parametrize(
    ("mode", "lora"),
    [("animate", False), ("animate", True), ("replace", False), ("replace", True)],
    ids=["animate-full", "animate-lora", "replace-full", "replace-lora"],
)
def test_a_run_from_the_cache_is_the_run_from_the_videos(
    animate_model, animate_data, replace_data, tmp_path, mode, lora
):
    meta = replace_data if mode == "replace" else animate_data
    settings = dict(train_mode=mode, max_train_steps=3, learning_rate=3e-3, **(LORA if lora else {}))
    config = cache_config(animate_model, meta, tmp_path, **settings)
    build_cache(config)
    decoded = train(TrainConfig(**{**config.to_dict(), "output_dir": str(tmp_path / "decoded")}))
    lean = lean_copy(animate_model, tmp_path / "lean")
    cached = train(cache_config(lean, meta, tmp_path, use_cached_latents=True, **settings))
    gap = state_dict_max_diff(
        load_file(str(decoded.output_dir / WEIGHTS[lora])), load_file(str(cached.output_dir / WEIGHTS[lora]))
    )
    label = f"{mode} {'LoRA' if lora else 'full'}"
    print(f"{label}: 3 steps from the cache vs the videos: losses {cached.losses} vs {decoded.losses}; "
          f"weights max diff {gap:.1e}")  # fmt: skip
    assert cached.losses == decoded.losses and gap == 0.0


@pytest.mark.parametrize(
    ("mode", "lora"), [("animate", True), ("replace", False)], ids=["animate-lora", "replace-full"]
)
def test_a_run_from_the_cache_resumes_exactly(animate_model, animate_data, replace_data, tmp_path, mode, lora):
    meta = replace_data if mode == "replace" else animate_data
    settings = dict(train_mode=mode, **(LORA if lora else {}))
    build_cache(cache_config(animate_model, meta, tmp_path, **settings))

    def run(folder: str, steps: int, **more: Any):
        config = cache_config(animate_model, meta, tmp_path, use_cached_latents=True, max_train_steps=steps,
                              **settings, **more)  # fmt: skip
        return train(TrainConfig(**{**config.to_dict(), "output_dir": str(tmp_path / folder / "out")}))

    check_resume_matches_uninterrupted(run, tmp_path, lora, f"{mode} from the cache")


def test_a_cache_of_another_mode_or_model_is_refused_in_one_line(
    animate_model, animate_data, replace_data, make_config, tmp_path
):
    def refusal(config: TrainConfig) -> str:
        with pytest.raises(ValueError) as raised:
            train(config)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    build_cache(cache_config(animate_model, animate_data, tmp_path))  # animate mode
    replace = cache_config(animate_model, replace_data, tmp_path, train_mode="replace", use_cached_latents=True)
    message = refusal(replace)
    assert "was built for --train_mode animate" in message and "not replace" in message
    other = make_config("inp", train_mode="inpaint", cache_dir=str(tmp_path / "inp_cache"))  # an InP model's
    build_cache(other)
    cached = cache_config(animate_model, animate_data, tmp_path, use_cached_latents=True,
                          cache_dir=str(tmp_path / "inp_cache"), output_dir=str(tmp_path / "run_2"))  # fmt: skip
    message = refusal(cached)
    assert "was built for --train_mode inpaint" in message and "rebuild it with `videox-fun cache`" in message
    # The Animate cache read by an InP model's training lacks that mode's records: one line too.
    inpaint = make_config("inp", train_mode="inpaint", use_cached_latents=True, cache_dir=str(tmp_path / "cache"),
                          output_dir=str(tmp_path / "inp_run"))  # fmt: skip
    wrong = refusal(inpaint)
    print(f"refusals: {message!r}; {wrong!r}")
    assert "the latent cache has no 'masked_latents_" in wrong
