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

The pieces come from decoded pixels (:class:`DecodedAnimate`: the frozen VAE, CLIP and text encoder run at each
step) or from a latent cache (:class:`CachedAnimate`). A cache record (:func:`animate_cache_records`) holds what the
frozen encoders make: the clip's, the reference's and the pose video's latents, the reference's CLIP tokens, the
text context, and y's segment part for every outcome of the per-step draws (each carry-over count the clip allows,
background kept or dropped), so a run from the cache draws what a run from the videos draws and takes the same
inputs. The face crops feed the motion encoder, which is part of the transformer being trained: they are kept as
pixels (uint8, as the dataset decodes them). As every cache's, a record is the sample of the first epoch: the
dataset's per-epoch draws (the clip start, and the reference frame of an entry without ``ref_file_path``) are those
of epoch 0, where a run from the videos draws new ones each epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ...io.video import frames_to_tensor, tensor_to_frames
from ...models.wan.variants import WanVariant
from ...pipelines.animate import REFERT_NUMS, reference_condition, segment_condition
from ..cache import INDEX_FILE
from ..config import TrainConfig
from . import TrainInputs, choose, uniform

ANIMATE_TRAIN_MODES = ("animate", "replace")
# Share of samples that start from carried-over frames: VideoX-Fun's train_animate carries 1 frame for 25% (drawn
# per batch); ours draws per sample, and 1 or 5 frames as the release's refert_num.
CARRY_SHARE = 0.25
# Share of replacement samples trained as animation (background zeroed, nothing known): VideoX-Fun's 10%.
BACKGROUND_DROP = 0.1
# Index of the background outcome on axis 1 of a record's ``segments``: kept (replacement), dropped (animation).
KEPT, DROPPED = 0, 1


class AnimatePixels(Protocol):
    """What :class:`DecodedAnimate` needs of the Wan spec's pixel source (the frozen encoders).

    B samples of T frames of H x W; z latent channels, F' latent frames of h x w.
    """

    batch: dict
    device: torch.device

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

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Text context (B, L, C) of the batch's texts (the dataset dropped some to "")."""
        ...


class AnimateSource(Protocol):
    """The pieces of an Animate micro-batch: :class:`DecodedAnimate` (pixels, encoders now) or :class:`CachedAnimate`.

    B samples of T pixel frames; z latent channels, F' latent frames of h x w. Tensors are fp32 on the device.
    """

    frames: int  # T, the clips' pixel frames

    def video_latents(self) -> torch.Tensor:
        """The clips' latents (B, z, F', h, w)."""
        ...

    def reference_latents(self) -> torch.Tensor:
        """The reference images' latents (B, z, 1, h, w), each encoded as a single image."""
        ...

    def segments(self, carried: Sequence[int], dropped: Sequence[bool]) -> torch.Tensor:
        """y after the reference frame (B, 4 + z, F', h, w): the first ``carried[b]`` frames of clip b known, its
        background (replacement samples) dropped where ``dropped[b]``."""
        ...

    def pose_latents(self) -> torch.Tensor:
        """The pose videos' latents (B, z, F', h, w)."""
        ...

    def reference_clip(self) -> torch.Tensor:
        """CLIP tokens of the reference images (B, 257, image_dim)."""
        ...

    def faces(self) -> torch.Tensor:
        """The face crops (B, 3, T, S, S) in [-1, 1]."""
        ...

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Text context (B, L, C), the dataset's text dropout applied."""
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
    """Refuse, in one line, settings an Animate mode cannot honour: validation sampling, a latent cache built for
    another train mode (or another model's)."""
    if config.validation_steps:
        raise ValueError(
            f"--validation_steps is not supported with --train_mode {config.train_mode} yet (it samples from a "
            "preprocessing folder): sample the saved model with examples/wan2.2/predict_animate.py"
        )
    if config.use_cached_latents:
        check_cache_mode(config)


def check_cache_mode(config: TrainConfig) -> None:
    """Fail (one line) when the cache at ``cache_dir`` was built for another train mode: its records then lack the
    Animate inputs (another model's mode) or hold another mode's samples. A missing cache is the dataset's to say."""
    index = Path(config.resolved_cache_dir) / INDEX_FILE
    if not index.is_file():
        return
    built = json.loads(index.read_text())
    if built.get("train_mode") != config.train_mode:
        raise ValueError(
            f"the latent cache {index.parent} was built for --train_mode {built.get('train_mode')} (model "
            f"{built.get('model')}), not {config.train_mode}: rebuild it with `videox-fun cache` and this run's "
            "model and --train_mode"
        )


def carry_options(frames: int) -> list[int]:
    """The release's carried-over frame counts (refert_num) that leave frames to generate in a clip of ``frames``."""
    return [count for count in REFERT_NUMS if count < frames]


