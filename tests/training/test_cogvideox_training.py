"""CogVideoX training: v-prediction on the folder's DDPM schedule (checked against diffusers' scheduler),
the spec picked from the folder's family, InP inputs laid out as the pipeline lays them, t2v / inpaint /
control / LoRA runs that fit a repeated clip, exact resume, outputs that our loader and diffusers read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, DDPMScheduler
from diffusers import CogVideoXPipeline as DiffusersCogVideoXPipeline
from diffusers import CogVideoXTransformer3DModel as DiffusersCogVideoX
from helpers import state_dict_max_diff
from safetensors.torch import load_file
from training_helpers import FAST

from videox_fun.models.cogvideox.tiny import SCHEDULER_CONFIG, build_tiny_cogvideox_folder
from videox_fun.models.cogvideox.transformer import CogVideoXTransformer
from videox_fun.models.cogvideox.variants import CogVideoXConfig
from videox_fun.models.lora import merge_lora
from videox_fun.pipelines.cogvideox import CogVideoXPipeline
from videox_fun.training.config import TrainConfig
from videox_fun.training.data import BucketBatchSampler, DataConfig, VideoDataset, collate, write_test_dataset
from videox_fun.training.objectives import VPrediction, objective_loss
from videox_fun.training.specs import get_spec, sample_generators, spec_name
from videox_fun.training.specs.cogvideox import CogVideoXSpec
from videox_fun.training.trainer import train


@pytest.fixture(scope="module")
def cog_folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny CogVideoX folders by variant (t2v: 2b-like sin-cos positions; inp, control: 5b-like rotary)."""
    built: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in built:
            built[variant] = build_tiny_cogvideox_folder(tmp_path_factory.mktemp(f"cog_{variant}") / variant, variant)
        return built[variant]

    return get


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Metadata of one 32x32, 9-frame moving-square clip with its control video."""
    folder = tmp_path_factory.mktemp("cog_clip")
    return write_test_dataset(folder, n_videos=1, sizes=((32, 32),), lengths=(9,), with_control=True)


@pytest.fixture
def cog_config(cog_folders, one_clip, tmp_path) -> Callable[..., TrainConfig]:
    """TrainConfig factory on a tiny CogVideoX folder (no --family: the folder's family picks the spec)."""

    def make(variant: str = "inp", **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            **FAST,
            "pretrained_model_name_or_path": str(cog_folders(variant)),
            "train_data_meta": str(one_clip),
            "output_dir": str(tmp_path / "out"),
            "video_sample_n_frames": 9,  # 3 latent frames of 4x4
            "text_drop_ratio": 0.0,
            **overrides,
        }
        return TrainConfig(**values)

    return make


def fixed_loss(config: TrainConfig, transformer: torch.nn.Module, draws: int = 6) -> float:
    """The v-prediction loss of ``transformer`` on the clip at fixed timesteps and noise (the same draws every call)."""
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    models.transformer = transformer.eval()
    objective = spec.objective(models, config)
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    batch = collate([dataset[r] for r in next(iter(BucketBatchSampler(dataset, batch_size=1, shuffle=False)))])
    with torch.no_grad():
        losses = [
            objective_loss(spec, models, transformer, objective, batch, config.train_mode,
                           sample_generators(99, -1, draw, [0]), "cpu").item()
            for draw in range(draws)
        ]  # fmt: skip
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr_shift_scale", [1.0, 3.0])  # CogVideoX-5b's and -2b's scheduler configs
def test_v_prediction_is_diffusers_add_noise_and_get_velocity(snr_shift_scale):
    config = {**SCHEDULER_CONFIG, "snr_shift_scale": snr_shift_scale}
    objective = VPrediction.from_scheduler_config(config)
    scheduler = CogVideoXDDIMScheduler.from_config(config)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 16, 3, 4, 4, generator=generator)
    noise = torch.randn(5, 16, 3, 4, 4, generator=generator)
    t = torch.tensor([0, 1, 500, 998, 999])
    target, theirs = objective.target(x0, noise, t), scheduler.get_velocity(x0, noise, t)
    print(f"snr_shift_scale {snr_shift_scale}: target vs get_velocity max diff {(target - theirs).abs().max():.1e}")
    assert torch.equal(target, theirs)
    assert torch.equal(objective.noisy(x0, noise, t), scheduler.add_noise(x0, noise, t))

    # The loss is diffusers' CogVideoX script's: x0 estimate from v, weighted by 1 / (1 - alphas_cumprod).
    noisy = scheduler.add_noise(x0, noise, t)
    model_output = theirs + 0.1 * torch.randn(x0.shape, generator=generator)
    x0_pred = scheduler.get_velocity(model_output, noisy, t)
    weights = (1 / (1 - scheduler.alphas_cumprod[t])).view(-1, 1, 1, 1, 1)
    their_loss = (weights * (x0_pred - x0) ** 2).reshape(5, -1).mean(dim=1).mean()
    ours = objective.loss(model_output, x0, noise, t)
    torch.testing.assert_close(ours.double(), their_loss.double(), rtol=1e-4, atol=0)
    assert objective.loss(theirs, x0, noise, t).item() == 0.0

    # VideoX-Fun's DDPMScheduler from the same file ignores snr_shift_scale; at 1.0 the schedules agree.
    if snr_shift_scale == 1.0:
        ddpm = DDPMScheduler.from_config(config)
        torch.testing.assert_close(objective.target(x0, noise, t), ddpm.get_velocity(x0, noise, t), rtol=0, atol=1e-5)

    draws = objective.sample_timesteps(sample_generators(0, 0, 0, range(4000)))
    assert draws.dtype == torch.int64 and draws.min() >= 0 and draws.max() <= 999
    assert abs(draws.float().mean().item() - 499.5) < 15  # uniform over the 1000 steps


