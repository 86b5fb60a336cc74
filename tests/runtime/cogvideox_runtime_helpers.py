"""A tiny CogVideoX transformer (diffusers' network, our subclass's declared extension points) and a
short guided sampling loop, for the runtime features' tests on a model family whose block loop is not ours."""

from __future__ import annotations

from collections.abc import Callable

import torch

from videox_fun.models.cogvideox.transformer import CogVideoXTransformer
from videox_fun.pipelines.guidance import ClassifierFreeGuidance

TEXT_DIM = 24
TEXT_TOKENS = 6
STEPS = 8
TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "in_channels": 16,
    "out_channels": 16,
    "time_embed_dim": 32,
    "text_embed_dim": TEXT_DIM,
    "num_layers": 2,
    "sample_width": 4,
    "sample_height": 4,
    "sample_frames": 5,  # 2 latent frames
    "max_text_seq_length": TEXT_TOKENS,
}


def tiny_cogvideox(seed: int = 0, cls: type = CogVideoXTransformer) -> torch.nn.Module:
    """The tiny transformer with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return cls.from_config(TINY).eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise (1, F', 16, h, w) and two different text contexts (1, L, text_dim): cond and uncond."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 2, 16, 4, 4, generator=generator)
    cond = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator)
    uncond = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator) * 0.5
    return noise, cond, uncond


def predict(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]:
    """The denoiser a pipeline would call: latents (B, F', C, h, w), t (B,), inputs -> prediction."""

    def denoise(latents: torch.Tensor, t: torch.Tensor, given: dict) -> torch.Tensor:
        return model(latents, given["context"], t, return_dict=False)[0]

    return denoise


def sample(
    model: torch.nn.Module, guidance: ClassifierFreeGuidance | None = None, steps: int = STEPS, seed: int = 1
) -> torch.Tensor:
    """``steps`` Euler steps of a (guided) denoising loop, starting the model's generation hooks as a pipeline does."""
    noise, cond, uncond = inputs(seed)
    guidance = guidance or ClassifierFreeGuidance(scale=5.0)
    for hook in getattr(model, "generation_hooks", ()):
        hook.begin(steps)
    latents = noise.clone()
    timesteps = torch.linspace(999.0, 0.0, steps)
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            velocity = guidance(predict(model), latents, t[None], {"context": cond}, {"context": uncond}, step, steps)
            latents = latents - velocity / steps
    return latents
