"""``videox-fun``: the command line. ``videox-fun generate --help`` lists every flag and default."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .argparsing import DefaultsHelpFormatter, FlagSpellingParser

if TYPE_CHECKING:
    import torch

    from .pipelines.wan import GenerationOutput, WanPipeline
    from .runtime.parallel import ParallelRuntime

logger = logging.getLogger("videox_fun")

MODES = ("t2v", "i2v", "flf2v", "v2v", "inpaint", "control", "camera")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class SampleSize(argparse.Action):
    """``--sample-size H W`` sets ``--height`` and ``--width``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: list[int],
        option_string: str | None = None,
    ) -> None:
        """Store the two values as height and width."""
        namespace.height, namespace.width = values


def add_device_arguments(group: argparse._ActionsContainer) -> None:
    """``--device`` and ``--dtype``, resolved by :func:`resolve_device_and_dtype` (every command that runs a model)."""
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    group.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)",
    )


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags, shared by ``videox-fun generate`` and the examples/ entry points."""
    from .pipelines.schedulers import SAMPLERS

    io = parser.add_argument_group("what to generate")
    io.add_argument("--prompt", help="text prompt (or use --prompts-file)")
    io.add_argument("--negative-prompt", default=None, help="negative prompt (default: the model config's)")
    io.add_argument("--prompts-file", type=Path, help="one prompt per line: generate them all in one process")
    io.add_argument("--mode", choices=MODES, help="generation mode (default: inferred from the inputs)")
    io.add_argument("--image", help="start image (i2v / flf2v, or the start frame of control / camera)")
    io.add_argument("--end-image", help="last frame (flf2v)")
    io.add_argument("--video", help="input video (v2v, inpaint)")
    io.add_argument("--mask", help="mask video or image, white = generate (inpaint)")
    io.add_argument("--control-video", help="control video, e.g. edges / depth / pose (control)")
    io.add_argument("--ref-image", help="reference image (Fun V1.1 Control)")
    io.add_argument(
        "--camera",
        help="camera trajectory file, one pose per line, or a built-in one: static, pan_{left,right,up,down,...}, "
        "zoom_{in,out}, cw, acw, orbit_{left,right} (camera)",
    )
    io.add_argument("--strength", type=float, default=0.7, help="denoise strength for v2v (default 0.7)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="model folder or name (default: the built-in tiny model for the mode)")
    model.add_argument("--config", type=Path, help="YAML model config (default: the folder's own, else civitai layout)")
    add_device_arguments(model)
    model.add_argument(
        "--attention", default="auto", help="attention backend: auto, sdpa, flash_attn, flash_attn3, sage"
    )

    sampling = parser.add_argument_group("sampling (defaults come from the model config)")
    sampling.add_argument("--height", type=int, help="height in pixels, rounded to a multiple of 16")
    sampling.add_argument("--width", type=int, help="width in pixels, rounded to a multiple of 16")
    sampling.add_argument(
        "--sample-size",
        nargs=2,
        type=int,
        metavar=("HEIGHT", "WIDTH"),
        action=SampleSize,
        help="height and width in one flag (VideoX-Fun's sample_size)",
    )
    sampling.add_argument("--frames", "--video-length", type=int, help="frame count, rounded to 4k+1")
    sampling.add_argument("--fps", type=int, help="frames per second of the written video")
    sampling.add_argument("--steps", "--num-inference-steps", type=int, help="denoising steps")
    sampling.add_argument("--guidance", "--guidance-scale", type=float, help="classifier-free guidance scale")
    sampling.add_argument(
        "--guidance-2",
        "--guidance-scale-2",
        type=float,
        help="Wan2.2 A14B: guidance of the low-noise expert (--guidance is the high-noise one's)",
    )
    sampling.add_argument("--shift", type=float, help="flow shift of the sampler")
    sampling.add_argument("--sampler", "--sampler-name", choices=SAMPLERS, help="sampler")
    sampling.add_argument("--seed", type=int, default=43, help="random seed (default 43)")

    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, help="output file (.mp4; .png for one frame)")
    out.add_argument("--output-dir", type=Path, help="output folder (default samples/{model}-videos{_i2v,_v2v,...})")
    out.add_argument("--quiet", action="store_true", help="no progress bar")

    from .runtime.options import add_runtime_arguments
    from .runtime.parallel import add_parallel_arguments

    add_runtime_arguments(parser)
    add_parallel_arguments(parser)


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


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompts file."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts-file: file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-file {path} holds no prompt")
    return prompts


def next_output_path(folder: Path, suffix: str = ".mp4") -> Path:
    """The next free numbered file name in ``folder`` (00000001.mp4, ...), as VideoX-Fun names them."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.stem) for p in folder.iterdir() if p.stem.isdigit()]
    return folder / f"{max(taken, default=0) + 1:08d}{suffix}"


