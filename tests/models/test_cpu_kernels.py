"""The CPU fast paths compute what PyTorch computes, take the fast kernel, and step aside when they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from torch.profiler import ProfilerActivity, profile

from videox_fun.models.cpu_kernels import CPUFastPaths, onednn_conv3d, sum_of_squares_normalize
from videox_fun.models.wan.vae import WanVAE, tiny_vae_config


def kernels_called(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((1, 8, 4, 16, 16), (8, 8, 3, 3, 3), 1, 0),  # a causal conv on one cached chunk
        ((1, 8, 3, 16, 16), (8, 8, 3, 1, 1), (2, 1, 1), 0),  # the temporal downsampler
        ((1, 3, 5, 9, 11), (4, 3, 3, 3, 3), 1, (1, 1, 1)),
    ],
)
def test_onednn_conv3d_equals_torch_conv3d(shape, kernel, stride, padding):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(shape), torch.randn(kernel), torch.randn(kernel[0])
    expected = F.conv3d(x, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(onednn_conv3d(x, weight, bias, stride, padding), expected, atol=1e-4, rtol=1e-5)


def test_conv3d_route_steps_aside_for_autograd_other_dtypes_and_string_padding():
    x, weight = torch.randn(1, 2, 3, 4, 4), torch.randn(2, 2, 1, 1, 1)
    assert onednn_conv3d(x.requires_grad_(), weight) is None
    assert onednn_conv3d(x.detach().double(), weight.double()) is None
    assert onednn_conv3d(x.detach(), weight, padding="same") is None


def test_inside_the_mode_a_batch_one_conv3d_runs_on_onednn_not_the_slow_path():
    x, weight = torch.randn(1, 8, 4, 16, 16), torch.randn(8, 8, 3, 3, 3)
    assert "aten::slow_conv3d_forward" in kernels_called(lambda: F.conv3d(x, weight))  # PyTorch's own pick

    def routed():
        with CPUFastPaths():
            F.conv3d(x, weight)

    called = kernels_called(routed)
    assert "aten::mkldnn_convolution" in called and "aten::slow_conv3d_forward" not in called


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_sum_of_squares_normalize_equals_f_normalize_with_its_gradient(dim):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 5, 5)
    x[0, :, 0] = 0.0  # all-zero vectors: the eps floor, as in F.normalize
    ours_input, theirs_input = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = sum_of_squares_normalize(ours_input, dim=dim), F.normalize(theirs_input, dim=dim)
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn_like(x)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    # rounding differs where a short vector's gradient, (I - n n^T) w / |x|, cancels to ~0
    torch.testing.assert_close(ours_input.grad, theirs_input.grad, atol=1e-4, rtol=1e-4)
    assert sum_of_squares_normalize(x, p=1.0) is None  # only the L2 norm takes the route


def test_wan_vae_with_the_fast_paths_matches_diffusers_decode_and_encode():
    torch.manual_seed(0)
    model = AutoencoderKLWan(**tiny_vae_config(base_dim=8)).eval()
    vae = WanVAE(model)
    latents = torch.randn(1, 16, 3, 4, 4)
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        expected_video = model.decode(vae.denormalize(latents)).sample.clamp(-1, 1)
        expected_latents = vae.normalize(model.encode(video).latent_dist.mode())
        torch.testing.assert_close(vae.decode(latents), expected_video, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.encode(video), expected_latents, atol=1e-5, rtol=0)