def test_flow_matching_settings_are_refused_for_v_prediction(cog_config):
    config = cog_config("t2v")
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    assert isinstance(spec.objective(models, config), VPrediction)
    for flags in ({"shift": 3.0}, {"weighting_scheme": "cosmap"}, {"timestep_sampling": "mode"}):
        with pytest.raises(ValueError) as raised:
            spec.objective(models, cog_config("t2v", **flags))
        message = str(raised.value)
        assert "\n" not in message and f"--{next(iter(flags))}" in message and "does not use" in message


def test_the_folder_family_picks_the_spec_and_family_still_overrides(cog_config, model_folders):
    assert spec_name(cog_config("inp")) == "cogvideox" and isinstance(get_spec(cog_config("inp")), CogVideoXSpec)
    wan = TrainConfig(pretrained_model_name_or_path=str(model_folders("t2v")))
    assert spec_name(wan) == "wan"
    assert spec_name(cog_config("inp", family="cogvideox")) == "cogvideox"
    with pytest.raises(ValueError, match="is a wan model"):
        CogVideoXSpec(wan).load_models(TrainConfig(**{**wan.to_dict(), "family": "cogvideox"}), torch.float32)


@pytest.mark.parametrize(
    ("variant", "mode", "message"),
    [
        ("t2v", "inpaint", "needs a CogVideoX Fun InP model"),
        ("control", "normal", "needs a CogVideoX T2V or a CogVideoX Fun InP model"),
        ("inp", "control", "needs a CogVideoX Fun Control model"),
        ("i2v", "normal", "training CogVideoX I2V models is not supported yet"),
        ("inp", "control_ref", "not a CogVideoX training mode"),
    ],
)
def test_a_model_that_cannot_train_the_mode_says_what_to_change(cog_config, variant, mode, message):
    with pytest.raises(ValueError, match=message):
        get_spec(cog_config(variant)).load_models(cog_config(variant, train_mode=mode), torch.float32)


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
def test_inpaint_inputs_are_the_pipeline_inpaint_latents(cog_config):
    config = cog_config("inp", train_mode="inpaint")
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    batch = collate([dataset[0], dataset[0]])
    pixels = batch["pixel_values"]  # (2, 3, 9, 32, 32)
    masks = torch.ones(2, 1, 9, 32, 32)
    masks[1, :, 0] = 0  # sample 1: first frame known (i2v); sample 0: everything generated (t2v)
    generators = sample_generators(0, 0, 0, range(2))
    condition = spec.inpaint_condition(models, pixels, masks, None, generators, torch.device("cpu"))
    assert condition.shape == (2, 17, 3, 4, 4)  # (B, 1 + 16, F', h, w)

    pipe = CogVideoXPipeline(models.transformer, models.frozen["vae"], models.frozen["text_encoder"],
                             config=CogVideoXConfig(noise_aug_strength=0.0))  # fmt: skip
    settings = spec.settings_for(pipe, 3, 4, 4)
    for row in range(2):
        # (1, F', 17, h, w), the transformer's layout
        theirs = pipe.inpaint_latents(pixels[row : row + 1], masks[row : row + 1], settings, seed=0)
        gap = (condition[row : row + 1].permute(0, 2, 1, 3, 4) - theirs).abs().max().item()
        print(f"inpaint condition of sample {row} vs the pipeline's inpaint_latents: max diff {gap:.1e}")
        assert gap <= 1e-6
    assert condition[0].abs().max() == 0 and torch.all(condition[1, 0, 0] == models.frozen["vae"].scaling_factor)

    # With add_noise_in_inpaint_model (the tiny InP sets it), training noises the known pixels per sample.
    inputs = spec.build_inputs(models, {**batch, "mask": masks}, "inpaint", generators, "cpu")
    noised = inputs.conditions["condition"]
    assert noised[0].abs().max() == 0 and 0 < (noised[1, 1:] - condition[1, 1:]).abs().max() < 1.0
    assert inputs.conditions["image_rotary_emb"][0].shape[0] == 3 * 2 * 2  # rotary (cos, sin) per patch
    prediction = spec.predict(models.transformer, inputs.latents, torch.tensor([10, 900]), inputs)
    assert prediction.shape == inputs.latents.shape == (2, 16, 3, 4, 4)


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variant", "settings"),
    [
        ("t2v", dict(train_mode="normal")),
        ("inp", dict(train_mode="inpaint")),
        pytest.param("control", dict(train_mode="control"), marks=pytest.mark.slow),
        ("inp", dict(train_mode="normal", use_lora=True, rank=8, network_alpha=4.0, learning_rate=1e-2)),
    ],
    ids=["t2v", "inpaint", "control", "lora"],
)
def test_training_fits_a_repeated_clip(cog_config, variant, settings):
    config = cog_config(variant, max_train_steps=30, learning_rate=settings.pop("learning_rate", 2e-3), **settings)
    result = train(config)
    base = CogVideoXTransformer.from_pretrained(Path(config.pretrained_model_name_or_path) / "transformer")
    if config.use_lora:
        trained = CogVideoXTransformer.from_pretrained(Path(config.pretrained_model_name_or_path) / "transformer")
        merge_lora(trained, result.lora_path)
    else:
        trained = CogVideoXTransformer.from_pretrained(result.transformer_dir)
    before, after = fixed_loss(config, base), fixed_loss(config, trained)
    print(f"{variant} {config.train_mode}{' lora' if config.use_lora else ''}: fixed-draw loss {before:.4f} -> "
          f"{after:.4f}; step losses {result.losses[0]:.4f} ... {result.losses[-1]:.4f}")  # fmt: skip
    assert after < 0.7 * before, (before, after)


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(cog_config, tmp_path):
    settings = dict(train_mode="inpaint", gradient_accumulation_steps=2)
    whole = train(cog_config("inp", output_dir=str(tmp_path / "whole"), max_train_steps=4, **settings))
    first = train(cog_config("inp", output_dir=str(tmp_path / "split"), max_train_steps=2, **settings))
    rest = train(cog_config("inp", output_dir=str(tmp_path / "split"), max_train_steps=4,
                            resume_from_checkpoint="latest", **settings))  # fmt: skip
    assert first.losses + rest.losses == whole.losses
    name = "transformer/diffusion_pytorch_model.safetensors"
    weights = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "split" / name))
    difference = state_dict_max_diff(*weights)
    print(f"cogvideox inpaint: resumed vs uninterrupted losses equal, weights max abs diff {difference:.2e}")
    assert difference <= 1e-6
    record = (tmp_path / "split" / "train_config.yaml").read_text()
    assert "family: cogvideox" in record  # the spec the folder's family chose is the run's record


