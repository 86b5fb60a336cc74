"""The flow-matching objective, per-sample randomness and the Wan family spec."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import seeded_transformer

from videox_fun.models.wan.transformer import WanTransformer3DModel
from videox_fun.models.wan.variants import tiny_config, variant_of
from videox_fun.training.data import DataConfig, VideoDataset, collate
from videox_fun.training.specs import FamilyModels, FlowMatching, get_spec, sample_generators, shift_sigmas
from videox_fun.training.specs.wan import PixelSource, init_from_t2v


def test_flow_matching_interpolates_and_targets_the_velocity():
    objective = FlowMatching(weighting="none")
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sigmas = torch.tensor([0.25, 0.75])
    noisy = objective.noisy(x0, noise, sigmas)
    torch.testing.assert_close(noisy[0], 0.75 * x0[0] + 0.25 * noise[0])
    assert objective.loss(noise - x0, x0, noise, sigmas).item() == 0.0  # the exact velocity has zero loss
    assert objective.loss(torch.zeros_like(x0), x0, noise, sigmas).item() == pytest.approx(
        (noise - x0).pow(2).mean().item(), rel=1e-6
    )


def test_shift_is_the_inference_schedulers_shift():
    # The training sigma grid of diffusers' flow-match scheduler, without and with shift 3.
    sigmas = {s: FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=s).sigmas for s in (1.0, 3.0)}
    torch.testing.assert_close(shift_sigmas(sigmas[1.0], 3.0), sigmas[3.0], rtol=1e-5, atol=1e-6)


def test_sigma_densities_and_weights():
    generators = sample_generators(0, 0, 0, range(2000))
    logit = FlowMatching(sampling="logit_normal", shift=1.0).sample_sigmas(generators)
    uniform = FlowMatching(sampling="uniform", shift=1.0).sample_sigmas(generators)
    shifted = FlowMatching(sampling="uniform", shift=3.0).sample_sigmas(generators)
    assert abs(logit.median().item() - 0.5) < 0.05 and logit.std() < uniform.std()  # mass near the middle
    assert abs(uniform.mean().item() - 0.5) < 0.03
    assert shifted.mean() > uniform.mean() + 0.1  # shift > 1 moves sigmas toward noise
    cosmap = FlowMatching(weighting="cosmap")
    x0, noise = torch.zeros(1, 2), torch.ones(1, 2)
    loss = cosmap.loss(torch.zeros(1, 2), x0, noise, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(2 / (math.pi * 0.5))


def test_sample_generators_depend_on_the_global_position_only():
    a = sample_generators(7, 3, 1, [0, 1, 2, 3])
    b = sample_generators(7, 3, 1, [2, 3])  # the second process of two, batch 2 each
    assert torch.equal(torch.rand(3, generator=a[2]), torch.rand(3, generator=b[0]))
    c = sample_generators(7, 4, 1, [0])
    assert not torch.equal(torch.rand(3, generator=sample_generators(7, 3, 1, [0])[0]), torch.rand(3, generator=c[0]))


def test_init_from_t2v_zero_pads_only_the_new_input_channels():
    t2v = seeded_transformer(tiny_config("t2v", text_dim=32))
    for mode, in_dim in (("inpaint", 36), ("control", 48), ("control_ref", 48)):
        expanded = init_from_t2v(t2v, mode).eval()
        assert expanded.config.in_dim == in_dim and hasattr(expanded, "ref_conv") == (mode == "control_ref")
        x, context = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, 32)
        y = torch.randn(1, in_dim - 16, 2, 4, 4)  # whatever the new channels hold, the output is the T2V model's
        with torch.no_grad():
            torch.testing.assert_close(
                expanded(x, torch.tensor([300.0]), context, y=y), t2v(x, torch.tensor([300.0]), context)
            )
    with pytest.raises(ValueError, match="already InP"):
        init_from_t2v(init_from_t2v(t2v, "inpaint"), "inpaint")


@pytest.mark.parametrize(
    ("variant", "mode", "message"),
    [
        ("control", "normal", "needs a T2V or Fun InP model"),
        ("t2v", "inpaint", "--init_from_t2v"),
        ("control", "control_ref", "Fun V1.1 Control model"),
        ("inp", "control", "needs a Fun Control model"),
    ],
)
def test_a_model_that_cannot_serve_the_mode_fails_saying_what_to_change(make_config, variant, mode, message):
    with pytest.raises(ValueError, match=message):
        get_spec(make_config(variant)).load_models(make_config(variant, train_mode=mode), torch.float32)


def test_inpaint_inputs_use_the_pipeline_conditioning(make_config):
    config = make_config("inp", train_mode="inpaint")
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    batch = collate([dataset[0], dataset[1]])
    h, w = batch["pixel_values"].shape[-2:]
    batch["mask"][0] = 1.0  # everything generated (t2v)
    batch["mask"][1] = 1.0
    batch["mask"][1, :, 0] = 0.0  # first frame known (i2v)
    inputs = spec.build_inputs(models, batch, "inpaint", sample_generators(0, 0, 0, range(2)), "cpu")
    y = inputs.conditions["y"]  # (B, 4 + 16, F', h, w): known-mask channels, then the masked-video latent
    assert y.shape == (2, 20, inputs.latents.shape[2], h // 8, w // 8)
    assert variant_of(models.transformer.config).channels == (("mask", 4), ("masked_video", 16))
    assert y[0, :4].abs().max() == 0 and torch.all(y[1, :4, 0] == 1) and y[1, :4, 1:].abs().max() == 0
    # The VAE is causal: latent frame 0 of the masked video is the first frame's own latent.
    torch.testing.assert_close(y[1, 4:, 0], inputs.latents[1, :, 0], rtol=0, atol=1e-5)
    image_latent = PixelSource(spec, models, batch, torch.device("cpu")).frame_latents([0, 0])
    torch.testing.assert_close(image_latent, inputs.latents[:, :, 0], rtol=0, atol=1e-5)


def test_control_ref_inputs(make_config):
    config = make_config("control_ref", train_mode="control_ref", train_batch_size=3)
    spec = get_spec(config)
    models = spec.load_models(config, torch.float32)
    assert isinstance(models, FamilyModels) and set(models.frozen) == {"vae", "text_encoder"}
    dataset = VideoDataset(DataConfig.from_mapping(config.to_dict()), progress=False)
    batch = collate([dataset[i] for i in range(3)])
    inputs = spec.build_inputs(models, batch, "control_ref", sample_generators(1, 0, 0, range(3)), "cpu")
    assert inputs.conditions["y"].shape[1] == 32 and inputs.conditions["ref_latent"].shape == (3, 16, 4, 4)
    prediction = spec.predict(models.transformer, inputs.latents, torch.full((3,), 500.0), inputs)
    assert prediction.shape == inputs.latents.shape


def test_training_starts_from_a_transformer_path_fp8_files_widened(make_config, model_folders, tmp_path):
    from safetensors.torch import save_file

    from videox_fun.runtime.fp8 import quantize_to_fp8

    start = WanTransformer3DModel.from_pretrained(model_folders("inp"))
    with torch.no_grad():
        for param in start.parameters():
            param.add_(0.5)  # weights that differ from the folder's
    quantize_to_fp8(start, scaled=True, per_channel=True)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in start.state_dict().items()},
              str(tmp_path / "start_fp8_scaled.safetensors"))  # fmt: skip
    config = make_config("inp", transformer_path=str(tmp_path / "start_fp8_scaled.safetensors"))
    transformer = get_spec(config).load_models(config, torch.float32).transformer
    q = transformer.blocks[0].self_attn.q.weight
    assert q.dtype == torch.float32 and torch.equal(q, start.blocks[0].self_attn.q.dequantized_weight(torch.float32))
    assert torch.equal(transformer.patch_embedding.weight, start.patch_embedding.weight)
