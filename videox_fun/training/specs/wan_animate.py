"""Training inputs of Wan2.2-Animate models (``--train_mode animate`` / ``replace``), built as the pipeline samples.

A sample is one segment of :class:`~videox_fun.pipelines.animate.WanAnimatePipeline`: the reference image as latent
frame 0 (its own single-image latent, marked known in y), the clip's latents after it, the pose video's latents, the
face crops (the motion encoder's 512 x 512 input) and the reference's CLIP tokens. y is built by the pipeline's
functions (:func:`~videox_fun.pipelines.animate.reference_condition`, :func:`segment_condition`):

- animation samples know nothing after the reference (zeros; as if the person filled the frame); replacement
  samples (entries with a background and a person mask) know the background outside the person, and for
  :data:`BACKGROUND_DROP` of them it is dropped (trained as animation), as VideoX-Fun's ``train_animate`` does;
- segment carry-over: for :data:`CARRY_SHARE` of the samples the clip's first ``refert_num`` frames (1 or 5, as
  the release carries them) are given known, as the pipeline gives a segment the last frames of the one before.

Every latent frame is noised and in the loss (the pipeline denoises the reference frame too, then drops it).
Trained from decoded pixels only: the motion encoder is trained with the model, so faces cannot be pre-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from ...models.wan.variants import WanVariant
from ...pipelines.animate import REFERT_NUMS, reference_condition, segment_condition
from ..config import TrainConfig
from . import TrainInputs, choose, uniform

ANIMATE_TRAIN_MODES = ("animate", "replace")
# Share of samples that start from carried-over frames: VideoX-Fun's train_animate carries 1 frame for 25% (drawn
# per batch); ours draws per sample, and 1 or 5 frames as the release's refert_num.
CARRY_SHARE = 0.25
# Share of replacement samples trained as animation (background zeroed, nothing known): VideoX-Fun's 10%.
BACKGROUND_DROP = 0.1
NO_CACHE = (
    "--train_mode {mode} trains from decoded videos, not from a latent cache: the face crops go through the motion "
    "encoder being trained. Leave out --use_cached_latents / `videox-fun cache`."
)


class AnimateSource(Protocol):
    """What :func:`animate_inputs` needs of a condition source (the Wan spec's pixel source).

    B samples of T frames of H x W; z latent channels, F' latent frames of h x w.
    """

    batch: dict

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, z, F', h, w)."""
        ...

    def latents(self) -> torch.Tensor:
        """The clips' latents (B, z, F', h, w)."""
        ...

    def control_latents(self) -> torch.Tensor:
        """The control videos' latents (B, z, F', h, w): here the pose videos."""
        ...

    def clip_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP tokens (N, 257, image_dim) of images (N, 3, H, W) in [-1, 1]."""
        ...


def check_animate_mode(variant: WanVariant, mode: str, folder: Path) -> None:
    """Fail with what to change unless an Animate model trains in an Animate mode."""
    if variant.animate and mode in ANIMATE_TRAIN_MODES:
        return
    if variant.animate:
        raise ValueError(
            f"{folder} is a Wan2.2-Animate model: it trains with --train_mode animate or replace (its inputs are "
            f"the pose video, face crops and a reference image), not {mode}"
        )
    raise ValueError(f"--train_mode {mode} trains Wan2.2-Animate models; {folder} is of the {variant.name} variant")


def check_animate_settings(config: TrainConfig) -> None:
    """Refuse, in one line, settings an Animate mode cannot honour (latent cache, validation sampling)."""
    if config.use_cached_latents:
        raise ValueError(NO_CACHE.format(mode=config.train_mode))
    if config.validation_steps:
        raise ValueError(
            f"--validation_steps is not supported with --train_mode {config.train_mode} yet (it samples from a "
            "preprocessing folder): sample the saved model with examples/wan2.2/predict_animate.py"
        )


def draw_carried(generators: Sequence[torch.Generator], frames: int) -> list[int]:
    """Carried-over frames per sample: 0, or for :data:`CARRY_SHARE` of them a refert_num of the release that
    leaves frames to generate in a clip of ``frames``. Two draws per sample whatever the outcome."""
    options = [count for count in REFERT_NUMS if count < frames]
    counts = []
    for generator in generators:
        carry = uniform(generator) < CARRY_SHARE
        pick = choose(generator, max(len(options), 1))
        counts.append(options[pick] if carry and options else 0)
    return counts


def draw_background_drop(generators: Sequence[torch.Generator]) -> list[bool]:
    """Per sample: whether a replacement sample is trained as animation (one draw each, :data:`BACKGROUND_DROP`)."""
    return [uniform(generator) < BACKGROUND_DROP for generator in generators]


def conditioning_videos(batch: dict, dropped: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's backgrounds (B, 3, T, H, W) and person masks (B, T, H, W), those of ``dropped`` samples
    replaced by animation's (zeros, all person)."""
    background = batch["background_pixel_values"].clone()
    person = batch["person_mask"][:, 0].clone()
    rows = [row for row, drop in enumerate(dropped) if drop]
    background[rows] = 0.0
    person[rows] = 1.0
    return background, person


def animate_inputs(source: AnimateSource, context: torch.Tensor, generators: Sequence[torch.Generator]) -> TrainInputs:
    """One micro-batch's clean latents (B, z, 1 + F', h, w), reference first, and the Animate model's inputs."""
    batch = source.batch
    if "face_pixel_values" not in batch:
        raise ValueError("Animate training needs the dataset's Animate inputs: build it with train_mode 'animate'")
    pixels = batch["pixel_values"]  # (B, 3, T, H, W)
    reference = batch["ref_pixel_values"]  # (B, 3, H, W)
    carried = draw_carried(generators, pixels.shape[2])
    background, person = conditioning_videos(batch, draw_background_drop(generators))
    ref_latent = source.encode(reference[:, :, None])  # (B, z, 1, h, w): encoded as an image, as the pipeline does
    segment = segment_condition(source.encode, background, person, pixels, carried)  # (B, 4 + z, F', h, w)
    video = source.latents()  # (B, z, F', h, w)
    conditions = {
        "context": context,
        "clip_fea": source.clip_images(reference),
        "y": torch.cat([reference_condition(ref_latent), segment.to(ref_latent)], dim=2),  # (B, 4 + z, 1 + F', h, w)
        "pose_latents": source.control_latents(),
        "face_pixel_values": batch["face_pixel_values"].to(video.device),  # (B, 3, T, 512, 512)
    }
    return TrainInputs(torch.cat([ref_latent, video], dim=2), conditions)
