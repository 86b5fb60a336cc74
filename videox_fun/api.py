"""The programmatic entry that every face calls: typed options and requests, one loader, one writer.

The CLI, the REST API, the web UI and the ComfyUI nodes all build a :class:`RuntimeOptions`
(how to load and run) and :class:`GenerationRequest` s (what to generate), call
:func:`load_pipeline`, then :meth:`LoadedPipeline.generate` and :func:`write_result`. The
checks of user input and the output sidecar live here once. Nothing here knows a family: the
family layer (:mod:`videox_fun.families`) says what a model folder serves.

>>> loaded = load_pipeline("Wan2.1-Fun-Tiny-InP", RuntimeOptions(device="cpu"))
>>> result = loaded.generate(GenerationRequest(prompt="a red circle moving right"))
>>> write_result(result, Path("out.mp4"))
>>> loaded.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .families import (
    INPUT_NAMES,
    Mode,
    Recognised,
    infer_mode,
    merged_mode_table,
    mode_for_settings,
    recognise,
    require_inputs,
)
from .io.files import check_output_location, check_output_target, printable
from .io.inputs import check_input_file
from .runtime.options import RuntimeOptions

if TYPE_CHECKING:
    import torch

    from .families import Pipeline
    from .runtime.parallel import ParallelRuntime

logger = logging.getLogger("videox_fun")

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class CancelledError(Exception):
    """A generation stopped at a step boundary because its cancel event was set."""


class NonFiniteLatentsError(ValueError):
    """The latents turned NaN or infinite during sampling: the video would be black, so none is written."""


class OutputWriteError(Exception):
    """The result could not be written (a full disk, a file-size limit, an I/O error); nothing half-written is left."""


# Hard limits of what one generation may ask for, checked before anything is allocated. Far past every released
# checkpoint's trained sizes (Wan2.2: 1280x720, 121 frames; CogVideoX1.5: 1360x768, 161 frames) and RIFLEx's
# extension of them; a run past them would not finish in any useful time. Longer videos go in windows.
MAX_SIDE = 8192  # pixels of height or width
MAX_WINDOW_FRAMES = 1025  # frames generated at once (one window of --partial-video-length)
MAX_STEPS = 1000  # the samplers' schedules have 1000 training timesteps: more steps would repeat them
MAX_FPS = 1000  # the video's frame rate, as a container can store it
# The flags of the request's float settings, for messages.
FLOAT_FLAGS = {"guidance_scale": "--guidance", "guidance_scale_2": "--guidance-2", "shift": "--shift",
               "strength": "--strength"}  # fmt: skip


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is an allocation failure (torch.OutOfMemoryError on a GPU, the CPU allocator's)."""
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text


