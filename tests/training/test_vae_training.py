"""VAE training: the loss goes down, checkpoints load as a WanVAE, and a resumed run ends identical."""

from __future__ import annotations

import pytest
import torch
from helpers import state_dict_max_diff
from safetensors.torch import load_file

from videox_fun.models.wan.vae import WanVAE, tiny_vae_config
from videox_fun.training.data import write_test_dataset
from videox_fun.training.vae import (
    VAETrainConfig,
    decode_unclamped,
    foreground_crops,
    perturbed_latents,
    reconstruction_loss,
    train_vae,
    widen_decoder,
)


def config(tmp_path, meta, out: str, stop_after: int | None = None) -> VAETrainConfig:
    return VAETrainConfig(
        output_dir=str(tmp_path / out),
        train_data_meta=str(meta),
        vae_config=tiny_vae_config(base_dim=8),
        video_sample_size=32,
        video_sample_n_frames=5,
        batch_size=2,
        max_train_steps=3,
        checkpointing_steps=2,
        foreground_weight=10.0,
        crop_size=16,
        stop_after_steps=stop_after,
    )


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_resumed_run_equals_uninterrupted_and_loads_as_wan_vae(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(5,))
    straight = train_vae(config(tmp_path, meta, "straight"))
    train_vae(config(tmp_path, meta, "resumed", stop_after=2))  # as if killed after step 2
    resumed = train_vae(config(tmp_path, meta, "resumed"))
    assert state_dict_max_diff(weights(straight), weights(resumed)) <= 1e-6
    vae = WanVAE.from_pretrained(straight)
    assert vae.encode(torch.zeros(1, 3, 5, 32, 32)).shape == (1, 16, 2, 4, 4)


def test_decoder_phase_with_latent_noise_resumes_exactly(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(5,))
    first = train_vae(config(tmp_path, meta, "first"))

    def noisy(out: str, stop_after: int | None = None) -> VAETrainConfig:
        phase = config(tmp_path, meta, out, stop_after)
        phase.init_from, phase.decoder_only, phase.latent_noise = str(first), True, 0.5
        return phase

    straight = train_vae(noisy("straight"))
    train_vae(noisy("resumed", stop_after=2))  # as if killed after step 2
    resumed = train_vae(noisy("resumed"))
    assert state_dict_max_diff(weights(straight), weights(resumed)) <= 1e-6
    plain = config(tmp_path, meta, "plain")
    plain.init_from, plain.decoder_only = str(first), True
    # The noise changes what the decoder learns (the same data order and seed otherwise).
    assert state_dict_max_diff(weights(straight), weights(train_vae(plain))) > 1e-6


def test_perturbed_latents_add_noise_up_to_the_given_share_of_each_clips_std():
    torch.manual_seed(0)
    z = torch.randn(64, 16, 2, 4, 4) * torch.linspace(0.5, 2.0, 64).view(64, 1, 1, 1, 1)  # (B, C, F, h, w)
    assert perturbed_latents(z, 0.0) is z
    noise = perturbed_latents(z, 0.4) - z
    share = noise.std(dim=(1, 2, 3, 4)) / z.std(dim=(1, 2, 3, 4))  # (B,): each clip's scale ~ U(0, 0.4)
    assert float(share.min()) < 0.05 and float(share.max()) <= 0.4 * 1.2  # scales spread over [0, 0.4]
    assert 0.12 <= float(share.mean()) <= 0.28  # mean of U(0, 0.4) is 0.2


def test_foreground_crops_follow_the_content():
    video = -torch.ones(1, 3, 5, 64, 64)
    video[:, :, :, 40:48, 50:58] = 1.0  # a bright square near the bottom-right corner
    crop = foreground_crops(video, 32, torch.Generator().manual_seed(0))
    assert crop.shape == (1, 3, 5, 32, 32) and (crop > 0).any()


def test_unclamped_decode_is_diffusers_decode_before_its_clamp():
    torch.manual_seed(0)
    from diffusers import AutoencoderKLWan

    from videox_fun.training.vae import decode_unclamped

    vae = AutoencoderKLWan(**tiny_vae_config(base_dim=8)).eval()
    z = torch.randn(1, 16, 2, 4, 4) * 3
    with torch.no_grad():
        raw = decode_unclamped(vae, z)
        assert torch.allclose(raw.clamp(-1, 1), vae.decode(z).sample, atol=1e-6)
        assert raw.abs().max() > 1  # the overshoot the clamp would hide from the gradient


