"""Our Wan side-stream transformers vs diffusers' own classes: same random weights, same inputs, one process.

Wan VACE (``WanVACETransformer3DModel`` vs diffusers' ``WanVACETransformer3DModel``: the context stream's blocks
hinting main blocks) and Wan2.2-Animate (``WanAnimateTransformer3DModel`` vs diffusers'
``WanAnimateTransformer3DModel``: pose embedding, motion encoder on 512 x 512 face crops, face blocks). diffusers'
model gets our weights through its own reader of the released layout (``convert_wan_transformer_to_diffusers``, what
its ``from_single_file`` uses), as the parity tests do. The zero-initialised VACE projections get a linear's default
initialisation first, so that the hints reach the output and the difference covers them.

CPU: tiny configs at the text length the releases pad prompts to (512: diffusers' Animate attention splits its
context at length - 512), fp32 and bf16; Animate's motion encoder at the released 512 x 512 crops
(``TINY_RELEASED_FACE_CROPS``: diffusers' reader expects its 7 downsampling blocks), one crop. GPU (when present):
the 14B widths with 5 main layers (one in five hinted / followed by a face block, as released) at 480x832x81
(32,760 video tokens; Animate: a 77-frame segment after the reference frame, 77 face crops) in bf16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import WanAnimateTransformer3DModel as DiffusersAnimate
from diffusers import WanVACETransformer3DModel as DiffusersVace
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from torch import nn

from ..models.loading import public_config
from ..models.wan.animate import WanAnimateTransformer3DModel
from ..models.wan.keys import CLIP_DIM, CLIP_TOKENS, animate_config_to_diffusers, original_config_to_diffusers
from ..models.wan.vace import WanVACETransformer3DModel
from ..models.wan.variants import PRESETS, TINY_RELEASED_FACE_CROPS, tiny_config
from .common import built_in
from .pairs import Pair, dtype_name, run_cases
from .transformer import GPU_LATENTS, make_inputs

TEXT_LEN = 512  # rows of text context both models get (the releases' padding)
PROMPT_TOKENS = 24  # rows of it that are not padding
MOTION_BATCH = 8  # face crops per motion-encoder batch, the same for both (diffusers' default)
CPU_LATENTS = {"vace": (1, 16, 3, 16, 16), "animate": (1, 16, 2, 16, 16)}  # 192 / 128 video tokens; Animate: 1 crop
GPU_LAYERS = 5  # main layers kept at the 14B widths (of 40)
GPU_CONFIGS = {
    # The release hints every 5th of 40 layers: 5 layers keep one hint per five layers.
    "vace": {**PRESETS["Wan2.1-VACE-14B"], "num_layers": GPU_LAYERS, "vace_layers": [0]},
    # face_adapter_interval 5 as released: a face block after layer 0 of the 5.
    "animate": {**PRESETS["Wan2.2-Animate-14B"], "num_layers": GPU_LAYERS},
}
TINY_CONFIGS = {
    "vace": tiny_config("vace", text_len=TEXT_LEN),
    "animate": tiny_config("animate", text_len=TEXT_LEN, **TINY_RELEASED_FACE_CROPS),
}
LABELS = {"vace": "Wan VACE", "animate": "Wan2.2-Animate"}


def diffusers_twin(ours: nn.Module, their_class: type, config: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    """diffusers' model of ``config`` holding our model's weights, read through diffusers' converter of the released
    layout; every key must match (parameters only: the motion encoder's blur kernels are constants both build)."""
    device = next(ours.parameters()).device
    with built_in(dtype, device):
        theirs = their_class.from_config(config).eval()
    with torch.no_grad():
        weights = convert_wan_transformer_to_diffusers({name: p.detach() for name, p in ours.named_parameters()})
    theirs.load_state_dict(weights)
    return theirs


def build_ours(kind: str, config: Mapping[str, Any], dtype: torch.dtype, device: str) -> nn.Module:
    """Our model of ``config`` with seeded random weights; VACE's zero projections initialised as linears."""
    torch.manual_seed(0)
    with built_in(dtype, device):
        if kind == "vace":
            model = WanVACETransformer3DModel.from_config(config).eval()
            for block in model.vace_blocks:  # zero at release initialisation: no hint would reach the output
                for projection in (getattr(block, "before_proj", None), block.after_proj):
                    if projection is not None:
                        projection.reset_parameters()
        else:
            model = WanAnimateTransformer3DModel.from_config(config).eval()
    return model


def face_crops(frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random face crops (1, 3, frames, size, size) in [-1, 1]: 8 x 8 random images upsampled (the motion
    encoder's blur and downsampling would average pixel noise away)."""
    coarse = torch.rand(frames, 3, 8, 8, generator=generator) * 2 - 1
    crops = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return crops.unsqueeze(0).transpose(1, 2)


def build_case(kind: str, config: Mapping[str, Any], latents: tuple[int, ...], dtype: torch.dtype, device: str) -> Pair:
    """Our ``kind`` model (vace / animate) of ``config`` and diffusers' twin in ``dtype`` on ``device``, with one
    forward of each on the same inputs: latents of shape ``latents`` (B, 16, F, H, W), a timestep, a 512-row text
    context and the kind's extra inputs."""
    ours = build_ours(kind, config, dtype, device)
    config = dict(ours.config)  # with the constructor's defaults (the released motion and face widths)
    x, t, context = make_inputs(latents, config["text_dim"], PROMPT_TOKENS, dtype, device)
    generator = torch.Generator().manual_seed(2)
    b, _, frames, h, w = latents
    facts = {
        "kind": LABELS[kind],
        "config": public_config(config),
        "device": str(device),
        "dtype": dtype_name(dtype),
        "latents": list(latents),
        "video_tokens": frames * (h // 2) * (w // 2),
        "text_tokens": TEXT_LEN,
    }
    if kind == "vace":
        theirs = diffusers_twin(ours, DiffusersVace, original_config_to_diffusers(config), dtype)
        vace_context = torch.randn(b, config["vace_in_dim"], frames, h, w, generator=generator).to(device, dtype)

        def ours_call() -> torch.Tensor:
            return ours(x, t, context, vace_context)

        def theirs_call() -> torch.Tensor:
            return theirs(x, t, context, control_hidden_states=vace_context, return_dict=False)[0]

        return Pair(ours, theirs, ours_call, theirs_call, facts)
    theirs = diffusers_twin(ours, DiffusersAnimate, animate_config_to_diffusers(config), dtype)
    crops = 4 * (frames - 2) + 1  # the face frames of the clip after the reference frame
    inputs = {
        "y": torch.randn(b, 20, frames, h, w, generator=generator),  # 4 mask + 16 conditioning-latent channels
        "clip": torch.randn(b, CLIP_TOKENS, CLIP_DIM, generator=generator),
        "pose": torch.randn(b, 16, frames - 1, h, w, generator=generator),
        "faces": face_crops(crops, config["motion_encoder_size"], generator),
    }
    y, clip, pose, faces = (tensor.to(device, dtype) for tensor in inputs.values())
    facts["face_crops"] = crops

    def animate_ours() -> torch.Tensor:
        return ours(x, t, context, clip, y, pose, faces, motion_batch_size=MOTION_BATCH)

    def animate_theirs() -> torch.Tensor:
        hidden = torch.cat([x, y], dim=1)  # diffusers takes the conditioning channels concatenated
        return theirs(hidden, t, context, encoder_hidden_states_image=clip, pose_hidden_states=pose,
                      face_pixel_values=faces, motion_encode_batch_size=MOTION_BATCH, return_dict=False)[0]  # fmt: skip

    return Pair(ours, theirs, animate_ours, animate_theirs, facts)


def cases(cpu_dtypes: tuple[torch.dtype, ...], gpu: bool) -> dict[str, Callable[[], Pair]]:
    """Every case by name: the tiny configs on the CPU in each of ``cpu_dtypes``, then (``gpu``) the 14B widths
    with few layers in bf16 on the GPU."""
    built: dict[str, Callable[[], Pair]] = {}
    for dtype in cpu_dtypes:
        for kind, config in TINY_CONFIGS.items():
            built[f"cpu_{kind}_{dtype_name(dtype)}"] = functools.partial(
                build_case, kind, config, CPU_LATENTS[kind], dtype, "cpu"
            )
    if gpu:
        for kind, config in GPU_CONFIGS.items():
            built[f"gpu_{kind}_bfloat16"] = functools.partial(
                build_case, kind, config, GPU_LATENTS, torch.bfloat16, "cuda"
            )
    return built


def run(repeats: int = 5, cpu_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> dict:
    """The CPU comparisons, plus the GPU ones when a GPU is present (``repeats`` halved there: each forward is
    a second or more); a failing case is recorded and named in ``failed`` while the others run."""
    gpu = torch.cuda.is_available()
    results, failed = run_cases(
        cases(cpu_dtypes, gpu), lambda name: max(2, repeats // 2) if name.startswith("gpu_") else repeats
    )
    return {
        "benchmark": "Wan VACE / Animate transformer forward, ours vs diffusers, same weights and inputs",
        "gpu_layers": {"kept": GPU_LAYERS, "released": PRESETS["Wan2.1-VACE-14B"]["num_layers"]},
        "gpu_latents": list(GPU_LATENTS),
        "results": results,
        "failed": failed,
    }