def draw_carried(generators: Sequence[torch.Generator], frames: int) -> list[int]:
    """Carried-over frames per sample: 0, or for :data:`CARRY_SHARE` of them a refert_num of the release that
    leaves frames to generate in a clip of ``frames``. Two draws per sample whatever the outcome."""
    options = carry_options(frames)
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


def replacement_rows(batch: dict) -> list[int]:
    """The samples that know a background: any nonzero background pixel or any pixel outside the person (the
    others are animation samples, whose segments do not depend on the background draw)."""
    background = batch["background_pixel_values"].flatten(1)  # (B, 3 T H W)
    outside = batch["person_mask"].flatten(1) < 1.0  # (B, T H W)
    return [row for row in range(background.shape[0]) if background[row].any() or outside[row].any()]


class DecodedAnimate:
    """An Animate micro-batch's pieces from decoded pixels, through the frozen encoders of ``pixels``."""

    def __init__(self, pixels: AnimatePixels):
        batch = pixels.batch
        if "face_pixel_values" not in batch:
            raise ValueError("Animate training needs the dataset's Animate inputs: build it with train_mode 'animate'")
        self.pixels, self.batch = pixels, batch
        self.frames = batch["pixel_values"].shape[2]

    def video_latents(self) -> torch.Tensor:
        """The clips' latents (B, z, F', h, w)."""
        return self.pixels.latents()

    def reference_latents(self) -> torch.Tensor:
        """The references (B, 3, H, W) encoded as single images, as the pipeline does: (B, z, 1, h, w)."""
        return self.pixels.encode(self.batch["ref_pixel_values"][:, :, None])

    def segments(
        self, carried: Sequence[int], dropped: Sequence[bool], rows: Sequence[int] | None = None
    ) -> torch.Tensor:
        """y after the reference (N, 4 + z, F', h, w) of the samples ``rows`` (default: all), by the pipeline's
        :func:`segment_condition`; ``carried`` and ``dropped`` per sample of the batch."""
        rows = list(range(len(carried))) if rows is None else list(rows)
        background, person = conditioning_videos(self.batch, dropped)
        clips = self.batch["pixel_values"][rows]  # (N, 3, T, H, W)
        return segment_condition(self.pixels.encode, background[rows], person[rows], clips, [carried[r] for r in rows])

    def pose_latents(self) -> torch.Tensor:
        """The pose videos' latents (B, z, F', h, w)."""
        return self.pixels.control_latents()

    def reference_clip(self) -> torch.Tensor:
        """CLIP tokens of the references (B, 257, image_dim)."""
        return self.pixels.clip_images(self.batch["ref_pixel_values"])

    def faces(self) -> torch.Tensor:
        """The decoded face crops (B, 3, T, S, S) in [-1, 1]."""
        return self.batch["face_pixel_values"].to(self.pixels.device)

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The text encoder's context (B, text_len, C) of the batch's texts ("" where the dataset dropped them)."""
        return self.pixels.context(generators)


class CachedAnimate:
    """The same pieces read from latent-cache records (written by :func:`animate_cache_records`)."""

    def __init__(self, batch: dict, device: torch.device):
        self.batch, self.device = batch, device
        self.frames = int(self._get("num_frames", "clip lengths", float_values=False)[0])

    def _get(self, name: str, what: str, float_values: bool = True) -> torch.Tensor:
        """The batch's ``name`` on the device; a cache without it is one line (rebuild it for this mode)."""
        from .image import cached_tensor

        return cached_tensor(self.batch, name, what, self.device, float_values)

    def video_latents(self) -> torch.Tensor:
        """The cached clip latents (B, z, F', h, w)."""
        return self._get("latents", "video latents")

    def reference_latents(self) -> torch.Tensor:
        """The cached reference latents (B, z, 1, h, w)."""
        return self._get("ref_latents", "reference images' latents")

    def segments(self, carried: Sequence[int], dropped: Sequence[bool]) -> torch.Tensor:
        """Each sample's cached segment for its draws (B, 4 + z, F', h, w)."""
        cached = self._get("segments", "the carried-over / background segments")  # (B, 2, K, 4 + z, F', h, w)
        counts = self.batch["carry_counts"].tolist()  # (B, K): the carried-over counts of axis 2
        rows = []
        for row, (carry, drop) in enumerate(zip(carried, dropped, strict=True)):
            rows.append(cached[row, DROPPED if drop else KEPT, counts[row].index(carry)])  # (4 + z, F', h, w)
        return torch.stack(rows)

    def pose_latents(self) -> torch.Tensor:
        """The cached pose latents (B, z, F', h, w)."""
        return self._get("pose_latents", "pose videos' latents")

    def reference_clip(self) -> torch.Tensor:
        """The cached CLIP tokens of the references (B, 257, image_dim)."""
        return self._get("clip_ref", "CLIP tokens of the references")

    def faces(self) -> torch.Tensor:
        """The cached uint8 face crops (B, T, S, S, 3) as the dataset makes them: (B, 3, T, S, S) in [-1, 1]."""
        frames = self._get("face_frames", "face crops of Wan2.2-Animate training", float_values=False)
        return torch.stack([frames_to_tensor(sample) for sample in frames])

    def context(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The cached context (B, L, C), the empty prompt's where the dataset's draw drops the text (no draw here)."""
        from .image import cached_text

        return cached_text(self.batch, self.device)["context"]


def animate_source(source: AnimatePixels) -> AnimateSource:
    """The Animate pieces of the Wan spec's condition source: :class:`CachedAnimate` when its batch holds cache
    records (then only its ``batch`` and ``device`` are read), else :class:`DecodedAnimate` of its pixels."""
    if "latents" in source.batch:
        return CachedAnimate(source.batch, source.device)
    return DecodedAnimate(source)


def face_crops_at(faces: torch.Tensor, size: int) -> torch.Tensor:
    """Face crops (B, 3, T, S, S) at the motion encoder's side ``size``. The dataset reads them at the release's 512
    (what its preprocessing writes); a model whose encoder takes another size gets them resized (bilinear,
    antialiased), as the pipeline reads ``src_face.mp4`` at that size."""
    if faces.shape[-2:] == (size, size):
        return faces
    batch, frames = faces.shape[0], faces.shape[2]
    flat = faces.transpose(1, 2).flatten(0, 1).float()  # (B * T, 3, S, S)
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.to(faces.dtype).unflatten(0, (batch, frames)).transpose(1, 2)  # (B, 3, T, size, size)


def animate_inputs(source: AnimateSource, generators: Sequence[torch.Generator], face_size: int) -> TrainInputs:
    """One micro-batch's clean latents (B, z, 1 + F', h, w), reference first, and the Animate model's inputs
    (``face_size``: the side of the face crops the model's motion encoder takes).

    Draws per sample, in this order: the carried-over frames (two), the background drop (one); nothing else.
    """
    carried = draw_carried(generators, source.frames)
    dropped = draw_background_drop(generators)
    ref_latent = source.reference_latents()  # (B, z, 1, h, w)
    segment = source.segments(carried, dropped)  # (B, 4 + z, F', h, w)
    conditions = {
        "context": source.context(generators),
        "clip_fea": source.reference_clip(),
        "y": torch.cat([reference_condition(ref_latent), segment.to(ref_latent)], dim=2),  # (B, 4 + z, 1 + F', h, w)
        "pose_latents": source.pose_latents(),
        "face_pixel_values": face_crops_at(source.faces(), face_size),  # (B, 3, T, S, S)
    }
    return TrainInputs(torch.cat([ref_latent, source.video_latents()], dim=2), conditions)


def animate_cache_records(pixels: AnimatePixels) -> dict[str, torch.Tensor]:
    """What a latent cache keeps for Animate training besides the clip latents and text (tensors with a batch dim B):

    - ``ref_latents`` (B, z, 1, h, w), ``pose_latents`` (B, z, F', h, w), ``clip_ref`` (B, 257, image_dim);
    - ``segments`` (B, 2, K, 4 + z, F', h, w): y after the reference for background kept / dropped (axis 1,
      :data:`KEPT` / :data:`DROPPED`) and each count of ``carry_counts`` (B, K) (0 and :func:`carry_options`);
      an animation sample's kept segments are its dropped ones (its background is already animation's);
    - ``face_frames`` (B, T, S, S, 3) uint8: the face crops as decoded, for the motion encoder being trained.
    """
    decoded = DecodedAnimate(pixels)
    b = decoded.batch["pixel_values"].shape[0]
    counts = [0, *carry_options(decoded.frames)]
    known = replacement_rows(decoded.batch)
    kept, dropped = [], []
    for count in counts:
        carried = [count] * b
        if count:
            animation = decoded.segments(carried, [True] * b)  # (B, 4 + z, F', h, w)
        else:  # nothing known: the same all-zero video for every sample, encoded once
            animation = decoded.segments(carried, [True] * b, rows=[0]).expand(b, -1, -1, -1, -1)
        replacement = animation.clone()
        if known:
            replacement[known] = decoded.segments(carried, [False] * b, rows=known).to(replacement)
        kept.append(replacement)
        dropped.append(animation)
    segments = torch.stack([torch.stack(kept, dim=1), torch.stack(dropped, dim=1)], dim=1)  # (B, 2, K, ...)
    faces = decoded.batch["face_pixel_values"]  # (B, 3, T, S, S) in [-1, 1], from uint8 frames
    return {
        "ref_latents": decoded.reference_latents(),
        "pose_latents": decoded.pose_latents(),
        "clip_ref": decoded.reference_clip(),
        "segments": segments,
        "carry_counts": torch.tensor(counts, dtype=torch.int64).expand(b, -1),
        "face_frames": torch.stack([tensor_to_frames(face) for face in faces]),  # exact: the dataset's uint8
    }