def test_fitted_latent_statistics_normalise_the_dataset_latents(tmp_path):
    from videox_fun.training.vae import _data, fit_latent_statistics

    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(5,))
    torch.manual_seed(0)
    folder = tmp_path / "vae"
    WanVAE.from_config(tiny_vae_config(base_dim=8)).save_pretrained(folder)
    stats = fit_latent_statistics(folder, str(meta), n_frames=5)
    assert stats["clips"] == 4 and len(stats["latents_std"]) == 16
    vae = WanVAE.from_pretrained(folder)
    dataset, _ = _data(VAETrainConfig(output_dir=str(folder), train_data_meta=str(meta), video_sample_n_frames=5))
    with torch.no_grad():
        latents = torch.cat([vae.encode(dataset[i]["pixel_values"][None]) for i in range(4)])  # (4, 16, 2, 4, 4)
    per_channel = latents.transpose(0, 1).flatten(1)  # (16, N)
    assert per_channel.mean(1).abs().max() < 1e-3
    assert (per_channel.std(1, unbiased=False) - 1).abs().max() < 1e-3


def test_decoder_only_training_leaves_the_encoder_and_so_the_latents_unchanged(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(5,))
    first = train_vae(config(tmp_path, meta, "first"))
    decoder = config(tmp_path, meta, "decoder")
    decoder.init_from, decoder.decoder_only, decoder.crop_size = str(first), True, None
    second = train_vae(decoder)
    before, after = weights(first), weights(second)
    encoder_side = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_side = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_side and all(torch.equal(before[k], after[k]) for k in encoder_side)
    assert any(not torch.equal(before[k], after[k]) for k in decoder_side)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    latents = [WanVAE.from_pretrained(folder).encode(video) for folder in (first, second)]
    assert torch.equal(*latents)


def test_widened_decoder_decodes_the_same_video_and_its_copies_learn_apart():
    torch.manual_seed(0)
    vae = WanVAE.from_config(tiny_vae_config(base_dim=8)).model.eval()
    wide = widen_decoder(vae, 2, torch.Generator().manual_seed(0)).eval()
    assert wide.config.decoder_base_dim == 16
    conv = "decoder.up_blocks.3.resnets.0.conv1.weight"
    narrow_out, narrow_in = vae.state_dict()[conv].shape[:2]
    assert wide.state_dict()[conv].shape[:2] == (2 * narrow_out, 2 * narrow_in)
    z = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        narrow_video, wide_video = vae.decode(z).sample, wide.decode(z).sample
    assert narrow_video.std() > 0.01
    torch.testing.assert_close(wide_video, narrow_video, atol=1e-5, rtol=0)
    # A channel and its copy start equal; the random split of the weights reading them makes
    # their gradients differ, so training can tell them apart.
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    reconstruction_loss(wide.train(), video, 0.0, frozen_encoder=True).backward()
    grad = dict(wide.named_parameters())[conv].grad  # (16, 16, 3, 3, 3)
    assert not torch.allclose(grad[:8], grad[8:])


def test_training_can_start_from_a_widened_decoder(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(5,))
    first = train_vae(config(tmp_path, meta, "first"))
    wider = config(tmp_path, meta, "wide")
    wider.init_from, wider.decoder_only, wider.widen_decoder, wider.crop_size = str(first), True, 2, None
    second = train_vae(wider)
    loaded = WanVAE.from_pretrained(second)
    assert loaded.config.decoder_base_dim == 16
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(WanVAE.from_pretrained(first).encode(video), loaded.encode(video))
    assert loaded.decode(loaded.encode(video)).shape == video.shape


def test_loss_without_l1_and_foreground_weight_is_the_plain_mse_of_the_reconstruction():
    torch.manual_seed(0)
    vae = WanVAE.from_config(tiny_vae_config(base_dim=8)).model.eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(1)
        loss = reconstruction_loss(vae, video, 0.0, foreground_weight=0.0, frozen_encoder=True, l1_weight=0.0)
        torch.manual_seed(1)  # the same posterior sample
        recon = decode_unclamped(vae, vae.encode(video).latent_dist.sample())
    assert loss.item() == pytest.approx((recon - video).pow(2).mean().item(), rel=1e-5)


# --- AutoencoderKLCogVideoX (vae_class "cogvideox"): 9-frame clips (3 latent frames), as its
# decode gives 4k + 1 frames back from 1 or from 3 and more latent frames, but 8 from 2.


