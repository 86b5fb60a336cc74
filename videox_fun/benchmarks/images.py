"""Our image-family transformers vs diffusers' own classes: same random weights, same inputs, one process.

FLUX.1 (``FluxTransformer`` vs ``FluxTransformer2DModel``), FLUX.2 (``Flux2Transformer`` vs
``Flux2Transformer2DModel``), Qwen-Image (``QwenImageTransformer`` vs ``QwenImageTransformer2DModel``) and Z-Image
(``ZImageTransformer`` vs ``ZImageTransformer2DModel``). Ours subclass diffusers' classes and route their attention
through the package's dispatch, so the ratio measures what that routing costs or gains, and the outputs agree to
rounding (fp32) or to bf16's reordering of sums.

CPU: each family's tiny config (the packaged tiny models') at 128x128, fp32 and bf16. GPU (when present): the
released widths with a few blocks only (2 double + 4 single for FLUX.1 and FLUX.2, 4 layers for Qwen-Image and
Z-Image, whose 2 + 2 refiner layers are kept) at 1024x1024 bf16, one forward = one denoising pass; the full
FLUX.2 (32B) in bf16 twice would not fit one GPU. The JSON says which blocks were kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    QwenImageTransformer2DModel,
    ZImageTransformer2DModel,
)

from ..models.flux import tiny as flux_tiny
from ..models.flux import transformer as flux
from ..models.flux2 import tiny as flux2_tiny
from ..models.flux2 import transformer as flux2
from ..models.loading import public_config
from ..models.qwenimage import tiny as qwenimage_tiny
from ..models.qwenimage import transformer as qwenimage
from ..models.zimage import tiny as zimage_tiny
from ..models.zimage import transformer as zimage
from ..pipelines.flux import image_ids as flux_image_ids
from ..pipelines.flux2 import image_ids as flux2_image_ids
from ..pipelines.flux2 import text_ids as flux2_text_ids
from .common import built_in
from .pairs import Pair, dtype_name, run_cases

CPU_IMAGE = (128, 128)  # (height, width) in pixels: 64 image tokens in every family
CPU_TEXT_TOKENS = 32
GPU_IMAGE = (1024, 1024)  # 4,096 image tokens in every family
VAE_SCALE = 8  # pixels per latent pixel (every family's VAE)
TOKEN_SCALE = 16  # pixels per image token: the VAE's 8 times the 2x2 packing (FLUX.2: its VAE's patchify)

# The released architectures (model-facts section 5; each family's parameter count on the meta device at full depth
# is checked by tests/benchmarks): FLUX.1-dev, FLUX.2-dev, Qwen-Image (every Edit release shares it), Z-Image.
FLUX_RELEASED = {**flux.RELEASED_ARCHITECTURE, "out_channels": None, "pooled_projection_dim": 768,
                 "guidance_embeds": True, "axes_dims_rope": list(flux.RELEASED_AXES[128])}  # fmt: skip
FLUX2_RELEASED = {"patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 8, "num_single_layers": 48,
                  "attention_head_dim": 128, "num_attention_heads": 48, "joint_attention_dim": 15360,
                  "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "guidance_embeds": True,
                  "axes_dims_rope": list(flux2.RELEASED_AXES[128]), "rope_theta": flux2.RELEASED_ROPE_THETA,
                  "eps": flux2.RELEASED_EPS}  # fmt: skip
QWENIMAGE_RELEASED = {**qwenimage.RELEASED_ARCHITECTURE, "out_channels": 16, "guidance_embeds": False,
                      "axes_dims_rope": [16, 56, 56]}  # fmt: skip
ZIMAGE_RELEASED = {"all_patch_size": [zimage.PATCH], "all_f_patch_size": [zimage.F_PATCH], "in_channels": 16,
                   "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30,
                   "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0,
                   "axes_dims": zimage.RELEASED_AXES[128][0], "axes_lens": zimage.RELEASED_AXES[128][1]}  # fmt: skip

InputsFn = Callable[[Mapping[str, Any], int, int, int, torch.Generator], dict[str, Any]]


@dataclass(frozen=True)
class ImageFamily:
    """How to build and call one family's transformer pair.

    ``gpu_blocks`` are the block counts kept at released widths on a GPU (``released`` has the full ones);
    ``gpu_text_tokens`` the prompt length there (FLUX.1 / FLUX.2 pad prompts to 512, Qwen-Image and Z-Image take
    the prompt's own length: 128 tokens stand for one); ``inputs`` makes the forward's keyword arguments on the CPU
    in fp32 from a config, the image size in pixels, a text length and a seeded generator.
    """

    label: str
    ours: type
    theirs: type
    tiny_config: Callable[[], dict[str, Any]]
    released: dict[str, Any]
    gpu_blocks: dict[str, int]
    gpu_text_tokens: int
    inputs: InputsFn

    def gpu_config(self) -> dict[str, Any]:
        """The released widths with :attr:`gpu_blocks` blocks."""
        return {**self.released, **self.gpu_blocks}


def flux_inputs(config: Mapping[str, Any], height: int, width: int, text: int, gen: torch.Generator) -> dict:
    """FLUX.1: packed latent tokens (1, h/2 * w/2, 64), T5 text (1, L, 4096), pooled CLIP (1, 768), their position
    ids as the pipeline makes them, timestep in [0, 1] and (dev) the embedded guidance scale."""
    tokens = (height // TOKEN_SCALE) * (width // TOKEN_SCALE)
    inputs = {
        "hidden_states": torch.randn(1, tokens, config["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(1, text, config["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": flux_image_ids(height // VAE_SCALE, width // VAE_SCALE, torch.device("cpu")),
        "txt_ids": torch.zeros(text, 3),
    }
    if config["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


def flux2_inputs(config: Mapping[str, Any], height: int, width: int, text: int, gen: torch.Generator) -> dict:
    """FLUX.2: latent tokens (1, h * w, 128) of the patchified latents, the stacked Mistral layers (1, L, 15360),
    (t, h, w, l) position ids, timestep in [0, 1] and the embedded guidance scale."""
    rows, columns = height // TOKEN_SCALE, width // TOKEN_SCALE
    cpu = torch.device("cpu")
    inputs = {
        "hidden_states": torch.randn(1, rows * columns, config["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(1, text, config["joint_attention_dim"], generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": flux2_image_ids(rows, columns, cpu),
        "txt_ids": flux2_text_ids(text, cpu),
    }
    if config["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([4.0])
    return inputs


def qwenimage_inputs(config: Mapping[str, Any], height: int, width: int, text: int, gen: torch.Generator) -> dict:
    """Qwen-Image: packed latent tokens (1, h/2 * w/2, 64), the VL model's last layer (1, L, 3584) with no
    padding (mask None, as the pipeline passes one prompt), timestep in [0, 1] and the image's token grid."""
    rows, columns = height // TOKEN_SCALE, width // TOKEN_SCALE
    return {
        "hidden_states": torch.randn(1, rows * columns, config["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(1, text, config["joint_attention_dim"], generator=gen),
        "encoder_hidden_states_mask": None,
        "timestep": torch.tensor([0.5]),
        "img_shapes": [[(1, rows, columns)]],
    }


def zimage_inputs(config: Mapping[str, Any], height: int, width: int, text: int, gen: torch.Generator) -> dict:
    """Z-Image: a list of one latent (16, 1, h, w) (the model patchifies it), timestep in [0, 1] (1 = clean) and a
    list of one caption (L, 2560)."""
    latent = torch.randn(config["in_channels"], 1, height // VAE_SCALE, width // VAE_SCALE, generator=gen)
    return {
        "x": [latent],
        "t": torch.tensor([0.5]),
        "cap_feats": [torch.randn(text, config["cap_feat_dim"], generator=gen)],
    }


FAMILIES: dict[str, ImageFamily] = {
    "flux": ImageFamily("FLUX.1-dev", flux.FluxTransformer, FluxTransformer2DModel, flux_tiny.tiny_transformer_config,
                        FLUX_RELEASED, {"num_layers": 2, "num_single_layers": 4}, 512, flux_inputs),
    "flux2": ImageFamily("FLUX.2-dev", flux2.Flux2Transformer, Flux2Transformer2DModel,
                         flux2_tiny.tiny_transformer_config, FLUX2_RELEASED, {"num_layers": 2, "num_single_layers": 4},
                         512, flux2_inputs),
    "qwenimage": ImageFamily("Qwen-Image", qwenimage.QwenImageTransformer, QwenImageTransformer2DModel,
                             qwenimage_tiny.tiny_transformer_config, QWENIMAGE_RELEASED, {"num_layers": 4}, 128,
                             qwenimage_inputs),
    "zimage": ImageFamily("Z-Image", zimage.ZImageTransformer, ZImageTransformer2DModel,
                          zimage_tiny.tiny_transformer_config, ZIMAGE_RELEASED, {"n_layers": 4}, 128, zimage_inputs),
}  # fmt: skip


def to_device(value: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    """Tensors (in dicts and lists too) onto ``device``; floating ones in ``dtype``, position ids keep their integer
    type."""
    if isinstance(value, dict):
        return {key: to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, list):
        return [to_device(item, device, dtype) for item in value]
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype if value.is_floating_point() else value.dtype)
    return value


def output_tensor(output: Any) -> torch.Tensor:
    """The prediction as one tensor: the first element of the return tuple, stacked when it is a list (Z-Image's
    one (C, 1, h, w) per image)."""
    first = output[0]
    return torch.stack(first) if isinstance(first, list) else first


def build_case(
    family: ImageFamily,
    config: Mapping[str, Any],
    dtype: torch.dtype,
    device: str,
    image: tuple[int, int],
    text_tokens: int,
) -> Pair:
    """Our model of ``config`` (seeded random weights) and diffusers' class holding them, in ``dtype`` on
    ``device``, with one forward of each on the same inputs at ``image`` (height, width) pixels."""
    torch.manual_seed(0)
    with built_in(dtype, device):
        ours = family.ours.from_model_config(config).eval()
        theirs = family.theirs.from_config(ours.config).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: the same keys and shapes
    generator = torch.Generator().manual_seed(1)
    inputs = to_device(family.inputs(ours.config, *image, text_tokens, generator), device, dtype)
    inputs["return_dict"] = False
    facts = {
        "family": family.label,
        "config": public_config(dict(ours.config)),
        "device": str(device),
        "dtype": dtype_name(dtype),
        "image": list(image),
        "image_tokens": (image[0] // TOKEN_SCALE) * (image[1] // TOKEN_SCALE),
        "text_tokens": text_tokens,
    }
    return Pair(ours, theirs, lambda: output_tensor(ours(**inputs)), lambda: output_tensor(theirs(**inputs)), facts)


def cases(cpu_dtypes: tuple[torch.dtype, ...], gpu: bool) -> dict[str, Callable[[], Pair]]:
    """Every case by name: each family's tiny config on the CPU in each of ``cpu_dtypes``, then (``gpu``) the
    released widths with few blocks in bf16 on the GPU."""
    built: dict[str, Callable[[], Pair]] = {}
    for dtype in cpu_dtypes:
        for key, family in FAMILIES.items():
            built[f"cpu_{key}_{dtype_name(dtype)}"] = functools.partial(
                build_case, family, family.tiny_config(), dtype, "cpu", CPU_IMAGE, CPU_TEXT_TOKENS
            )
    if gpu:
        for key, family in FAMILIES.items():
            built[f"gpu_{key}_bfloat16"] = functools.partial(
                build_case, family, family.gpu_config(), torch.bfloat16, "cuda", GPU_IMAGE, family.gpu_text_tokens
            )
    return built


def run(repeats: int = 5, cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> dict:
    """The CPU comparisons, plus the GPU ones when a GPU is present; a failing case is recorded and named in
    ``failed`` while the others run."""
    gpu = torch.cuda.is_available()
    results, failed = run_cases(cases(cpu_dtypes, gpu), repeats)
    return {
        "benchmark": "image-family transformer forward, ours vs diffusers, same weights and inputs",
        "cpu_image": list(CPU_IMAGE),
        "gpu_image": list(GPU_IMAGE),
        "gpu_blocks": {
            key: {"kept": family.gpu_blocks, "released": {name: family.released[name] for name in family.gpu_blocks}}
            for key, family in FAMILIES.items()
        },
        "results": results,
        "failed": failed,
    }
