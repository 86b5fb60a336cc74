"""Wan2.2 training modes: ``ti2v`` (TI2V-5B: the image as the clean first latent frame), ``i2v`` (start image
through mask + image channels), and the Wan2.2-Fun layouts in their modes.

A known first latent frame is held clean in the transformer's input, gets timestep 0 on its tokens and is
left out of the loss: what the pipeline does when it samples image-to-video with these models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import fixed_noise_loss

from videox_fun.io.camera import make_trajectory, read_camera_trajectory, write_camera_trajectory
from videox_fun.models.wan.tiny import build_tiny_model_folder
from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.pipelines.conditioning import camera_condition, held_timestep_scale
from videox_fun.training.cache import build_cache
from videox_fun.training.data import BucketBatchSampler, DataConfig, VideoDataset, collate, write_test_dataset
from videox_fun.training.objectives import FlowMatching, objective_loss
from videox_fun.training.specs import get_spec, sample_generators
from videox_fun.training.trainer import train


@pytest.fixture(scope="module")
def wan22_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny folders of Wan2.2 layouts: TI2V-5B and the Fun 5B InP / Control, A14B Control."""
    root = tmp_path_factory.mktemp("wan22")
    return {
        name: build_tiny_model_folder(root / name, name) for name in ("ti2v", "5b_inp", "5b_control", "a14b_control")
    }


def first_batch(config) -> dict:
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    requests = next(iter(BucketBatchSampler(dataset, batch_size=len(dataset), shuffle=False)))
    return collate([dataset[r] for r in requests])


def captured_call(config, step: int = 0) -> tuple[torch.Tensor, dict, list]:
    """One loss of the first batch through the real tiny model; what its forward received: x, t, and the inputs."""
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    seen: dict = {}
    models.transformer.register_forward_pre_hook(lambda module, args: seen.update(x=args[0], t=args[1]))
    generators = sample_generators(3, step, 0, range(3))
    inputs = spec.build_inputs(models, first_batch(config), config.train_mode, generators, "cpu")
    generators = sample_generators(3, step, 0, range(3))
    objective = FlowMatching(sampling="uniform")
    loss = objective_loss(
        spec, models, models.transformer, objective, first_batch(config), config.train_mode, generators, "cpu"
    )
    return loss, seen, inputs


def test_ti2v_holds_the_first_latent_frame_clean_at_timestep_zero(make_config, wan22_folders):
    config = make_config(pretrained_model_name_or_path=str(wan22_folders["ti2v"]), train_mode="ti2v")
    held = []
    for step in range(6):
        _, seen, inputs = captured_call(config, step)
        assert inputs.known_frames is None or inputs.known_frames[:, 1:].sum() == 0
        known = inputs.known_frames[:, 0] if inputs.known_frames is not None else torch.zeros(3, dtype=torch.bool)
        tokens_per_frame = seen["t"].shape[1] // inputs.latents.shape[2] if seen["t"].dim() == 2 else 0
        for row in range(3):
            if known[row]:
                torch.testing.assert_close(seen["x"][row, :, 0], inputs.latents[row, :, 0])  # clean image latent
                assert not seen["t"][row, :tokens_per_frame].any() and seen["t"][row, tokens_per_frame:].gt(0).all()
            else:
                assert not torch.equal(seen["x"][row, :, 0], inputs.latents[row, :, 0])
            held.append(bool(known[row]))
    assert 0 < sum(held) < len(held)  # both image-to-video and text-to-video samples


def test_known_frames_are_left_out_of_the_loss():
    objective = FlowMatching()
    latents, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    sigmas = torch.tensor([0.3, 0.7])
    target = noise - latents
    prediction = target.clone()
    prediction[:, :, 0] += 5.0  # wrong on the first frame only
    counted = torch.tensor([[False, True, True]] * 2)[:, None, :, None, None]
    assert objective.loss(prediction, latents, noise, sigmas, counted).item() == 0.0
    assert objective.loss(prediction, latents, noise, sigmas).item() == pytest.approx(25.0 / 3)