def cog_config(tmp_path, meta, out: str, stop_after: int | None = None) -> VAETrainConfig:
    from videox_fun.models.cogvideox.vae import tiny_vae_config as cog_tiny_vae_config

    return VAETrainConfig(
        output_dir=str(tmp_path / out),
        train_data_meta=str(meta),
        vae_class="cogvideox",
        vae_config=cog_tiny_vae_config(scaling_factor=1.0),
        video_sample_size=32,
        video_sample_n_frames=9,
        batch_size=2,
        max_train_steps=3,
        checkpointing_steps=2,
        foreground_weight=10.0,
        crop_size=16,
        stop_after_steps=stop_after,
    )


def test_cogvideox_resumed_run_equals_uninterrupted_and_loads_as_cogvideox_vae(tmp_path):
    from videox_fun.models.cogvideox.vae import CogVideoXVAE

    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(9,))
    straight = train_vae(cog_config(tmp_path, meta, "straight"))
    train_vae(cog_config(tmp_path, meta, "resumed", stop_after=2))  # as if killed after step 2
    resumed = train_vae(cog_config(tmp_path, meta, "resumed"))
    assert state_dict_max_diff(weights(straight), weights(resumed)) <= 1e-6
    vae = CogVideoXVAE.from_pretrained(straight)
    assert vae.encode(torch.zeros(1, 3, 9, 32, 32)).shape == (1, 3, 16, 4, 4)


def test_fresh_cogvideox_vae_has_a_nearly_deterministic_posterior():
    from videox_fun.models.cogvideox.vae import tiny_vae_config as cog_tiny_vae_config
    from videox_fun.training.vae import _fresh_vae

    torch.manual_seed(0)
    cfg = VAETrainConfig(output_dir="unused", train_data_meta="unused", vae_class="cogvideox")
    cfg.vae_config = cog_tiny_vae_config()
    vae = _fresh_vae(cfg)
    assert vae.quant_conv is None  # the moments come from the encoder's conv_out
    with torch.no_grad():
        posterior = vae.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1).latent_dist
    assert torch.allclose(posterior.logvar, torch.full_like(posterior.logvar, cfg.initial_logvar))
    assert posterior.mean.std() > 0


def test_cogvideox_decoder_only_training_leaves_the_encoder_unchanged(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(9,))
    first = train_vae(cog_config(tmp_path, meta, "first"))
    decoder = cog_config(tmp_path, meta, "decoder")
    decoder.init_from, decoder.decoder_only, decoder.crop_size = str(first), True, None
    second = train_vae(decoder)
    before, after = weights(first), weights(second)
    encoder_side = [k for k in before if k.startswith("encoder.")]
    decoder_side = [k for k in before if k.startswith("decoder.")]
    assert encoder_side and all(torch.equal(before[k], after[k]) for k in encoder_side)
    assert any(not torch.equal(before[k], after[k]) for k in decoder_side)


def test_cogvideox_latent_statistics_are_one_scaling_factor(tmp_path):
    from videox_fun.models.cogvideox.vae import CogVideoXVAE
    from videox_fun.models.cogvideox.vae import tiny_vae_config as cog_tiny_vae_config
    from videox_fun.training.vae import _data, fit_latent_statistics

    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(9,))
    torch.manual_seed(0)
    folder = tmp_path / "vae"
    CogVideoXVAE.from_config(cog_tiny_vae_config(scaling_factor=1.0)).model.save_pretrained(folder)
    stats = fit_latent_statistics(folder, str(meta), n_frames=9)
    assert set(stats) == {"scaling_factor", "clips"} and stats["clips"] == 4
    vae = CogVideoXVAE.from_pretrained(folder)
    assert vae.scaling_factor == stats["scaling_factor"] != 1.0
    dataset, _ = _data(VAETrainConfig(output_dir=str(folder), train_data_meta=str(meta), video_sample_n_frames=9))
    with torch.no_grad():
        latents = torch.cat([vae.encode(dataset[i]["pixel_values"][None]) for i in range(4)])  # scaled
    assert latents.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_cogvideox_refuses_a_widened_decoder(tmp_path):
    meta = write_test_dataset(tmp_path / "data", n_videos=4, sizes=((32, 32),), lengths=(9,))
    wider = cog_config(tmp_path, meta, "wide")
    wider.widen_decoder = 2
    with pytest.raises(ValueError, match="widen_decoder is not supported for AutoencoderKLCogVideoX"):
        train_vae(wider)
    assert not (tmp_path / "wide").exists()  # refused before any work


def test_unknown_vae_class_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown vae_class 'sdxl'"):
        train_vae(VAETrainConfig(output_dir=str(tmp_path / "x"), train_data_meta="m.json", vae_class="sdxl"))