@dataclass
class GenerationRequest:
    """What to generate: the prompt, the input media by name, and the sampling settings.

    Settings left as None take the model's defaults; ``mode`` None is inferred from the inputs.
    ``extra`` carries settings only some modes read, as the family declares them (``Family.settings``: checked
    before loading, passed to its pipeline by keyword), e.g. ``{"src_root_path": folder}`` for Wan2.2-Animate.
    """

    prompt: str
    negative_prompt: str | None = None
    mode: str | None = None
    image: Any = None
    end_image: Any = None
    video: Any = None
    mask: Any = None
    control_video: Any = None
    ref_image: Any = None
    camera: Any = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    shift: float | None = None
    sampler: str | None = None
    seed: int = 43
    strength: float = 0.7
    fps: int | None = None
    # Long videos (VideoX-Fun's names): windows of this many frames, overlapping by overlap_video_length,
    # on a model that serves inpaint; None = one window of num_frames.
    partial_video_length: int | None = None
    overlap_video_length: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> dict[str, Any]:
        """Every input medium by name (None where not given)."""
        return {name: getattr(self, name) for name in INPUT_NAMES}

    def check_values(self, prompts: int = 1) -> None:
        """Fail on values that cannot work: text that is not UTF-8, below 1, past the size limits, a shift of 0,
        a strength or seed out of range, NaN."""
        check_text("--prompt", self.prompt)
        if self.negative_prompt is not None:
            check_text("--negative-prompt", self.negative_prompt)
        for name in ("steps", "num_frames", "height", "width", "fps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = {"num_frames": "frames"}.get(name, name)
                raise ValueError(f"--{flag} must be at least 1, got {value}")
        for name, flag in FLOAT_FLAGS.items():
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{flag} must be a finite number, got {value}")
        self.check_size_limits()
        if self.partial_video_length is not None and self.partial_video_length < 2:
            raise ValueError(f"--partial-video-length must be at least 2, got {self.partial_video_length}")
        if self.shift is not None and self.shift <= 0:
            raise ValueError(f"--shift must be above 0 (3 for 480p, 5 for 720p), got {self.shift}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"--strength must be in (0, 1], got {self.strength}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1] - (prompts - 1):
            raise ValueError(f"--seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] for every prompt, got {self.seed}")

    def check_size_limits(self) -> None:
        """Fail on sizes past :data:`MAX_SIDE`, frame counts past :data:`MAX_WINDOW_FRAMES` in one window, and
        steps or a frame rate past :data:`MAX_STEPS` / :data:`MAX_FPS`."""
        for name, limit in (("steps", MAX_STEPS), ("fps", MAX_FPS)):
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ValueError(f"--{name} {value}: at most {limit}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value > MAX_SIDE:
                raise ValueError(f"--{name} {value}: at most {MAX_SIDE} pixels (a run this size would not finish)")
        window = self.partial_video_length if is_long(self) else self.num_frames
        if window is not None and window > MAX_WINDOW_FRAMES:
            flag = "--partial-video-length" if is_long(self) else "--frames"
            raise ValueError(
                f"{flag} {window}: at most {MAX_WINDOW_FRAMES} frames are generated at once; make a longer video "
                "in windows (--partial-video-length) on a model that inpaints"
            )


def check_text(flag: str, text: object) -> None:
    """``text`` is a str that UTF-8 can encode (a prompt the text encoder can read), else a one-line ValueError.

    Arguments holding bytes that are not UTF-8 reach Python as lone surrogates (``\\udcff`` for byte
    0xff), which the tokenizer cannot take.
    """
    if not isinstance(text, str):
        raise ValueError(f"{flag} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point U+{code:04X}"
        raise ValueError(
            f"{flag} is not valid UTF-8 text ({what} at character {err.start + 1}): give it in UTF-8"
        ) from None


@dataclass
class GenerationResult:
    """Frames uint8 (F, H, W, 3), the final latents, and the sidecar record of how they were made."""

    frames: torch.Tensor
    latents: torch.Tensor
    sidecar: dict[str, Any]
    mode: Mode
    fps: int


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Turn ``auto`` into the best device here and the dtype that suits it."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch sees no CUDA GPU (use --device cpu, or a CUDA build of torch)")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype == "float16" and device == "cpu":
        logger.warning("float16 on a CPU runs several times slower than float32 (the CPU default)")
    return torch.device(device), getattr(torch, dtype)


def resolve_folder(model: str | Path | None, mode: str | None = None) -> Path:
    """The folder of a model by path or name; without one, the built-in model for ``mode``."""
    from .registry import resolve_model

    return resolve_model(model, mode)


def choose_mode(recognised: Recognised, request: GenerationRequest) -> str:
    """The request's mode (inferred from its settings or inputs when None), checked against what the model serves."""
    table = recognised.family.modes
    mode = request.mode or mode_for_settings(request.extra) or infer_mode(recognised.mode_table(), request.inputs())
    if mode not in table:
        raise ValueError(f"mode {mode!r} is not one of the {recognised.family.name} family's ({', '.join(table)})")
    if mode not in recognised.modes:
        raise ValueError(
            f"mode {mode!r} needs {recognised.family.needs_for_mode(mode)}; the loaded model is of the "
            f"{recognised.variant} variant, serving {', '.join(recognised.modes)}"
        )
    return mode


def check_request(recognised: Recognised, request: GenerationRequest, prompts: int = 1) -> str:
    """Every check of a request that needs no weights: values, mode, inputs (exist and decode), the family's own
    settings (``extra``); returns the mode."""
    request.check_values(prompts)
    mode = check_long_video(recognised, request) if is_long(request) else check_mode_and_inputs(recognised, request)
    recognised.family.check_settings(mode, request.extra)
    return mode


def check_mode_and_inputs(recognised: Recognised, request: GenerationRequest) -> str:
    """The frame limit, the mode and its inputs of a request of one window; returns the mode."""
    limit = recognised.sizes.max_frames
    if request.num_frames is not None and limit is not None and request.num_frames > limit:
        raise ValueError(
            f"--frames {request.num_frames}: {recognised.variant} models take at most {limit} frames "
            f"({recognised.sizes.frame_rule()}); generate at most {limit}"
        )
    mode = choose_mode(recognised, request)
    # The modes this model serves: a suggestion of another mode must be one that it can run.
    require_inputs(
        recognised.mode_table(),
        mode,
        request.inputs(),
        check_file=check_input_file,
        family_table=recognised.family.modes,
    )
    recognised.family.check_inputs(recognised, mode, request.inputs())  # how many pictures an edit reads
    return mode


def is_long(request: GenerationRequest) -> bool:
    """Whether a request asks for more frames than one window (``partial_video_length``)."""
    partial = request.partial_video_length
    return partial is not None and request.num_frames is not None and request.num_frames > partial


def check_long_video(recognised: Recognised, request: GenerationRequest) -> str:
    """A long video is t2v or i2v, in windows on a model that inpaints, each window within its limit."""
    given = {name for name, value in request.inputs().items() if value is not None}
    if not given <= {"image"} or request.mode not in (None, "t2v", "i2v"):
        raise ValueError("long videos (--partial-video-length) are made from text or a start image (t2v / i2v)")
    if "inpaint" not in recognised.modes:
        raise ValueError(
            f"long videos continue each window by inpainting: they need {recognised.family.needs_for_mode('inpaint')}"
            f" (the loaded model is of the {recognised.variant} variant)"
        )
    limit, partial = recognised.sizes.max_frames, request.partial_video_length
    if limit is not None and partial is not None and partial > limit:
        raise ValueError(f"--partial-video-length {partial}: {recognised.variant} models take at most {limit} frames")
    for name, value in request.inputs().items():
        if value is not None:
            check_input_file(name, value)
    return "i2v" if "image" in given else "t2v"


# Bytes a generation needs besides the weights, per unit of its size: a lower bound, so what is refused surely
# cannot run. The decoded video is float32 twice (the decoder's output and its clamped copy) and uint8 once; the
# VAE decoder's full-resolution stage holds one chunk of frames (frame_factor of them) of at least 64 channels, in
# input, output and residual; each token carries its latents, their guided velocities and a hidden state of at
# least 128 channels in float32 through a block.
BYTES_PER_DECODED_VALUE = 4 + 4 + 1
BYTES_PER_DECODER_PIXEL = 64 * 4 * 3
BYTES_PER_TOKEN = 128 * 4 * 8


def resolved_size(recognised: Recognised, request: GenerationRequest) -> tuple[int, int, int]:
    """(height, width, frames) a request generates: the model's defaults for what is None, size-corrected."""
    defaults, sizes = recognised.defaults, recognised.sizes
    height = sizes.valid_size(request.height if request.height is not None else defaults.height)
    width = sizes.valid_size(request.width if request.width is not None else defaults.width)
    frames = sizes.valid_frame_count(request.num_frames if request.num_frames is not None else defaults.num_frames)
    return height, width, frames


def estimate_memory(recognised: Recognised, request: GenerationRequest) -> tuple[int, int]:
    """(bytes, tokens per step): a lower bound of the memory a request needs beside the weights.

    From the latent token count of one window (``frames -> (frames-1)/frame_factor + 1`` latent
    frames of ``(height/multiple) x (width/multiple)`` patches) and the pixels of the whole video.
    """
    height, width, frames = resolved_size(recognised, request)
    sizes = recognised.sizes
    window = min(frames, request.partial_video_length) if is_long(request) else frames
    latent_frames = (window - 1) // sizes.frame_factor + 1
    tokens = latent_frames * -(-height // sizes.multiple) * -(-width // sizes.multiple)
    video = frames * height * width * 3 * BYTES_PER_DECODED_VALUE
    decoder = min(sizes.frame_factor, window) * height * width * BYTES_PER_DECODER_PIXEL
    return video + decoder + tokens * BYTES_PER_TOKEN, tokens


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a generation on ``device`` now: the GPU's free memory, or the RAM the OS can give; None if
    unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits_memory(recognised: Recognised, request: GenerationRequest, device: torch.device) -> None:
    """Refuse a request whose :func:`estimate_memory` is more than ``device`` has free, before any allocation."""
    needed, tokens = estimate_memory(recognised, request)
    free = available_memory(device)
    if free is None or needed <= free:
        return
    height, width, frames = resolved_size(recognised, request)
    gib = 2**30
    raise ValueError(
        f"--height {height} --width {width} --frames {frames}: needs at least {needed / gib:.1f} GiB of memory "
        f"beside the weights (estimated from {tokens:,} tokens a step and {frames}x{height}x{width} decoded pixels), "
        f"more than the {free / gib:.1f} GiB free on {device}: generate a smaller size or fewer frames"
    )


def default_mode_for(request: GenerationRequest) -> str:
    """The mode of a request before its model is known (to choose the built-in model that serves it): its own, or
    the one its settings ask for, or the one its inputs do."""
    return request.mode or mode_for_settings(request.extra) or infer_mode(merged_mode_table(), request.inputs())


@dataclass
class LoadedPipeline:
    """A family's pipeline with the runtime features attached; :meth:`close` removes them."""

    pipe: Pipeline
    recognised: Recognised
    options: RuntimeOptions
    runtime: ParallelRuntime
    applied: dict[str, Any]  # what the options changed, recorded in every sidecar
    removers: list[Callable[[], None]] = field(default_factory=list)  # undo each attached hook, in reverse

    @property
    def folder(self) -> Path:
        """The model folder."""
        return self.recognised.folder

    def output_folder(self, mode: str) -> Path:
        """Where results of ``mode`` go by default: ``samples/{model}-{the mode's folder}``, as VideoX-Fun."""
        return Path("samples") / f"{self.folder.name}-{self.recognised.family.modes[mode].folder}"

    def generate(
        self,
        request: GenerationRequest,
        progress: bool = True,
        on_step: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """One video (or image) for ``request``.

        ``on_step(step, total)`` is called after each denoising step; setting ``cancel`` stops the
        run at the next step with :class:`CancelledError`.
        """
        mode = check_request(self.recognised, request)
        defaults = self.recognised.defaults
        guidance = self.runtime.guidance(
            request.guidance_scale if request.guidance_scale is not None else defaults.guidance_scale,
            skip_ratio=self.options.cfg_skip_ratio,
            batched=not self.options.cfg_sequential,
        )

        check_fits_memory(self.recognised, request, self.pipe.device)

        def step_done(step: int, total: int, latents: torch.Tensor) -> None:
            if not bool(latents.isfinite().all()):  # one reduction a step: cheap beside the transformer
                raise NonFiniteLatentsError(
                    f"sampling went non-finite (NaN or inf) at step {step + 1} of {total}, so no video was written; "
                    f"likely cause: {likely_non_finite_cause(request, self.options)}"
                )
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"cancelled after step {step + 1} of {total}")
            if on_step is not None:
                on_step(step + 1, total)

        if is_long(request):
            output = self._generate_long(request, guidance, step_done, progress)
        else:
            output = self._generate_one(request, mode, guidance, step_done, progress)
        fps = request.fps or defaults.fps
        sidecar = {"prompt": request.prompt, "model": self.folder.name, "fps": fps, **output.settings, **self.applied}
        sidecar.update(input_record(request.inputs()))
        return GenerationResult(output.frames, output.latents, sidecar, self.recognised.family.modes[mode], fps)

    def _generate_one(
        self,
        request: GenerationRequest,
        mode: str,
        guidance: Any,
        step_done: Callable[[int, int, torch.Tensor], None],
        progress: bool,
        **overrides: Any,
    ) -> Any:
        """One call of the family's pipeline for ``request`` (``overrides`` replace its inputs / sizes)."""
        given = {name: value for name, value in request.inputs().items() if value is not None}
        settings = {
            "negative_prompt": request.negative_prompt,
            "mode": mode,
            **given,
            "height": request.height,
            "width": request.width,
            "num_frames": request.num_frames,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "guidance_scale_2": request.guidance_scale_2,
            "shift": request.shift,
            "sampler": request.sampler,
            "seed": request.seed,
            "strength": request.strength,
            "progress": progress and self.runtime.is_main,
            "guidance": guidance,
            "callback": step_done,
            **request.extra,
        }
        merged = settings | overrides
        # Media not given are left out, so a family's pipeline need only take the inputs its modes read.
        return self.pipe(request.prompt, **{k: v for k, v in merged.items() if k not in INPUT_NAMES or v is not None})

    def _generate_long(
        self,
        request: GenerationRequest,
        guidance: Any,
        step_done: Callable[[int, int, torch.Tensor], None],
        progress: bool,
    ) -> Any:
        """Windows of ``partial_video_length`` frames, each continuing the last by inpainting."""
        from .pipelines.long_video import generate_long_video

        def window(**overrides: Any) -> Any:
            # Each window states its own mode and inputs; the request's media are the first window's only.
            blank = dict.fromkeys(INPUT_NAMES)
            mode = overrides.pop("mode")
            return self._generate_one(request, mode, guidance, step_done, progress, **blank | overrides)

        first = {"image": request.image} if request.image is not None else {}
        assert request.num_frames is not None and request.partial_video_length is not None
        return generate_long_video(
            window,
            total=request.num_frames,
            partial=request.partial_video_length,
            overlap=request.overlap_video_length,
            valid=self.recognised.sizes.valid_frame_count,
            first_inputs=first,
            seed=request.seed,
        )

    @contextlib.contextmanager
    def job_options(self, options: RuntimeOptions) -> Iterator[None]:
        """Generate with ``options``' per-job features (LoRAs, step cache, RIFLEx, CFG) inside the block.

        The pipeline must have been loaded with the same load options and none of the per-job ones
        (:meth:`RuntimeOptions.load_options`); afterwards it is as before, bit for bit, so one
        loaded model serves job after job as a fresh load would.
        """
        from .runtime.options import attach_step_features, merge_loras_restorably, run_settings

        options.check()
        if options.load_options() != self.options or self.options != self.options.load_options():
            raise ValueError("job options differ from the loaded pipeline's in more than the per-job features")
        if self.runtime.shards_weights and (options.lora_path or options.lora_high_path):
            raise ValueError("per-job LoRAs cannot be merged into FSDP-sharded weights: load them with the model")
        base_options, base_applied = self.options, self.applied
        removers: list[Callable[[], None]] = []
        try:
            applied, restore = merge_loras_restorably(self.pipe, options)
            removers.append(restore)
            applied |= attach_step_features(self.pipe, options, self.folder, removers)
            self.options = options
            self.applied = base_applied | run_settings(options) | applied
            yield
        finally:
            for remove in reversed(removers):
                remove()
            self.options, self.applied = base_options, base_applied

    def close(self) -> None:
        """Remove every hook the options attached (memory mode, step cache, RIFLEx, parallelism) and drop the models."""
        for remove in reversed(self.removers):
            remove()
        self.removers.clear()
        self.runtime.remove_hooks()
        self.pipe = None  # type: ignore[assignment]


def likely_non_finite_cause(request: GenerationRequest, options: RuntimeOptions) -> str:
    """What most likely made the latents NaN or infinite, in words naming the flags to look at."""
    causes = []
    for name in ("guidance_scale", "guidance_scale_2"):
        value = getattr(request, name)
        if value is not None and abs(value) > 50:
            causes.append(f"{FLOAT_FLAGS[name]} {value:g} (usual values are 1 to 10)")
    if request.shift is not None and not 0.01 <= request.shift <= 100:
        causes.append(f"--shift {request.shift:g} (usual values are 1 to 17)")
    weights = [abs(w) for w in (options.lora_weight or []) + (options.lora_high_weight or [])]
    if options.lora_path or options.lora_high_path:
        causes.append("a LoRA (--lora-path) or its --lora-weight" + (f" (up to {max(weights):g})" if weights else ""))
    if options.transformer_path or options.transformer_high_path:
        causes.append("the --transformer-path weights")
    return "; ".join(causes) or "the model's weights hold NaN or inf, or its dtype overflows (try --dtype float32)"


def input_record(inputs: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """The given input files by name, as absolute paths (built-in camera paths by name), for the sidecar; an input
    of several files (``ref_image``: VACE subjects, an edit's pictures) as the list of their paths, in order."""
    from .io.camera import is_trajectory_name

    def path_text(name: str, value: str | Path) -> str:
        return str(value) if name == "camera" and is_trajectory_name(str(value)) else str(Path(value).resolve())

    record: dict[str, str | list[str]] = {}
    for name, value in inputs.items():
        if isinstance(value, (str, Path)) and value:  # the evaluator compares against these
            record[name] = path_text(name, value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, Path)) and v for v in value):
            record[name] = [path_text(name, v) for v in value]
    return record


def check_options_fit(recognised: Recognised, options: RuntimeOptions) -> None:
    """Refuse, before any weight loads, runtime options the recognised model cannot take (one line)."""
    makes_images = all(mode.output == "image" for mode in recognised.family.modes.values())
    if options.riflex_k is not None and makes_images:
        raise ValueError(f"--riflex-k stretches a video model's frame axis; {recognised.folder.name} makes images "
                         "(no frame axis): leave it out")  # fmt: skip


def load_pipeline(
    model: str | Path | None,
    options: RuntimeOptions | None = None,
    mode: str | None = None,
    recognised: Recognised | None = None,
    runtime: ParallelRuntime | None = None,
) -> LoadedPipeline:
    """Load a model folder (or name) with its family's loader, then attach what ``options`` asks for.

    Order: weights (``--transformer-path``, LoRA merges), parallelism, then the runtime hooks
    (memory mode, fp8, step cache, compile, RIFLEx). ``mode`` picks the built-in model when
    ``model`` is None. ``runtime`` is the parallel runtime when the caller started it already.
    """
    from .models.attention import set_attention_backend
    from .runtime.options import apply_runtime_options, apply_weight_options
    from .runtime.parallel import init_parallel, setup_parallel

    options = options or RuntimeOptions()
    options.check()
    recognised = recognised or recognise(resolve_folder(model, mode), options.config)
    check_options_fit(recognised, options)
    device, dtype = resolve_device_and_dtype(options.device, options.dtype)
    set_attention_backend(options.attention)
    runtime = runtime or init_parallel(options)  # every rank: the degrees must fill the world (torchrun)
    device = runtime.device if runtime.distributed else device
    if recognised.note and runtime.is_main:
        print(f"note: model {recognised.folder.name}: {recognised.note}")
    # FSDP and the offload modes move weights to the GPU themselves: loading there first could not fit.
    offloaded = runtime.shards_weights or not options.gpu_memory_mode.startswith("model_full_load")
    started = time.perf_counter()
    pipe = recognised.family.load(recognised, device=device if not offloaded else _cpu(), dtype=dtype)
    pipe.device = device
    applied = apply_weight_options(pipe, options)
    setup_parallel(options, pipe, runtime)
    removers: list[Callable[[], None]] = []
    applied |= apply_runtime_options(pipe, options, recognised.folder, removers)
    logger.debug("loaded %s in %.1f s", recognised.folder, time.perf_counter() - started)
    return LoadedPipeline(pipe, recognised, options, runtime, applied, removers)


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def write_result(result: GenerationResult, target: Path, overwrite: bool = True) -> Path:
    """Write the video (or image: one frame) and its strict-JSON sidecar beside it; returns the path.

    Never through or over a symlink or a non-regular file; with ``overwrite`` False never over any
    existing file either (``FileExistsError``, even for a file that appeared while generating).
    Both files appear only complete; when one cannot be written (a full disk: :class:`OutputWriteError`)
    neither is left.
    """
    from .io.files import atomic_path
    from .io.video import write_video

    text = json.dumps(result.sidecar, indent=2, allow_nan=False)  # strict JSON (readers reject NaN), before writing
    sidecar = target.with_suffix(".json")
    for path in (target, sidecar):
        check_output_target(path, "cannot write", overwrite)
    try:
        path = write_video(result.frames, target, fps=result.fps, overwrite=overwrite)
    except FileExistsError:
        raise
    except OSError as err:
        raise OutputWriteError(f"could not write {printable(target)}: {err.strerror or err}") from err
    try:
        with atomic_path(path.with_suffix(".json"), overwrite=overwrite) as temporary:  # never half a sidecar
            temporary.write_text(text)
    except BaseException as err:
        path.unlink(missing_ok=True)  # this run's own video: without its sidecar it is half a result
        if isinstance(err, OSError) and not isinstance(err, FileExistsError):
            raise OutputWriteError(f"could not write {printable(sidecar)}: {err.strerror or err}") from err
        raise
    count = result.frames.shape[0]
    size = f"{result.frames.shape[2]}x{result.frames.shape[1]}"
    print(f"wrote {printable(path)} ({count} frame{'s' if count != 1 else ''}, {size})")
    return path


def next_output_path(folder: Path, suffix: str = ".mp4") -> Path:
    """The next free numbered file name in ``folder`` (00000001.mp4, ...), as VideoX-Fun names them.

    A number is taken when any file has it as its name's stem (a sidecar left without its video too).
    """
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.stem) for p in folder.iterdir() if p.stem.isdigit()]
    return folder / f"{max(taken, default=0) + 1:08d}{suffix}"


def write_numbered(result: GenerationResult, folder: Path) -> Path:
    """Write a result under the next free number in ``folder`` (:func:`next_output_path`), never over a file.

    A name another process takes between the choice and the write is skipped for the next one.
    """
    for _ in range(100):
        try:
            suffix = ".png" if result.mode.output == "image" else ".mp4"  # one frame of an image mode: a PNG
            return write_result(result, next_output_path(folder, suffix), overwrite=False)
        except FileExistsError:
            continue
    raise FileExistsError(f"{printable(folder)}: no free numbered name after 100 tries (other writers?)")


def options_from(mapping: Mapping[str, Any], kind: type) -> Any:
    """A :class:`RuntimeOptions` or :class:`GenerationRequest` from a mapping holding (at least) its fields."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{name: value for name, value in mapping.items() if name in names})


__all__ = [
    "CancelledError",
    "GenerationRequest",
    "GenerationResult",
    "LoadedPipeline",
    "NonFiniteLatentsError",
    "OutputWriteError",
    "RuntimeOptions",
    "check_output_location",
    "check_request",
    "load_pipeline",
    "next_output_path",
    "write_numbered",
    "write_result",
]
