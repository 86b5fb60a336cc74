"""VACE training (``--train_mode vace``): the context of each drawn task, the stream trained alone, resume, cache.

The context a sample trains with is the one the pipeline builds for that task at inference
(:mod:`videox_fun.pipelines.vace`), so these tests rebuild it with the pipeline's functions and compare.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import REPO, check_resume_matches_uninterrupted, fixed_noise_loss, subprocess_env

from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.pipelines.vace import compose_source, vace_context
from videox_fun.training.cache import CachedLatentDataset, build_cache, collate_cached
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import BucketBatchSampler, DataConfig, VideoDataset, collate
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.specs.wan import PixelSource
from videox_fun.training.specs.wan_vace import REFERENCE_SHARE, draw_source_tasks, draws_reference
from videox_fun.training.trainer import train


def vace_config(make_config, tmp_path: Path, **overrides):
    """A VACE training config on the tiny VACE folder and the small video dataset (with control videos)."""
    return make_config("vace", train_mode="vace", output_dir=str(tmp_path / "out"), **overrides)


def one_batch(config) -> dict:
    """The first collated batch of the config's dataset (all 3 clips)."""
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    requests = next(iter(BucketBatchSampler(dataset, batch_size=len(dataset), shuffle=False)))
    return collate([dataset[r] for r in requests])


def test_task_draws_cover_every_task_and_the_reference_share():
    generators = sample_generators(0, 0, 0, range(600))
    tasks = draw_source_tasks(generators, control=True)
    counts = {task: tasks.count(task) for task in ("t2v", "mask", "control")}
    assert all(count > 100 for count in counts.values()), counts
    assert "control" not in draw_source_tasks(generators, control=False)
    references = [draws_reference(sample_generators(0, step, 0, [0])) for step in range(400)]
    assert abs(sum(references) / 400 - REFERENCE_SHARE) < 0.08
    raised = [draws_reference(sample_generators(0, step, 0, [0]), 0.85) for step in range(400)]
    assert abs(sum(raised) / 400 - 0.85) < 0.08
    assert all(r for r, s in zip(references, raised, strict=True) if r)  # the same draw, a higher bar


def test_reference_share_outside_zero_one_is_refused(make_config, tmp_path):
    with pytest.raises(ValueError, match="--vace_reference_share must be within"):
        vace_config(make_config, tmp_path, vace_reference_share=1.5).validate()


def test_each_sample_trains_on_the_context_the_pipeline_builds(make_config, tmp_path):
    config = vace_config(make_config, tmp_path, text_drop_ratio=0.0)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    batch = one_batch(config)
    vae = models.frozen["vae"]
    seen = set()
    for step in range(12):
        generators = sample_generators(7, step, 0, range(3))
        inputs = spec.build_inputs(models, batch, "vace", generators, "cpu")
        context = inputs.conditions["vace_context"]  # (B, 96, R + F', h, w)
        references = inputs.latents.shape[2] - 2  # 5 frames -> 2 latent frames
        assert references in (0, 1) and context.shape[2] == inputs.latents.shape[2]
        tasks = draw_source_tasks(sample_generators(7, step, 0, range(3)), control=True)
        for row, task in enumerate(tasks):
            seen.add((task, references))
            video = batch["pixel_values"][row : row + 1]
            if task == "mask":
                frames, generate = compose_source(5, 32, 32, video=video, mask=batch["mask"][row : row + 1])
            elif task == "control":
                frames, generate = compose_source(5, 32, 32, control=batch["control_pixel_values"][row : row + 1])
            else:
                frames, generate = compose_source(5, 32, 32)
            with torch.no_grad():
                expected = vace_context(vae, frames, generate)  # (1, 96, F', h, w)
            torch.testing.assert_close(context[row : row + 1, :, references:], expected, atol=1e-5, rtol=1e-5)
            if references:  # the subject frame: its latent in front of both, zero reactive half and mask
                torch.testing.assert_close(context[row, :16, 0], inputs.latents[row, :, 0])
                assert not context[row, 16:, 0].any()
    assert {task for task, _ in seen} == {"t2v", "mask", "control"} and {r for _, r in seen} == {0, 1}