def test_full_fine_tune_folder_loads_in_ours_and_diffusers(cog_config):
    result = train(cog_config("t2v", max_train_steps=1))
    folder = result.transformer_dir
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "CogVideoXTransformer3DModel"
    ours, theirs = CogVideoXTransformer.from_pretrained(folder), DiffusersCogVideoX.from_pretrained(folder).eval()
    hidden, text = torch.randn(1, 3, 16, 4, 4), torch.randn(1, 226, 32)
    with torch.no_grad():
        a = ours(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)[0]
        b = theirs(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)[0]
    assert torch.equal(a, b)


def test_lora_file_loads_in_our_pipeline_and_in_diffusers(cog_config, tmp_path):
    config = cog_config("inp", use_lora=True, rank=4, network_alpha=2.0, learning_rate=1e-2, max_train_steps=3)
    path = train(config).lora_path
    tensors = load_file(str(path))
    assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in tensors
    assert "transformer.transformer_blocks.1.ff.net.2.lora_B.weight" in tensors
    assert not any(k.endswith(".alpha") for k in tensors)

    folder = Path(config.pretrained_model_name_or_path)
    pipe = CogVideoXPipeline.from_pretrained(folder)
    base = CogVideoXTransformer.from_pretrained(folder / "transformer")
    assert sorted(merge_lora(pipe.transformer, path))[0].startswith("transformer_blocks.0.")
    their_model = DiffusersCogVideoX.from_pretrained(folder / "transformer")
    theirs = DiffusersCogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=their_model
    )
    generator = torch.Generator().manual_seed(0)
    hidden, text = torch.randn(1, 3, 33, 4, 4, generator=generator), torch.randn(1, 226, 32, generator=generator)
    rotary = pipe.rotary_embeddings(CogVideoXSpec.settings_for(pipe, 3, 4, 4))
    kwargs = dict(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([700]),
                  image_rotary_emb=rotary, return_dict=False)  # fmt: skip
    with torch.no_grad():
        ours_delta = pipe.transformer(**kwargs)[0] - base(**kwargs)[0]
        their_base = theirs.transformer(**kwargs)[0]
        theirs.load_lora_weights(str(path))
        their_delta = theirs.transformer(**kwargs)[0] - their_base
    gap = (ours_delta - their_delta).abs().max().item()
    print(f"LoRA change: ours max {ours_delta.abs().max().item():.4f}, ours - diffusers max {gap:.2e}")
    assert ours_delta.abs().max() > 1e-3 and gap <= 1e-4