@pytest.mark.parametrize(
    ("folder", "mode"),
    [
        ("ti2v", "ti2v"),
        ("5b_inp", "i2v"),
        ("5b_inp", "inpaint"),
        ("5b_control", "control"),
        ("a14b_control", "control_ref"),
    ],
)
def test_wan22_modes_lower_the_loss(make_config, wan22_folders, tmp_path, folder, mode):
    config = make_config(
        pretrained_model_name_or_path=str(wan22_folders[folder]),
        train_mode=mode,
        max_train_steps=25,
        learning_rate=2e-3,
        output_dir=str(tmp_path / "out"),
    )
    before = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(wan22_folders[folder]))
    train(config)
    after = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer"))
    print(f"{folder} --train_mode {mode}: fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before


def test_fun_5b_inp_holds_a_known_first_frame_as_its_pipeline_does(make_config, wan22_folders):
    config = make_config(pretrained_model_name_or_path=str(wan22_folders["5b_inp"]), train_mode="i2v")
    _, seen, inputs = captured_call(config)
    assert inputs.known_frames[:, 0].all() and not inputs.known_frames[:, 1:].any()
    torch.testing.assert_close(seen["x"][:, :, 0], inputs.latents[:, :, 0])


def test_fun_5b_inpaint_trains_with_its_pipelines_per_token_timesteps(make_config, wan22_folders):
    """A spatial mask scales each token's timestep by the resized mask; a whole known first frame is held."""
    config = make_config(
        pretrained_model_name_or_path=str(wan22_folders["5b_inp"]), train_mode="inpaint",
        video_sample_size=[64], text_drop_ratio=0.0,
    )  # fmt: skip
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    seen: dict = {}
    models.transformer.register_forward_pre_hook(lambda module, args: seen.update(x=args[0], t=args[1]))
    batch = first_batch(config)
    masks = torch.ones(3, 1, 5, 64, 64)
    masks[0, :, :, :, 32:] = 0.0  # a box: the right half kept in every frame
    masks[1, :, 0] = 0.0  # the first frame known whole (image to video)
    batch["mask"] = masks  # sample 2: everything generated
    generators = sample_generators(0, 0, 0, range(3))
    inputs = spec.build_inputs(models, batch, "inpaint", generators, "cpu")
    expected = held_timestep_scale(masks, inputs.latents.shape[2:])  # (B, F', h, w) = (3, 2, 4, 4)
    torch.testing.assert_close(inputs.timestep_scale, expected)
    assert inputs.known_frames[:, 0].tolist() == [False, True, False]

    objective = FlowMatching(sampling="uniform")
    objective_loss(spec, models, models.transformer, objective, batch, "inpaint", generators, "cpu")
    tokens = expected[:, :, ::2, ::2].flatten(1)  # (B, L): each 2 x 2 patch's first latent pixel
    assert 0 < tokens[0].mean() < 1 and not tokens[1, :4].any() and tokens[2].eq(1).all()
    per_sample = seen["t"].amax(dim=1, keepdim=True)  # the sample's t, on its generated tokens
    torch.testing.assert_close(seen["t"], per_sample * tokens)
    torch.testing.assert_close(seen["x"][1, :, 0], inputs.latents[1, :, 0])  # held clean


def test_ti2v_resumes_exactly(make_config, tmp_path, wan22_folders):
    def run(folder: str, steps: int, **more):
        settings = dict(pretrained_model_name_or_path=str(wan22_folders["ti2v"]), train_mode="ti2v")
        return train(make_config(output_dir=str(tmp_path / folder), max_train_steps=steps, **settings, **more))

    whole = run("whole", 4)
    first = run("split", 2)
    rest = run("split", 4, resume_from_checkpoint="latest")
    assert first.losses + rest.losses == whole.losses


@pytest.mark.parametrize(
    ("folder", "mode", "message"),
    [
        ("5b_inp", "ti2v", "--train_mode ti2v trains Wan2.2 TI2V-5B-style models"),
        ("ti2v", "i2v", "use --train_mode ti2v"),
    ],
)
def test_a_mode_the_model_cannot_train_is_refused_in_one_line(make_config, wan22_folders, folder, mode, message):
    config = make_config(pretrained_model_name_or_path=str(wan22_folders[folder]), train_mode=mode, max_train_steps=1)
    with pytest.raises(ValueError, match=message) as error:
        train(config)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------
# Control-Camera training (control_camera_ref): trajectories as control files
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camera_data(tmp_path_factory) -> Path:
    """The three small videos, each with a camera trajectory (.txt, one pose per frame) as its control file."""
    root = tmp_path_factory.mktemp("camera_videos")
    meta = write_test_dataset(root, n_videos=3, sizes=((32, 32),), lengths=(9,))
    entries = json.loads(meta.read_text())
    for index, (entry, name) in enumerate(zip(entries, ("pan_left", "zoom_in", "orbit_right"), strict=True)):
        path = write_camera_trajectory(make_trajectory(name, 9), root / f"camera_{index}.txt", header="test")
        entry["control_file_path"] = str(path)
    meta.write_text(json.dumps(entries))
    return meta


@pytest.mark.parametrize("layout", ["camera", "a14b_camera", "5b_camera"])
def test_camera_training_sees_the_clips_trajectory_and_lowers_the_loss(
    make_config, camera_data, tmp_path, layout, model_folders
):
    folder = build_tiny_model_folder(tmp_path / layout, layout)
    settings = dict(pretrained_model_name_or_path=str(folder), train_data_meta=str(camera_data))
    config = make_config(train_mode="control_camera_ref", **settings, text_drop_ratio=0.0)
    _, _, inputs = captured_call(config)
    # The camera input is the pipeline's for the same trajectory file.
    poses = read_camera_trajectory(json.loads(camera_data.read_text())[1]["control_file_path"])
    expected = camera_condition(poses[:5], 32, 32)  # 5 frames sampled, stride 1 from frame 0
    torch.testing.assert_close(inputs.conditions["camera"][1:2], expected)

    config = make_config(
        train_mode="control_camera_ref", **settings, max_train_steps=25, learning_rate=2e-3,
        output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    before = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(folder))
    train(config)
    after = fixed_noise_loss(config, WanTransformer3DModel.from_pretrained(tmp_path / "out" / "transformer"))
    print(f"{layout} --train_mode control_camera_ref: fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before


def test_camera_training_from_a_latent_cache_resumes_exactly(make_config, camera_data, tmp_path):
    folder = build_tiny_model_folder(tmp_path / "a14b_camera", "a14b_camera")
    settings = dict(
        pretrained_model_name_or_path=str(folder), train_data_meta=str(camera_data), train_mode="control_camera_ref"
    )
    build_cache(make_config(**settings, cache_dir=str(tmp_path / "cache")))
    cached = dict(settings, use_cached_latents=True, cache_dir=str(tmp_path / "cache"))
    whole = train(make_config(**cached, output_dir=str(tmp_path / "whole"), max_train_steps=4))
    first = train(make_config(**cached, output_dir=str(tmp_path / "split"), max_train_steps=2))
    rest = train(
        make_config(**cached, output_dir=str(tmp_path / "split"), max_train_steps=4, resume_from_checkpoint="latest")
    )
    assert first.losses + rest.losses == whole.losses


def test_camera_training_without_trajectories_is_one_line(make_config, tmp_path, capsys):
    folder = build_tiny_model_folder(tmp_path / "camera", "camera")
    config = make_config(pretrained_model_name_or_path=str(folder), train_mode="control_camera_ref", max_train_steps=1)
    with pytest.raises(ValueError, match="control_camera_ref needs a camera trajectory per clip") as error:
        train(config)
    assert "\n" not in str(error.value)