def check_before_loading(args: argparse.Namespace, mode: str, num_prompts: int) -> None:
    """Fail on inputs, output names and values that cannot work, before any weights are read."""
    from .io.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES
    from .pipelines.wan import MODE_INPUTS, require_inputs
    from .runtime.options import check_runtime_options

    require_inputs(mode, {name: getattr(args, name) for name in MODE_INPUTS})
    if args.output is not None:
        if num_prompts > 1:
            raise ValueError("--output names one file; with several prompts use --output-dir")
        if args.output.suffix.lower() not in (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES):
            raise ValueError(f"--output {args.output}: use one of {', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)}")
    for name in ("steps", "frames", "height", "width", "fps", "resident_blocks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.shift is not None and args.shift <= 0:
        raise ValueError(f"--shift must be above 0 (3 for 480p, 5 for 720p), got {args.shift}")
    if not 0.0 < args.strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1] - (num_prompts - 1):
        raise ValueError(f"--seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] for every prompt, got {args.seed}")
    check_runtime_options(args)
    check_output_location(args.output, args.output_dir)


def check_output_location(output: Path | None, output_dir: Path | None, flag: str = "--output") -> None:
    """Fail now, not after the work, when the result could not be written where asked."""
    if output is not None:
        if output.is_dir():
            raise ValueError(f"{flag} {output} is a folder: name a file")
        check_writable_folder(output.parent, f"{flag} {output}")
    if output_dir is not None:
        check_writable_folder(output_dir, f"--output-dir {output_dir}")
    if output is None and output_dir is None:
        check_writable_folder(Path("samples"), "the default output folder samples/")


