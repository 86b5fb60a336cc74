"""Wan2.2-Animate training (``--train_mode animate`` / ``replace``) on the tiny random Animate model.

Each sample trains on the inputs the pipeline builds for a segment (:mod:`videox_fun.pipelines.animate`): these
tests rebuild them with the pipeline's own methods and compare, then train (full and LoRA), resume, and refuse.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import FAST, REPO, check_resume_matches_uninterrupted, fixed_noise_loss, subprocess_env

from videox_fun.io.video import letterbox, read_image, read_video, tensor_to_frames, write_video
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.pipelines.animate import WanAnimatePipeline
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import (
    BadFileWarning,
    BucketBatchSampler,
    DataConfig,
    VideoDataset,
    collate,
    write_test_dataset,
)
from videox_fun.training.data.metadata import MetadataError
from videox_fun.training.lora import load_lora
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.specs.wan_animate import draw_background_drop, draw_carried
from videox_fun.training.trainer import train

PERSON = (8, 24)  # the person of the replacement entry: pixels 8 to 23 of its 32 x 32 frames


@pytest.fixture(scope="module")
def animate_model(tmp_path_factory) -> Path:
    """The tiny random Wan2.2-Animate folder (transformer, VAE, text encoder, CLIP tower)."""
    return build_tiny_model_folder(tmp_path_factory.mktemp("animate_model") / "animate", "animate")


@pytest.fixture(scope="module")
def animate_data(tmp_path_factory) -> Path:
    """Three 9-frame 32 x 32 clips with pose videos (control_file_path) and 512 x 512 face videos (the clip
    upscaled, so faces move with it). Entry 0 names a 24 x 40 reference image; entry 2 is a replacement sample
    (background_file_path, mask_file_path: the person is a square); the others draw a frame as reference."""
    folder = tmp_path_factory.mktemp("animate_data")
    meta = write_test_dataset(folder, n_videos=3, sizes=((32, 32),), lengths=(9,), with_control=True)
    entries = json.loads(meta.read_text())
    for index, entry in enumerate(entries):
        frames = read_video(folder / entry["file_path"])  # (9, 32, 32, 3)
        face = frames.repeat_interleave(16, 1).repeat_interleave(16, 2)  # (9, 512, 512, 3)
        entry["face_file_path"] = str(write_video(face, folder / f"face/{index}.mp4"))
    reference = np.random.default_rng(0).integers(0, 256, (1, 24, 40, 3), dtype=np.uint8)
    entries[0]["ref_file_path"] = str(write_video(reference, folder / "ref/0.png"))
    background = read_video(folder / entries[1]["file_path"])  # another clip as the background
    person = np.zeros((9, 32, 32, 3), dtype=np.uint8)
    person[:, PERSON[0] : PERSON[1], PERSON[0] : PERSON[1]] = 255
    entries[2]["background_file_path"] = str(write_video(background, folder / "bg/2.mp4"))
    entries[2]["mask_file_path"] = str(write_video(person, folder / "mask/2.mp4"))
    meta.write_text(json.dumps(entries))
    return meta


@pytest.fixture(scope="module")
def replace_data(animate_data: Path) -> Path:
    """The three clips as replacement samples: entry 2's background and person mask given to every entry (beside
    the animate metadata, so its relative paths resolve as they do)."""
    entries = json.loads(animate_data.read_text())
    for entry in entries:
        entry["background_file_path"] = entries[2]["background_file_path"]
        entry["mask_file_path"] = entries[2]["mask_file_path"]
    meta = animate_data.with_name("replace.json")
    meta.write_text(json.dumps(entries))
    return meta


def animate_config(animate_model: Path, meta: Path, output: Path, **overrides) -> TrainConfig:
    """A fast ``--train_mode animate`` config on the tiny Animate model."""
    values = {
        **FAST,
        "pretrained_model_name_or_path": str(animate_model),
        "train_data_meta": str(meta),
        "output_dir": str(output),
        "train_mode": "animate",
        **overrides,
    }
    return TrainConfig(**values)


def one_batch(config: TrainConfig) -> dict:
    """The first collated batch of the config's dataset (all 3 clips, in entry order)."""
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    requests = next(iter(BucketBatchSampler(dataset, batch_size=len(dataset), shuffle=False)))
    return collate([dataset[r] for r in requests])


