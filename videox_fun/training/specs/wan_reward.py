"""The Wan spec's reward-training hooks (``--train_mode reward``, :class:`~videox_fun.training.reward.RewardObjective`).

Reward training samples text-to-video from noise, so the hooks give what the pipeline's t2v gives:
the text contexts of the prompts and of the negative prompt, the t2v conditions of the variant
built by :meth:`WanPipeline.build_conditions` itself (an InP model's mask channels say "all to
generate" beside the latent of the fully masked video, CLIP sees blank tokens, Control / start-image
channels and a V1.1 reference are zeros), the noise shape, the Euler sigmas of the ``Flow`` sampler
with the model's shift, and a differentiable VAE decode, checkpointed so its activations are
recomputed in backward rather than kept.

VideoX-Fun's reward script zeroes an InP model's masked-video latent instead of encoding the
masked video; here the LoRA is trained on the inputs ``videox-fun generate`` samples it with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from . import Device, FamilyModels, on_device

if TYPE_CHECKING:
    from ..config import TrainConfig

Size = tuple[int, int, int]  # (frames, height, width) of the sampled videos


class WanRewardHooks:
    """Mixed into :class:`~.wan.WanSpec`: the hooks of :data:`videox_fun.training.reward.REWARD_HOOKS`."""

    config: TrainConfig

    def reward_conditions(
        self, models: FamilyModels, prompts: list[str], negative_prompt: str, size: Size, device: Device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(cond, uncond) inputs (B, ...): the prompts' / the negative prompt's text context and the t2v conditions."""
        encoder = models.frozen["text_encoder"]
        text_len = models.transformer.config.text_len
        with on_device(encoder, torch.device(device), models.low_vram):
            texts = encoder.encode([*prompts, negative_prompt], text_len, device=device).float()  # (B + 1, L, C)
        b = len(prompts)
        shared = {
            name: value.expand(b, *value.shape[1:])
            for name, value in self._t2v_conditions(models, size, device).items()
        }
        return {"context": texts[:b], **shared}, {"context": texts[b:].expand(b, -1, -1), **shared}

    def _t2v_conditions(self, models: FamilyModels, size: Size, device: Device) -> dict[str, torch.Tensor]:
        """The pipeline's t2v conditions (1, ...) of the variant (y, clip_fea, ref_latent), built once per size."""
        from ...pipelines.wan import WanPipeline

        cache = self.__dict__.setdefault("_reward_conditions", {})
        key = (size, str(device))
        if key not in cache:
            vae = models.frozen["vae"]
            pipe = WanPipeline(
                models.transformer,
                vae,
                models.frozen["text_encoder"],
                models.frozen.get("image_encoder"),
                masked_fill=models.settings.masked_fill,
                device=device,
            )
            with torch.no_grad(), on_device(vae, torch.device(device), models.low_vram):
                conditions = pipe.build_conditions("t2v", {}, *size)
            cache[key] = {name: value.float() for name, value in conditions.items()}
        return cache[key]

    def reward_latent_shape(self, models: FamilyModels, batch_size: int, size: Size) -> tuple[int, ...]:
        """The noise shape (B, z, F', h, w) of videos of ``size``; one-line ValueError for a size it cannot take."""
        vae = models.frozen["vae"]
        frames, height, width = size
        multiple = vae.spatial_compression * models.transformer.config.patch_size[1]
        if height % multiple or width % multiple:
            raise ValueError(f"--video_sample_size {height}x{width}: reward sampling needs multiples of {multiple}")
        return (batch_size, vae.z_dim, *vae.latent_shape(frames, height, width))

    def reward_sigmas(self, models: FamilyModels, num_steps: int) -> torch.Tensor:
        """The ``Flow`` (Euler) sampler's sigmas (steps + 1,) ending at 0, with ``--shift`` or the model's shift."""
        from ...pipelines.schedulers import make_scheduler

        shift = self.config.shift if self.config.shift is not None else models.settings.defaults.shift
        scheduler = make_scheduler("Flow", shift)
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.float()

    @staticmethod
    def reward_guidance(models: FamilyModels) -> float:
        """The CFG scale of the model config's generation defaults."""
        return float(models.settings.defaults.guidance_scale)

    @staticmethod
    def reward_decode(models: FamilyModels, latents: torch.Tensor, use_checkpoint: bool = True) -> torch.Tensor:
        """Frames (B, 3, 4(F'-1)+1, H, W) in [-1, 1] of latents (B, z, F', h, w), differentiable.

        With ``use_checkpoint`` the decode's activations are recomputed in backward (the VAE visits the
        device inside the checkpointed function, so a low-VRAM recomputation finds it there too).
        """
        vae = models.frozen["vae"]

        def decode(z: torch.Tensor) -> torch.Tensor:
            with on_device(vae, z.device, models.low_vram):
                return vae.decode(z).float()

        if use_checkpoint and torch.is_grad_enabled() and latents.requires_grad:
            return checkpoint(decode, latents, use_reentrant=False)
        return decode(latents)
