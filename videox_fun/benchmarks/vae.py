"""Wan VAE encode and decode: ours (:class:`WanVAE`, with the CPU fast paths) vs diffusers' own calls.

Same ``AutoencoderKLWan`` weights and inputs, interleaved in one process: the packaged tiny VAE
at the toy world's size and larger, and the released Wan2.1 VAE config (random weights) at a
small size. On a CPU the difference is :mod:`videox_fun.models.cpu_kernels`; elsewhere the two
calls are the same code.
"""

from __future__ import annotations

import torch

from ..models.wan.vae import WanVAE
from ..registry import resolve_model
from .common import summarize, time_interleaved

TINY_SIZES = ((17, 64, 64), (33, 128, 128))  # (frames, height, width)
WAN21_SIZES = ((9, 64, 64),)


def compare(vae: WanVAE, frames: int, height: int, width: int, repeats: int) -> dict:
    """Decode and encode timings, ours / diffusers ratios and the largest output difference."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, vae.z_dim, *vae.latent_shape(frames, height, width), generator=generator)
    raw = vae.denormalize(latents)  # what diffusers' decode takes
    video = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
    calls = {
        "decode_ours": lambda: vae.decode(latents),
        "decode_diffusers": lambda: vae.model.decode(raw).sample.clamp(-1, 1),
        "encode_ours": lambda: vae.encode(video),
        "encode_diffusers": lambda: vae.normalize(vae.model.encode(video).latent_dist.mode()),
    }
    times = time_interleaved(calls, repeats)
    entry: dict = {"size": [frames, height, width], **{name: summarize(t) for name, t in times.items()}}
    with torch.no_grad():
        for op in ("decode", "encode"):
            for kind in ("wall_s", "cpu_s"):
                median = f"{kind}_median"
                entry[f"{op}_ratio_{median}"] = entry[f"{op}_ours"][median] / entry[f"{op}_diffusers"][median]
            entry[f"{op}_max_abs_diff"] = (calls[f"{op}_ours"]() - calls[f"{op}_diffusers"]()).abs().max().item()
    return entry


def run(repeats: int = 5) -> dict:
    """The tiny packaged VAE and the Wan2.1 config, JSON-ready."""
    results = {}
    tiny = WanVAE.from_pretrained(resolve_model(None) / "vae")
    torch.manual_seed(0)
    wan21 = WanVAE.from_config(None).eval()
    for name, vae, sizes in (("tiny", tiny, TINY_SIZES), ("Wan2.1", wan21, WAN21_SIZES)):
        for size in sizes:
            entry = compare(vae, *size, repeats)
            results[f"{name}_{'x'.join(map(str, size))}"] = entry
            print(
                f"{name} {size}: ours/diffusers decode {entry['decode_ratio_wall_s_median']:.3f}, "
                f"encode {entry['encode_ratio_wall_s_median']:.3f} (wall median); "
                f"max abs diff {entry['decode_max_abs_diff']:.1e} / {entry['encode_max_abs_diff']:.1e}"
            )
    return {"benchmark": "Wan VAE decode / encode, ours vs diffusers, same weights and inputs", "results": results}
