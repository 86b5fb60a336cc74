"""Training inputs of Wan VACE models (``--train_mode vace``): the VACE context of each sample's task.

The context is built as the pipeline builds it at inference (:mod:`videox_fun.pipelines.vace`):
inactive + reactive latents (16 + 16 channels) and the generate mask pixel-unshuffled to 64
channels, reference frames in front on the time axis. Each sample draws its *source task*:

- ``t2v``: an empty (grey) video, everything to generate;
- ``mask``: masked editing, the video with its generate-masked pixels greyed out (inpaint,
  outpaint, first / last frame known, continuation...: the dataset's masks, or from a latent
  cache the whole-frame kinds of :data:`CACHED_MASK_KINDS`);
- ``control``: the control video as the reactive frames, everything to generate (only when the
  batch has control videos).

Reference-to-video is drawn per micro-batch (every sample of a batch must have as many latent
frames): for :data:`REFERENCE_SHARE` of the micro-batches one frame of each clip is a subject
image, prepended to the clean latents and to the context (zero reactive half, zero mask), so the
model learns to bring that subject into the video. The draw comes from a generator derived from
the batch's first sample; the per-sample draws stay each sample's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ...pipelines.vace import SPATIAL, mask_channels
from . import uniform

# The grey that VACE sources put where the model is to generate (0 in [-1, 1]), as compose_source does.
VACE_FILL = 0.0
# Share of samples of each source task; control is left out (and the others renormalised) without control videos.
SOURCE_TASKS = {"t2v": 0.25, "mask": 0.45, "control": 0.30}
# Share of micro-batches given a reference frame (a subject image) in front (``--vace_reference_share``).
REFERENCE_SHARE = 0.35
# Whole-frame mask kinds a latent cache holds the masked-video latents of (their masks need no pixels).
CACHED_MASK_KINDS = ("i2v", "first_last", "second_half")
# Pixel frames whose single-frame latents a cache holds as reference images: first, middle, last.
CACHED_REFERENCE_FRAMES = ("first", "middle", "last")


class VaceSource(Protocol):
    """What :func:`vace_inputs` needs of a condition source (the Wan spec's pixel or cached source).

    B samples; z latent channels, F' latent frames of h x w; masks at pixel resolution (F, H, W).
    """

    batch: dict

    def empty_latents(self) -> torch.Tensor:
        """Latents (B, z, F', h, w) of an all-grey video (the inactive or reactive half of an empty source)."""
        ...

    def vace_masked(
        self, rows: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For the samples ``rows`` (with their generators): generate masks (N, 1, F, H, W) and the latents
        (N, z, F', h, w) of their videos greyed out under them."""
        ...

    def control_latents(self) -> torch.Tensor:
        """Latents of the control videos (B, z, F', h, w)."""
        ...

    def ref_frames(self, generators: Sequence[torch.Generator]) -> list[int]:
        """The pixel frame per sample used as the subject image."""
        ...

    def frame_latents(self, frames: Sequence[int]) -> torch.Tensor:
        """Latents (B, z, h, w) of one frame per sample, encoded as an image."""
        ...


def has_control(batch: dict) -> bool:
    """Whether a batch (pixels or cache records) carries control videos."""
    return "control_pixel_values" in batch or "control_latents" in batch


def draw_source_tasks(generators: Sequence[torch.Generator], control: bool) -> list[str]:
    """One source task per sample from its generator, by :data:`SOURCE_TASKS` (control only when ``control``)."""
    weights = {task: w for task, w in SOURCE_TASKS.items() if control or task != "control"}
    total = sum(weights.values())
    names, edges = list(weights), torch.tensor(list(weights.values())).cumsum(0).tolist()
    tasks = []
    for generator in generators:
        draw = uniform(generator) * total
        tasks.append(next((name for name, edge in zip(names, edges, strict=True) if draw < edge), names[-1]))
    return tasks


def draws_reference(generators: Sequence[torch.Generator], share: float = REFERENCE_SHARE) -> bool:
    """Whether this micro-batch carries reference frames (with probability ``share``): one draw from a
    generator derived from the first sample's, so no sample's own sequence of draws moves."""
    batch_generator = torch.Generator().manual_seed(generators[0].initial_seed() ^ 0x5ACE)
    return uniform(batch_generator) < share


def vace_inputs(
    source: VaceSource,
    latents: torch.Tensor,
    generators: Sequence[torch.Generator],
    reference_share: float = REFERENCE_SHARE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean latents (B, z, F', h, w) -> (the latents with any reference frame in front (B, z, R + F', h, w),
    the VACE context (B, 2z + 64, R + F', h, w)); a reference for ``reference_share`` of micro-batches."""
    b, _, _, h, w = latents.shape
    tasks = draw_source_tasks(generators, has_control(source.batch))
    empty = source.empty_latents()  # (B, z, F', h, w)
    inactive, reactive = empty.clone(), empty.clone()
    batch = source.batch
    pixel_frames = int(batch["num_frames"][0]) if "num_frames" in batch else batch["pixel_values"].shape[2]
    generate = torch.ones(b, 1, pixel_frames, h * SPATIAL, w * SPATIAL, device=latents.device)
    rows = {task: [i for i, t in enumerate(tasks) if t == task] for task in SOURCE_TASKS}
    if rows["mask"]:
        chosen = rows["mask"]
        masks, masked = source.vace_masked(chosen, [generators[i] for i in chosen])
        generate[chosen] = masks.to(generate)
        inactive[chosen] = masked.to(inactive)
    if rows["control"]:
        chosen = rows["control"]
        reactive[chosen] = source.control_latents()[chosen].to(reactive)
    context = torch.cat([inactive, reactive, mask_channels(generate).to(inactive)], dim=1)  # (B, 96, F', h, w)
    if not draws_reference(generators, reference_share):
        return latents, context
    reference = source.frame_latents(source.ref_frames(generators))[:, :, None].to(latents)  # (B, z, 1, h, w)
    ref_context = torch.cat([reference, torch.zeros_like(context[:, reference.shape[1] :, :1])], dim=1)
    return torch.cat([reference, latents], dim=2), torch.cat([ref_context, context], dim=2)


def cache_records(source: VaceSource, pixel_frames: int, encode_masked) -> dict[str, torch.Tensor]:
    """What a latent cache keeps for VACE training besides the video latents (tensors with a batch dim B).

    ``encode_masked(kind)`` -> latents (B, z, F', h, w) of the videos greyed out under the whole-frame
    mask ``kind``.
    """
    records = {"vace_empty": source.empty_latents()}
    for kind in CACHED_MASK_KINDS:
        records[f"vace_masked_{kind}"] = encode_masked(kind)
    b = records["vace_empty"].shape[0]
    indices = reference_frame_indices(pixel_frames)
    records["ref_latents"] = torch.stack([source.frame_latents([i] * b) for i in indices], dim=1)  # (B, K, z, h, w)
    records["ref_frame_index"] = torch.tensor(indices, dtype=torch.int64).expand(b, -1)  # (B, K)
    return records


def reference_frame_indices(pixel_frames: int) -> list[int]:
    """The pixel frames of :data:`CACHED_REFERENCE_FRAMES` in a clip of ``pixel_frames`` (distinct, in order)."""
    return sorted({0, pixel_frames // 2, pixel_frames - 1})