def test_training_the_vace_stream_alone_lowers_the_loss_and_keeps_the_base(make_config, tmp_path):
    config = vace_config(make_config, tmp_path, trainable_modules=["vace"], max_train_steps=30, learning_rate=3e-3)
    base = WanTransformer3DModel.from_pretrained(config.pretrained_model_name_or_path)
    before = fixed_noise_loss(config, base)
    train(config)
    trained = WanTransformer3DModel.from_pretrained(Path(config.output_dir) / "transformer")
    after = fixed_noise_loss(config, trained)
    print(f"VACE stream only: fixed-noise loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before
    moved = {k for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert moved and all(k.startswith("vace_") for k in moved)


@pytest.mark.parametrize(
    "settings",
    [dict(gradient_accumulation_steps=2), dict(use_lora=True, rank=4, network_alpha=4.0)],
    ids=["full", "lora"],
)
def test_vace_run_stopped_and_resumed_matches_an_uninterrupted_one(make_config, tmp_path, settings):
    def run(folder: str, steps: int, **more):
        return train(vace_config(make_config, tmp_path / folder, max_train_steps=steps, **settings, **more))

    check_resume_matches_uninterrupted(run, tmp_path, bool(settings.get("use_lora")), "VACE")


def test_vace_training_from_a_latent_cache(make_config, tmp_path):
    cache = tmp_path / "cache"
    config = vace_config(make_config, tmp_path, max_train_steps=6, cache_dir=str(cache), text_drop_ratio=0.0)
    build_cache(config)
    cached = collate_cached([CachedLatentDataset(cache, config)[i] for i in range(3)])
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    pixels = PixelSource(spec, models, one_batch(config), torch.device("cpu"))
    # The cached pieces are what the pixel source computes: the empty source, a greyed-out second half,
    # and the subject frames (first, middle, last).
    torch.testing.assert_close(cached["vace_empty"], pixels.empty_latents())
    second_half = torch.ones(3, 1, 5, 32, 32)
    second_half[:, :, :1] = 0.0  # 5 frames = 2 latent frames: the first known, the rest to continue
    pixels.batch = {**pixels.batch, "mask": second_half}
    _, greyed = pixels.vace_masked([0, 1, 2], sample_generators(0, 0, 0, range(3)))
    torch.testing.assert_close(cached["vace_masked_second_half"], greyed)
    assert cached["ref_frame_index"][0].tolist() == [0, 2, 4]
    torch.testing.assert_close(cached["ref_latents"][:, 2], pixels.frame_latents([4, 4, 4]))

    result = train(TrainConfig(**{**config.to_dict(), "use_cached_latents": True}))
    assert result.global_step == 6 and torch.isfinite(torch.tensor(result.losses)).all()


def test_the_vace_fun_train_script_trains_vace_by_default(make_config, tmp_path):
    """``scripts/wan2.2_vace_fun/train.py`` is train.py with ``--train_mode vace`` (VideoX-Fun's flags)."""
    config = vace_config(make_config, tmp_path, max_train_steps=2)
    flags = [f"--{name}={value}" for name, value in (
        ("pretrained_model_name_or_path", config.pretrained_model_name_or_path),
        ("train_data_meta", config.train_data_meta), ("output_dir", config.output_dir),
        ("video_sample_size", 32), ("video_sample_n_frames", 5), ("max_train_steps", 2),
        ("report_to", "none"), ("trainable_modules", "vace"),
    )]  # fmt: skip
    script = REPO / "scripts" / "wan2.2_vace_fun" / "train.py"
    done = subprocess.run([sys.executable, str(script), *flags], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    record = yaml.safe_load((Path(config.output_dir) / "train_config.yaml").read_text())
    assert record["train_mode"] == "vace" and record["trainable_modules"] == ["vace"]


@pytest.mark.parametrize(
    ("script", "mode", "lora"),
    [
        ("wan2.2/train.py", "normal", False),
        ("wan2.2/train_lora.py", "normal", True),
        ("wan2.2_fun/train.py", "normal", False),
        ("wan2.2_fun/train_control.py", "control", False),
        ("wan2.2_vace_fun/train_lora.py", "vace", True),
    ],
)
def test_each_train_script_has_its_own_defaults(script, mode, lora):
    """The scripts are one entry (run_train_script) with different presets; their --help shows the defaults."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), "--help"], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = (REPO / "scripts" / script).read_text()
    assert (f'train_mode="{mode}"' in text) == (mode != "normal") and ("use_lora=True" in text) == lora
