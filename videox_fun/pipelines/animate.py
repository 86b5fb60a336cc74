"""Wan2.2-Animate's animation and replacement modes, from the folder its released preprocessing writes.

Wan-AI's preprocessing (``wan/modules/animate/preprocess``) leaves ``src_pose.mp4`` (pose skeletons at the output
size), ``src_face.mp4`` (one 512 x 512 face crop per frame) and ``src_ref.png`` (the character); replacement mode
adds ``src_bg.mp4`` (the video with the person removed) and ``src_mask.mp4`` (white where the person is).

A video runs in segments of ``clip_len`` (4n + 1) frames, as the released ``wan/animate.py`` does: the inputs are
extended by playing them back and forth to a whole number of segments, each segment after the first starts from
the last ``refert_num`` (1 or 5) frames the previous one generated (known frames of its conditioning), and drops
them from its output. Per segment the transformer sees the reference image as latent frame 0 (mask 1), the
carried frames (mask 1) and either nothing (animation) or the background outside the person (replacement), the
pose video's latents, the face crops and the reference's CLIP tokens. Guidance (off at the released scale 1)
contrasts the negative prompt with faces of -1. Components, guidance and the denoising loop are
:class:`~videox_fun.pipelines.wan.WanPipeline`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..families.wan import ANIMATE_FILES, REPLACE_FILES
from ..io.video import frames_to_tensor, letterbox, read_image, read_video, tensor_to_frames
from ..models.wan.animate import WanAnimateTransformer3DModel
from ..models.wan.variants import ANIMATE_RELEASE_DEFAULTS
from .common import GenerationOutput, SamplingSettings, StepCallback, seeded_noise
from .conditioning import pack_frames_in_time
from .guidance import ClassifierFreeGuidance
from .schedulers import make_scheduler
from .wan import WanPipeline

logger = logging.getLogger(__name__)

REFERT_NUMS = (1, 5)  # the carried-over frame counts the release supports
# The released generate.py's defaults for Animate: 77-frame segments, DPM++ with shift 5, 20 steps, no guidance.
ANIMATE_DEFAULTS = {"clip_len": 77, "refert_num": 1, **ANIMATE_RELEASE_DEFAULTS}
ANIMATE_SAMPLER = ANIMATE_RELEASE_DEFAULTS["sampler"]


@dataclass
class AnimateSources:
    """The preprocessing outputs as tensors, every video at the length of the pose video."""

    pose: torch.Tensor  # (T, H, W, 3) uint8 pose skeletons
    face: torch.Tensor  # (T, S, S, 3) uint8 face crops
    reference: torch.Tensor  # (H, W, 3) uint8 character, letterboxed to the pose size
    background: torch.Tensor | None = None  # (T, H, W, 3) uint8, replacement only
    person: torch.Tensor | None = None  # (T, H, W) float, 1 where the person is, replacement only


def missing_sources(folder: Path, replace: bool) -> list[str]:
    """The preprocessing outputs a mode needs that ``folder`` lacks."""
    needed = ANIMATE_FILES + (REPLACE_FILES if replace else ())
    return [name for name in needed if not (folder / name).is_file()]


def check_sources(folder: str | Path, replace: bool = False) -> Path:
    """``folder`` as a Path when it holds every file the mode reads, else one line naming what it lacks."""
    folder = Path(folder)
    missing = missing_sources(folder, replace)
    if missing:
        mode = "replacement" if replace else "animation"
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)} (Wan-Animate {mode} reads its preprocessing)")
    return folder


def read_sources(
    folder: str | Path,
    replace: bool = False,
    face_size: int = 512,
    size: tuple[int, int] | None = None,
    num_frames: int | None = None,
) -> AnimateSources:
    """Read a preprocessing folder; a missing file fails with one line naming it. ``size`` (height, width) resizes
    the pose video (the others follow it); ``num_frames`` keeps the first frames only (VideoX-Fun's video_length)."""
    folder = check_sources(folder, replace)
    pose = read_video(folder / "src_pose.mp4", num_frames=num_frames, size=size)
    height, width = pose.shape[1:3]
    face = read_video(folder / "src_face.mp4", num_frames=num_frames, size=(face_size, face_size))
    reference = letterbox(read_image(folder / "src_ref.png"), height, width)
    if not replace:
        return AnimateSources(pose, face, reference)
    background = read_video(folder / "src_bg.mp4", num_frames=num_frames, size=(height, width))
    person = read_video(folder / "src_mask.mp4", num_frames=num_frames, size=(height, width))[..., 0].float() / 255.0
    return AnimateSources(pose, face, reference, background, person)


def ping_pong(frames: torch.Tensor, length: int) -> torch.Tensor:
    """``frames`` (T, ...) played forwards, backwards, forwards... to ``length`` (the release's inputs_padding)."""
    count = frames.shape[0]
    if count == 1:
        return frames.expand(length, *frames.shape[1:])
    period = 2 * (count - 1)
    index = [i % period if i % period < count else period - i % period for i in range(length)]
    return frames[index]


def padded_length(frames: int, clip_len: int, refert_num: int) -> int:
    """The frame count that fills whole segments of ``clip_len`` overlapping by ``refert_num`` (get_valid_len)."""
    step = clip_len - refert_num
    left = (frames - refert_num) % step
    return frames + (step - left if left else 0)


def segment_starts(length: int, clip_len: int, refert_num: int) -> list[int]:
    """First frames of the segments over ``length`` padded frames: every ``clip_len - refert_num`` frames."""
    return list(range(0, max(length - refert_num, 0), clip_len - refert_num))


def reference_condition(latent: torch.Tensor) -> torch.Tensor:
    """The reference image's conditioning frame y_ref (B, 4 + z, 1, h, w): mask 1 (known) and its latent
    (B, z, 1, h, w), encoded as a single image."""
    return torch.cat([torch.ones_like(latent[:, :4]), latent], dim=1)


def segment_condition(
    encode: Callable[[torch.Tensor], torch.Tensor],
    background: torch.Tensor,
    person: torch.Tensor,
    carried: torch.Tensor | None,
    known: Sequence[int],
) -> torch.Tensor:
    """y for the frames of a segment after the reference (B, 4 + z, F', h, w): known-mask channels, then the latent
    of the segment's conditioning video.

    background: (B, 3, T, H, W) in [-1, 1], the video outside the person (replacement) or zeros (animation);
    person: (B, T, H, W), 1 where the person is (to generate), all ones in animation (as if the person filled the
    frame); carried: (B, 3, >= max(known), H, W) frames carried over (the previous segment's last ones at inference,
    the clip's own first ones in training); known[b]: how many of them start sample b, known whole.
    encode: pixels (B, 3, T, H, W) -> latents (B, z, F', h, w).
    """
    pixels = background.clone()
    for row, count in enumerate(known):
        if count:
            pixels[row, :, :count] = carried[row, :, :count].to(pixels)
    latent = encode(pixels)  # (B, z, F', h, w)
    # Known pixels at latent size: everything outside the person, and the carried frames whole.
    known_pixels = F.interpolate(1.0 - person.float(), size=latent.shape[-2:], mode="nearest")  # (B, T, h, w)
    for row, count in enumerate(known):
        known_pixels[row, :count] = 1.0
    mask = pack_frames_in_time(known_pixels[:, None]).to(latent)  # (B, 4, F', h, w)
    return torch.cat([mask, latent], dim=1)


class WanAnimatePipeline:
    """Wan2.2-Animate generation over a :class:`WanPipeline` whose transformer is a Wan-Animate one."""

    def __init__(self, pipe: WanPipeline):
        if not isinstance(pipe.transformer, WanAnimateTransformer3DModel):
            raise ValueError(f"{pipe.model_name} is not a Wan-Animate model (its transformer has no face modules)")
        if pipe.image_encoder is None:
            raise ValueError(f"{pipe.model_name} ships no CLIP image encoder: Wan-Animate conditions on the reference")
        self.pipe = pipe

    @classmethod
    def from_pretrained(cls, folder: str | Path, **options: object) -> WanAnimatePipeline:
        """Load a model folder as :meth:`WanPipeline.from_pretrained` does (``options``: config, device, dtype)."""
        return cls(WanPipeline.from_pretrained(folder, **options))

    @torch.no_grad()
    def __call__(
        self,
        sources: str | Path | AnimateSources,
        prompt: str = "",
        negative_prompt: str = "",
        replace: bool = False,
        clip_len: int = ANIMATE_DEFAULTS["clip_len"],
        refert_num: int = ANIMATE_DEFAULTS["refert_num"],
        num_inference_steps: int = ANIMATE_DEFAULTS["steps"],
        guidance_scale: float = ANIMATE_DEFAULTS["guidance_scale"],
        shift: float = ANIMATE_DEFAULTS["shift"],
        sampler: str = ANIMATE_SAMPLER,
        seed: int = 43,
        callback: StepCallback | None = None,
        progress: bool = True,
        guidance: ClassifierFreeGuidance | None = None,
        size: tuple[int, int] | None = None,
        num_frames: int | None = None,
    ) -> GenerationOutput:
        """Animate the reference character with the pose and face videos of ``sources`` (a preprocessing folder);
        ``replace`` puts it into the background video instead. Returns the pose video's frame count (its first
        ``num_frames`` when given), at its size unless ``size`` (height, width) resizes it. ``guidance`` replaces
        plain classifier-free guidance at ``guidance_scale`` (the runtime's CFG-skip / CFG-parallel one)."""
        if refert_num not in REFERT_NUMS:
            raise ValueError(
                f"refert_num must be 1 or 5 (the carried-over frames the release supports), got {refert_num}"
            )
        if clip_len % 4 != 1 or clip_len <= refert_num:
            raise ValueError(f"clip_len must be of the form 4n + 1 and above refert_num {refert_num}, got {clip_len}")
        if not isinstance(sources, AnimateSources):
            face_size = self.pipe.transformer.config.motion_encoder_size
            sources = read_sources(sources, replace, face_size, size, num_frames)
        elif replace and sources.background is None:
            raise ValueError("replacement needs the background video and the person mask (src_bg.mp4, src_mask.mp4)")
        frames, height, width = sources.pose.shape[:3]
        multiple = self.pipe.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"the pose video is {height}x{width}; this model takes multiples of {multiple}")
        length = padded_length(frames, clip_len, refert_num)
        logger.info(
            "%d frames, padded to %d for segments of %d overlapping by %d", frames, length, clip_len, refert_num
        )
        settings = SamplingSettings(
            "replace" if replace else "animate", negative_prompt, height, width, clip_len,
            num_inference_steps, guidance_scale, guidance_scale, shift, sampler,
        )  # fmt: skip
        guidance = guidance or ClassifierFreeGuidance(scale=guidance_scale)
        shared = self._shared_inputs(sources.reference, prompt, negative_prompt)
        videos = {
            "pose": sources.pose,
            "face": sources.face,
            "background": sources.background,
            "person": sources.person,
        }
        padded = {name: ping_pong(video, length) for name, video in videos.items() if video is not None}
        outputs, carried, latents = [], None, None
        for index, start in enumerate(segment_starts(length, clip_len, refert_num)):
            clip = {name: video[start : start + clip_len] for name, video in padded.items()}
            latents, video = self._segment(clip, shared, carried, settings, seed + index, guidance, callback, progress)
            carried = video[:, :, -refert_num:]  # (1, 3, refert_num, H, W): the next segment's known start
            outputs.append(video if start == 0 else video[:, :, refert_num:])
        video = torch.cat(outputs, dim=2)[0, :, :frames]  # (3, T, H, W)
        record = {
            **settings.record(seed),
            "clip_len": clip_len,
            "refert_num": refert_num,
            "num_frames": frames,
            "shift": shift,
            "sampler": sampler,
        }
        return GenerationOutput(frames=tensor_to_frames(video.cpu()), latents=latents.cpu(), settings=record)

    def _shared_inputs(self, reference: torch.Tensor, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """What every segment shares: both prompts' embeddings, the reference's CLIP tokens and its conditioning
        frame y_ref (1, 4 + z, 1, h, w): mask 1 (known) and its latent."""
        pipe = self.pipe
        image = frames_to_tensor(reference[None])[:, 0][None].to(pipe.device, pipe.dtype)  # (1, 3, H, W)
        latent = pipe.vae.encode(image[:, :, None]).to(pipe.dtype)  # (1, z, 1, h, w)
        cond_text, uncond_text = pipe._encode_prompts(prompt, negative_prompt)
        return {
            "context": cond_text,
            "negative_context": uncond_text,
            "clip_fea": pipe._clip_tokens(image),
            "y_ref": reference_condition(latent),
        }

    def _conditioning(self, clip: dict[str, torch.Tensor], carried: torch.Tensor | None) -> torch.Tensor:
        """y for one segment's frames after the reference (1, 4 + z, F', h, w) (:func:`segment_condition`): the
        carried frames known, then zeros (animation) or the background outside the person (replacement)."""
        pipe = self.pipe
        count, size = clip["pose"].shape[0], clip["pose"].shape[1:3]
        if "background" in clip:
            background = frames_to_tensor(clip["background"])[None].to(pipe.device, pipe.dtype)  # (1, 3, T, H, W)
        else:
            background = torch.zeros(1, 3, count, *size, device=pipe.device, dtype=pipe.dtype)
        person = clip.get("person", torch.ones(count, *size))[None]  # (1, T, H, W)
        known = [0 if carried is None else carried.shape[2]]
        return segment_condition(
            lambda pixels: pipe.vae.encode(pixels).to(pipe.dtype), background, person, carried, known
        )

    def _segment(
        self,
        clip: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
        carried: torch.Tensor | None,
        settings: SamplingSettings,
        seed: int,
        guidance: ClassifierFreeGuidance,
        callback: StepCallback | None,
        progress: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one segment: its final latents (1, z, 1 + F', h, w) and decoded frames (1, 3, T, H, W)."""
        pipe = self.pipe
        pose = pipe.vae.encode(frames_to_tensor(clip["pose"])[None].to(pipe.device, pipe.dtype)).to(pipe.dtype)
        face = frames_to_tensor(clip["face"])[None].to(pipe.device, pipe.dtype)  # (1, 3, T, S, S)
        y = torch.cat([shared["y_ref"], self._conditioning(clip, carried)], dim=2)  # (1, 4 + z, 1 + F', h, w)
        common = {"clip_fea": shared["clip_fea"], "y": y, "pose_latents": pose}
        cond = {"context": shared["context"], "face_pixel_values": face, **common}
        # The release's guidance pass: the negative prompt and no face (every crop pixel at -1).
        uncond = {"context": shared["negative_context"], "face_pixel_values": torch.full_like(face, -1.0), **common}
        scheduler = make_scheduler(settings.sampler, settings.shift)
        scheduler.set_timesteps(settings.steps, device=pipe.device)
        noise = seeded_noise((1, pipe.vae.z_dim, *y.shape[2:]), seed, pipe.device)
        latents = pipe._sample(
            noise, scheduler.timesteps, scheduler, pipe._denoise, guidance, cond, uncond, settings, callback, progress
        )
        video = pipe.vae.decode(latents[:, :, 1:].to(pipe.dtype)).float()  # the reference frame is not output
        return latents, video


class AnimateRequests:
    """:class:`WanAnimatePipeline` as the programmatic entry calls a family's pipeline (``families.Pipeline``): a
    prompt and keyword settings, ``mode`` ``animate`` or ``replace``, the preprocessing folder as ``src_root_path``.

    Settings left as None take the model config's defaults, and the release's segment settings. Runtime features
    (offload, fp8, step caches, parallelism) reach the models through the wrapped WanPipeline's components.
    """

    def __init__(self, animate: WanAnimatePipeline):
        self.animate = animate

    @property
    def pipe(self) -> WanPipeline:
        """The components and sampling loop."""
        return self.animate.pipe

    @property
    def device(self) -> torch.device:
        """Where the pipeline runs."""
        return self.pipe.device

    @device.setter
    def device(self, device: torch.device) -> None:  # the entry sets it after an offloaded load
        self.pipe.device = device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return self.pipe.dtype

    @property
    def transformers(self) -> tuple:
        """The one Animate transformer."""
        return self.pipe.transformers

    def components(self) -> dict[str, tuple[torch.nn.Module, tuple[str, ...]]]:
        """The wrapped pipeline's models and the methods through which they are called."""
        return self.pipe.components()

    def __call__(
        self,
        prompt: str,
        src_root_path: str | Path,
        mode: str = "animate",
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        seed: int = 43,
        strength: float | None = None,  # v2v's: every request carries it, no Animate mode reads it
        refert_num: int | None = None,
        clip_len: int | None = None,
        guidance: ClassifierFreeGuidance | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
    ) -> GenerationOutput:
        """One video of ``mode`` from the folder ``src_root_path``; its record names the folder."""
        if mode not in ("animate", "replace"):
            raise ValueError(f"a Wan-Animate model serves animate and replace, not {mode!r}")
        if guidance_scale_2 is not None:
            raise ValueError("guidance_scale_2 is the low-noise expert's; a Wan-Animate model has one transformer")
        if (height is None) != (width is None):
            raise ValueError("give height and width together (without them the pose video's size is used)")
        defaults = self.pipe.config.defaults
        output = self.animate(
            src_root_path,
            prompt,
            negative_prompt=defaults.negative_prompt if negative_prompt is None else negative_prompt,
            replace=mode == "replace",
            clip_len=ANIMATE_DEFAULTS["clip_len"] if clip_len is None else clip_len,
            refert_num=ANIMATE_DEFAULTS["refert_num"] if refert_num is None else refert_num,
            num_inference_steps=num_inference_steps or defaults.steps,
            guidance_scale=defaults.guidance_scale if guidance_scale is None else guidance_scale,
            shift=defaults.shift if shift is None else shift,
            sampler=sampler or defaults.sampler,
            seed=seed,
            callback=callback,
            progress=progress,
            guidance=guidance,
            size=None if height is None else (height, width),
            num_frames=num_frames,
        )
        output.settings["src_root_path"] = str(Path(src_root_path).resolve())
        return output