def test_each_sample_trains_on_the_segment_the_pipeline_builds(animate_model, animate_data, tmp_path):
    """y (reference frame, carried-over frames, background), CLIP tokens and pose latents of every sample equal the
    pipeline's for that segment: its first frames carried as the pipeline carries a previous segment's last ones."""
    config = animate_config(animate_model, animate_data, tmp_path, video_sample_n_frames=9, text_drop_ratio=0.0)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    batch = one_batch(config)
    pipe = WanAnimatePipeline.from_pretrained(animate_model)
    # The dataset's reference: entry 0's image letterboxed as the pipeline reads src_ref.png; the others a frame.
    image = letterbox(read_image(Path(animate_data).parent / "ref/0.png"), 32, 32)
    assert torch.equal(tensor_to_frames(batch["ref_pixel_values"][:1, :, None][0])[0], image)
    assert any(torch.equal(batch["ref_pixel_values"][1], frame) for frame in batch["pixel_values"][1].unbind(1))
    seen = set()
    for step in range(10):
        inputs = spec.build_inputs(models, batch, "animate", sample_generators(5, step, 0, range(3)), "cpu")
        generators = sample_generators(5, step, 0, range(3))
        carried, dropped = draw_carried(generators, 9), draw_background_drop(generators)
        assert inputs.latents.shape == (3, 16, 4, 4, 4) and inputs.known_frames is None  # reference + 3 latent frames
        for row in range(3):
            reference = tensor_to_frames(batch["ref_pixel_values"][row, :, None])[0]
            shared = pipe._shared_inputs(reference, "", "")
            clip = {"pose": tensor_to_frames(batch["control_pixel_values"][row])}
            if row == 2 and not dropped[row]:
                clip.update(background=tensor_to_frames(batch["background_pixel_values"][row]))
                clip.update(person=batch["person_mask"][row, 0])
            known = batch["pixel_values"][row : row + 1, :, : carried[row]] if carried[row] else None
            with torch.no_grad():
                segment = pipe._conditioning(clip, known)
                pose = pipe.pipe.vae.encode(batch["control_pixel_values"][row : row + 1])
            y = inputs.conditions["y"][row : row + 1]
            torch.testing.assert_close(y[:, :, :1], shared["y_ref"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(y[:, :, 1:], segment, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(inputs.latents[row, :, 0], shared["y_ref"][0, 4:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(inputs.conditions["clip_fea"][row : row + 1], shared["clip_fea"])
            torch.testing.assert_close(inputs.conditions["pose_latents"][row : row + 1], pose, atol=1e-5, rtol=1e-5)
            seen.add((carried[row], row == 2 and not dropped[row]))
    assert {count for count, _ in seen} == {0, 1, 5} and (0, True) in seen  # every carry-over, a replacement
    # read at the release's 512 x 512, resized to the tiny motion encoder's side
    side = models.transformer.config.motion_encoder_size
    assert inputs.conditions["face_pixel_values"].shape == (3, 3, 9, side, side) and side != 512


def test_carry_over_is_drawn_for_a_quarter_of_the_samples_among_the_release_counts():
    """1 or 5 frames carried (fewer than the clip's), for CARRY_SHARE of the samples; background drops 10%."""
    generators = sample_generators(0, 0, 0, range(2000))
    counts = draw_carried(generators, 9)
    share = sum(1 for c in counts if c) / len(counts)
    assert abs(share - 0.25) < 0.04 and set(counts) == {0, 1, 5} and set(draw_carried(generators, 5)) == {0, 1}
    assert abs(sum(draw_background_drop(generators)) / len(generators) - 0.1) < 0.03


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(use_lora=True, rank=4, network_alpha=4.0)],
    ids=["full", "lora"],
)
def test_animate_training_lowers_the_fixed_noise_loss(animate_model, animate_data, tmp_path, settings):
    config = animate_config(animate_model, animate_data, tmp_path / "out", max_train_steps=12, learning_rate=3e-3)
    config = TrainConfig(**{**config.to_dict(), **settings})
    base = WanTransformer3DModel.from_pretrained(animate_model)
    before = fixed_noise_loss(config, base)
    train(config)
    if settings:
        trained = WanTransformer3DModel.from_pretrained(animate_model)
        load_lora(trained, tmp_path / "out" / "lora.safetensors")
    else:
        trained = WanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer")
    after = fixed_noise_loss(config, trained)
    print(f"Animate {'LoRA' if settings else 'full'}: fixed-noise loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before


@pytest.mark.parametrize(
    "settings",
    [dict(gradient_accumulation_steps=2), dict(use_lora=True, rank=4, network_alpha=4.0)],
    ids=["full", "lora"],
)
def test_animate_run_stopped_and_resumed_matches_an_uninterrupted_one(animate_model, animate_data, tmp_path, settings):
    def run(folder: str, steps: int, **more):
        output = tmp_path / folder / "out"
        return train(animate_config(animate_model, animate_data, output, max_train_steps=steps, **settings, **more))

    check_resume_matches_uninterrupted(run, tmp_path, bool(settings.get("use_lora")), "Animate")


def test_replace_training_lowers_the_fixed_noise_loss_and_resumes_exactly(animate_model, replace_data, tmp_path):
    """``--train_mode replace`` end to end: every sample a replacement (background + person mask); full training
    lowers the fixed-noise loss, and a run stopped and resumed equals an uninterrupted one."""
    config = animate_config(animate_model, replace_data, tmp_path / "out", max_train_steps=12, learning_rate=3e-3,
                            train_mode="replace")  # fmt: skip
    before = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(animate_model))
    train(config)
    after = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer"))
    print(f"Replace full: fixed-noise loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before

    def run(folder: str, steps: int, **more):
        output = tmp_path / folder / "out"
        return train(animate_config(animate_model, replace_data, output, max_train_steps=steps,
                                    train_mode="replace", gradient_accumulation_steps=2, **more))  # fmt: skip

    check_resume_matches_uninterrupted(run, tmp_path, False, "Replace")


def test_a_missing_face_or_pose_file_is_one_line(animate_data, tmp_path):
    entries = json.loads(animate_data.read_text())
    entries[0]["face_file_path"] = "face/nowhere.mp4"
    entries[1]["control_file_path"] = "control/nowhere.mp4"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(entries))
    data = DataConfig(train_data_meta=meta, train_data_dir=animate_data.parent, train_mode="animate", max_bad_share=1.0)
    dataset = VideoDataset(data, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadFileWarning)
        dataset.probe()
    messages = [str(w.message) for w in caught if issubclass(w.category, BadFileWarning)]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "face/nowhere.mp4: face_file_path not found" in messages[0]
    assert "control/nowhere.mp4" in messages[1] and "not found" in messages[1]
    # An entry without a face video at all is a metadata error naming the field; replace needs bg + mask.
    del entries[0]["face_file_path"]
    meta.write_text(json.dumps(entries))
    with pytest.raises(MetadataError, match=r"face-crop video from 'face_file_path'.*1 of 3 have none"):
        VideoDataset(DataConfig(train_data_meta=meta, train_mode="animate"), progress=False)
    with pytest.raises(MetadataError, match=r"'background_file_path'.*2 of 3 have none"):
        VideoDataset(DataConfig(train_data_meta=animate_data, train_mode="replace"), progress=False)


def test_refusals_are_one_line(animate_model, animate_data, make_config, tmp_path):
    def refusal(config: TrainConfig) -> str:
        with pytest.raises(ValueError) as raised:
            get_spec(config).load_models(config, torch.float32)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    config = animate_config(animate_model, animate_data, tmp_path)
    normal = TrainConfig(**{**config.to_dict(), "train_mode": "normal"})
    assert "trains with --train_mode animate or replace" in refusal(normal)
    assert "trains Wan2.2-Animate models" in refusal(make_config("inp", train_mode="animate"))
    validated = TrainConfig(**{**config.to_dict(), "validation_steps": 5, "validation_prompts": ["a"]})
    assert "predict_animate.py" in refusal(validated)


def test_the_train_animate_script_trains_animate_by_default(animate_model, animate_data, tmp_path):
    """``scripts/wan2.2/train_animate.py`` is the shared entry with ``--train_mode animate`` (VideoX-Fun's flags)."""
    flags = [f"--{name}={value}" for name, value in (
        ("pretrained_model_name_or_path", animate_model), ("train_data_meta", animate_data),
        ("output_dir", tmp_path / "out"), ("video_sample_size", 32), ("video_sample_n_frames", 5),
        ("video_sample_stride", 1), ("max_train_steps", 1), ("report_to", "none"),
    )]  # fmt: skip
    script = REPO / "scripts" / "wan2.2" / "train_animate.py"
    done = subprocess.run([sys.executable, str(script), *flags], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "transformer").is_dir()
    assert 'train_mode="animate"' in script.read_text()