def test_latent_cache_training_and_validation_samples(cog_config, tmp_path):
    from videox_fun.training.cache import build_cache

    config = cog_config("inp", train_mode="inpaint", cache_dir=str(tmp_path / "cache"), max_train_steps=2)
    build_cache(config)
    record = load_file(str(next((tmp_path / "cache").glob("0*.safetensors"))))
    assert record["latents"].shape == (16, 3, 4, 4) and record["context"].shape == (226, 32)
    assert {"masked_latents_i2v", "masked_latents_first_last"} <= set(record)
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["family"] == "cogvideox"
    cached = cog_config(
        "inp",
        train_mode="inpaint",
        cache_dir=str(tmp_path / "cache"),
        use_cached_latents=True,
        max_train_steps=2,
        validation_steps=2,
        validation_prompts=["a red square moving right"],
        validation_sample_size=[32],
        validation_num_frames=9,
        validation_inference_steps=2,
    )
    result = train(cached)
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert (Path(cached.output_dir) / "samples" / "step-000002-00.mp4").is_file()


def test_a_cogvideox_student_distils_through_the_same_trainer(cog_config):
    """--distill on a v-prediction family: the rollout's DDIM steps, the critic's v loss, both updated on schedule."""
    config = cog_config("inp", train_mode="inpaint", distill=True, max_train_steps=4, generator_update_ratio=2)
    result = train(config)
    assert sorted(result.generator_losses) == [1, 3] and len(result.losses) == 4
    assert all(math.isfinite(x) for x in [*result.losses, *result.generator_losses.values()])