def check_writable_folder(folder: Path, flag: str) -> None:
    """``folder`` exists as a writable folder or can be created: its nearest existing ancestor is one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: no permission to write in {existing}")


def run_generate(args: argparse.Namespace) -> list[Path]:
    """Load the model once and write one video per prompt; returns the written paths."""
    from .models.attention import set_attention_backend
    from .pipelines.wan import OUTPUT_SUFFIX, infer_mode
    from .runtime.parallel import init_parallel

    if not args.prompt and not args.prompts_file:
        raise ValueError("give --prompt or --prompts-file")
    prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
    mode = args.mode or infer_mode(vars(args))
    check_before_loading(args, mode, len(prompts))  # user mistakes fail in seconds, not after a 14B load
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    set_attention_backend(args.attention)
    runtime = init_parallel(args)  # every rank, before loading: the degrees must fill the world (torchrun)
    device = runtime.device if runtime.distributed else device

    started = time.perf_counter()
    pipe, folder, applied = load_pipeline(args, mode, runtime, device, dtype)
    defaults = pipe.config.defaults
    out_dir = args.output_dir or Path("samples") / f"{folder.name}-{OUTPUT_SUFFIX[mode]}"
    fps = args.fps or defaults.fps
    written = []
    for i, prompt in enumerate(prompts):
        result = generate_one(pipe, args, mode, prompt, args.seed + i, runtime)
        if not runtime.is_main:
            continue  # every rank generates (and holds the same video); rank 0 writes it
        target = args.output if (args.output and len(prompts) == 1) else next_output_path(out_dir)
        sidecar = {"prompt": prompt, "model": folder.name, "fps": fps, **result.settings, **applied}
        written.append(write_result(result.frames, target, fps, sidecar, args))
    logger.info("generated %d video(s) in %.1f s", len(written), time.perf_counter() - started)
    return written


def load_pipeline(
    args: argparse.Namespace, mode: str, runtime: ParallelRuntime, device: torch.device, dtype: torch.dtype
) -> tuple[WanPipeline, Path, dict]:
    """The pipeline of ``--model`` with every flag applied: weights, parallelism, then the runtime hooks.

    Returns the pipeline, its folder and what was applied (for the sidecar).
    """
    from .config import config_for_folder
    from .pipelines.wan import WanPipeline
    from .registry import resolve_model
    from .runtime.options import apply_runtime_options, apply_weight_options
    from .runtime.parallel import setup_parallel

    folder = resolve_model(args.model, mode)
    config = config_for_folder(folder, args.config)
    if config.note and runtime.is_main:
        print(f"note: model {folder.name}: {config.note}")
    # FSDP and the offload modes move weights to the GPU themselves: loading there first could not fit.
    offloaded = runtime.shards_weights or not args.gpu_memory_mode.startswith("model_full_load")
    pipe = WanPipeline.from_pretrained(folder, config=config, device="cpu" if offloaded else device, dtype=dtype)
    pipe.device = device
    applied = apply_weight_options(pipe, args)  # --transformer-path, LoRA merges: on whole, plain weights
    setup_parallel(args, pipe, runtime)  # sequence parallelism / FSDP, when asked for
    applied |= apply_runtime_options(pipe, args, folder)  # memory mode, fp8, step cache, compile, RIFLEx
    return pipe, folder, applied


def generate_one(
    pipe: WanPipeline, args: argparse.Namespace, mode: str, prompt: str, seed: int, runtime: ParallelRuntime
) -> GenerationOutput:
    """One video of ``prompt`` with the flags' inputs and settings (None: the model config's default)."""
    from .pipelines.wan import INPUT_NAMES

    defaults = pipe.config.defaults
    guidance = runtime.guidance(
        args.guidance if args.guidance is not None else defaults.guidance_scale,
        skip_ratio=args.cfg_skip_ratio,
        batched=not args.cfg_sequential,
    )
    return pipe(
        prompt,
        negative_prompt=args.negative_prompt,
        mode=mode,
        **{name: getattr(args, name) for name in INPUT_NAMES},
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_scale_2=args.guidance_2,
        shift=args.shift,
        sampler=args.sampler,
        seed=seed,
        strength=args.strength,
        progress=not args.quiet and runtime.is_main,
        guidance=guidance,
    )


def write_result(frames: torch.Tensor, target: Path, fps: int, sidecar: dict, args: argparse.Namespace) -> Path:
    """Write the video (or image) and its sidecar JSON, which also names the input files; returns the path."""
    from .io.camera import is_trajectory_name
    from .io.files import atomic_path
    from .io.video import write_video
    from .pipelines.wan import INPUT_NAMES

    path = write_video(frames, target, fps=fps)
    for name in INPUT_NAMES:
        value = getattr(args, name)
        if value:  # the evaluator compares against these (first-frame PSNR, tracks)
            sidecar[name] = value if name == "camera" and is_trajectory_name(value) else str(Path(value).resolve())
    with atomic_path(path.with_suffix(".json")) as temporary:  # the evaluator must never read half a sidecar
        temporary.write_text(json.dumps(sidecar, indent=2))
    count = frames.shape[0]
    print(f"wrote {path} ({count} frame{'s' if count != 1 else ''}, {frames.shape[2]}x{frames.shape[1]})")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The ``videox-fun`` argument parser with its subcommands."""
    parser = FlagSpellingParser(prog="videox-fun", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate videos", formatter_class=DefaultsHelpFormatter)
    add_generate_arguments(generate)
    generate.set_defaults(handler=run_generate)
    from .benchmarks.cli import add_bench_command
    from .runtime.options import add_calibrate_command
    from .toyworld.cli import add_toyworld_commands

    add_calibrate_command(commands)
    add_bench_command(commands)

    add_toyworld_commands(commands)
    from .training.cli import add_train_commands

    add_train_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``videox-fun`` console script."""
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command; user mistakes (missing files, bad values) print one line and return 2."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        args.handler(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        print(f"error: out of memory ({str(err).splitlines()[0]}): try a smaller size or fewer frames, or a "
              "--gpu-memory-mode that offloads", file=sys.stderr)  # fmt: skip
        return 2
    return 0


# Mistakes in what the user asked for: one line, exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is an allocation failure (torch.OutOfMemoryError on a GPU, the CPU allocator's)."""
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text


def example_main(*modes: str) -> None:
    """Entry of the thin ``examples/*/predict_*.py`` scripts: ``generate`` limited to the script's modes.

    Flags after the script name are those of ``videox-fun generate``. Without ``--mode`` the mode
    is inferred from the inputs when it is one of ``modes`` (a v2v script given ``--mask``
    inpaints), else the first of ``modes``.
    """
    from .pipelines.wan import infer_mode

    parser = build_parser()
    args = parser.parse_args(["generate", *sys.argv[1:]])
    if args.mode is None:
        inferred = infer_mode(vars(args))
        if inferred not in modes and inferred != "t2v":
            script, served = Path(sys.argv[0]).name, ", ".join(modes)
            sys.exit(f"error: {script} serves {served}; these inputs ask for {inferred} (--mode {inferred})")
        args.mode = inferred if inferred in modes else modes[0]
    sys.exit(run_parsed(args))


if __name__ == "__main__":
    sys.exit(main())
