"""``videox-fun``: the command line. ``videox-fun generate --help`` lists every flag and default."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .argparsing import (
    USER_ERRORS,
    DefaultsHelpFormatter,
    FlagSpellingParser,
    add_device_arguments,
    add_parallel_arguments,
    finite_float,
    single_line,
)

if TYPE_CHECKING:
    from .api import GenerationRequest, LoadedPipeline, RuntimeOptions

logger = logging.getLogger("videox_fun")


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


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags, shared by ``videox-fun generate`` and the examples/ entry points."""
    from .families import all_mode_names, all_settings, families

    samplers = tuple(dict.fromkeys(name for family in families().values() for name in family.samplers))
    io = parser.add_argument_group("what to generate")
    io.add_argument("--prompt", help="text prompt (or use --prompts-file)")
    io.add_argument("--negative-prompt", default=None, help="negative prompt (default: the model config's)")
    io.add_argument("--prompts-file", type=Path, help="one prompt per line: generate them all in one process")
    io.add_argument("--mode", choices=all_mode_names(), help="generation mode (default: inferred from the inputs)")
    io.add_argument("--image", help="start image (i2v / flf2v, or the start frame of control / camera)")
    io.add_argument("--end-image", help="last frame (flf2v)")
    io.add_argument("--video", help="input video (v2v, inpaint)")
    io.add_argument("--mask", help="mask video or image, white = generate (inpaint)")
    io.add_argument("--control-video", help="control video, e.g. edges / depth / pose (control)")
    io.add_argument(
        "--ref-image",
        nargs="+",
        metavar="IMAGE",
        help="reference image: Fun V1.1 Control's reference frame, one or more VACE subject images, or the "
        "more pictures of an edit after --image (FLUX.2: up to 9; Qwen-Image-Edit-2509: up to 2)",
    )
    for setting in all_settings().values():  # what only some modes of a family read (GenerationRequest.extra)
        io.add_argument(setting.flag, *setting.aliases, type=setting.type, choices=setting.choices, help=setting.help)
    io.add_argument(
        "--camera",
        help="camera trajectory file, one pose per line, or a built-in one: static, pan_{left,right,up,down,...}, "
        "zoom_{in,out}, cw, acw, orbit_{left,right} (camera)",
    )
    io.add_argument("--strength", type=finite_float, default=0.7, help="denoise strength for v2v (default 0.7)")

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
    sampling.add_argument(
        "--frames", "--video-length", type=int, help="frame count, rounded to the model's rule (4k+1 for Wan)"
    )
    sampling.add_argument("--fps", type=int, help="frames per second of the written video")
    sampling.add_argument("--steps", "--num-inference-steps", type=int, help="denoising steps")
    sampling.add_argument("--guidance", "--guidance-scale", type=finite_float, help="classifier-free guidance scale")
    sampling.add_argument(
        "--guidance-2",
        "--guidance-scale-2",
        type=finite_float,
        help="Wan2.2 A14B: guidance of the low-noise expert (--guidance is the high-noise one's)",
    )
    sampling.add_argument("--shift", type=finite_float, help="flow shift of the sampler")
    sampling.add_argument(
        "--sampler",
        "--sampler-name",
        choices=samplers,
        help="sampler (the model family's: Flow* for Wan, DDIM_Origin... for CogVideoX)",
    )
    sampling.add_argument("--seed", type=int, default=43, help="random seed (default 43)")
    sampling.add_argument(
        "--partial-video-length",
        type=int,
        help="long videos on InP models: generate --frames in windows of this many frames, each continuing the "
        "last by inpainting (VideoX-Fun's partial_video_length)",
    )
    sampling.add_argument(
        "--overlap-video-length",
        type=int,
        default=4,
        help="frames shared (and cross-faded) by consecutive windows of a long video (default 4)",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, help="output file (.mp4; .png for one frame)")
    out.add_argument("--output-dir", type=Path, help="output folder (default samples/{model}-videos{_i2v,_v2v,...})")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output file and its .json sidecar (never a symlink or a non-regular file); "
        "without it a run refuses to start rather than replace a file it did not write",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")

    add_runtime_arguments(parser)
    add_parallel_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Memory mode, fp8, step cache, CFG, compile and RIFLEx flags."""
    from .runtime.offload import MEMORY_MODES
    from .runtime.options import CACHES, DEFAULT_SKIP_START_STEPS, TEACACHE_INDICATORS

    group = parser.add_argument_group("speed and memory")
    group.add_argument(
        "--gpu-memory-mode",
        choices=MEMORY_MODES,
        default="model_full_load",
        help="where weights live while generating (default model_full_load)",
    )
    group.add_argument(
        "--resident-blocks",
        type=int,
        default=4,
        help="model_group_offload: transformer blocks kept on the GPU (default 4)",
    )
    group.add_argument(
        "--fp8",
        choices=("plain", "scaled"),
        default="plain",
        help="fp8 kind of the *_qfloat8 modes: plain cast or per-channel scaled (default plain)",
    )
    group.add_argument(
        "--transformer-path",
        type=Path,
        help="load the transformer weights from this file or (sharded) folder: original, ComfyUI (fp8_scaled "
        "too) or diffusers names; the low-noise expert's on Wan2.2 A14B",
    )
    group.add_argument(
        "--transformer-high-path",
        type=Path,
        help="Wan2.2 A14B: the high-noise expert's weights from this file or folder",
    )
    lora = parser.add_argument_group("LoRA (merged into the transformer before offload and fp8)")
    lora.add_argument(
        "--lora-path",
        action="append",
        help="LoRA .safetensors (ours, ComfyUI, diffusers or VideoX-Fun/kohya keys), or a file name under "
        "models/Personalized_Model; repeat for several",
    )
    lora.add_argument(
        "--lora-weight",
        type=finite_float,
        action="append",
        help="strength of each LoRA: one for all or one per --lora-path (default 1.0)",
    )
    lora.add_argument(
        "--lora-high-path",
        action="append",
        help="Wan2.2 A14B: LoRA for the high-noise expert (--lora-path is then the low-noise one's)",
    )
    lora.add_argument(
        "--lora-high-weight", type=finite_float, action="append", help="strength of each --lora-high-path"
    )
    group.add_argument("--cache", choices=CACHES, default="none", help="step cache (default none)")
    group.add_argument(
        "--enable-teacache", dest="cache", action="store_const", const="teacache", help="same as --cache teacache"
    )
    group.add_argument(
        "--teacache-threshold",
        "--cache-threshold",
        dest="cache_threshold",
        type=finite_float,
        help="skip while the accumulated change stays below this (default 0.1 TeaCache, 0.05 first-block)",
    )
    group.add_argument(
        "--teacache-indicator",
        choices=TEACACHE_INDICATORS,
        help="what TeaCache compares across steps (default: the one the model's published set is fitted on: "
        "time_projection for Wan2.2 A14B, modulated_input for Qwen-Image, else time_embedding)",
    )
    group.add_argument(
        "--num-skip-start-steps",
        type=int,
        help=f"steps computed in full before caching starts (default {DEFAULT_SKIP_START_STEPS})",
    )
    group.add_argument("--cache-offload-residuals", action="store_true", help="keep cached residuals in CPU memory")
    group.add_argument(
        "--cfg-skip-ratio",
        type=finite_float,
        default=0.0,
        help="share of the last steps run without the unconditional pass (default 0)",
    )
    group.add_argument(
        "--cfg-sequential",
        action="store_true",
        help="run cond and uncond passes one after the other (less memory) instead of batched",
    )
    group.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    group.add_argument(
        "--riflex-k",
        type=int,
        help="RIFLEx: lower this frame frequency (6 for Wan2.1) to generate past the trained length",
    )


def add_calibrate_command(subparsers: argparse._SubParsersAction) -> None:
    """``videox-fun calibrate-cache``: fit TeaCache coefficients for any model from full runs."""
    from .runtime.cache import CALIBRATION_FILE
    from .runtime.options import TEACACHE_INDICATORS

    parser = subparsers.add_parser(
        "calibrate-cache",
        help="fit TeaCache coefficients for a model from a few uncached runs",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--model", help="model folder or name (default: the built-in tiny model)")
    parser.add_argument("--prompts-file", type=Path, help="prompts to run (default: a few built in)")
    parser.add_argument(
        "--control-video", help="control video for the runs (models that serve control but not t2v need one)"
    )
    parser.add_argument("--image", help="start image for the runs (i2v calibration of an InP / I2V model)")
    add_device_arguments(parser)
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--height", type=int, help="height of the runs (default: the model's); fit at the size you use")
    parser.add_argument("--width", type=int, help="width of the runs (default: the model's)")
    parser.add_argument("--frames", type=int, help="frame count of the runs (default: the model's)")
    parser.add_argument(
        "--indicator",
        choices=TEACACHE_INDICATORS,
        help="what the change is measured on (default: what generate uses: time_projection for Wan2.2 A14B "
        "experts, modulated_input for Qwen-Image, else time_embedding)",
    )
    parser.add_argument("--degree", type=int, default=4, help="polynomial degree")
    parser.add_argument("--out", type=Path, help=f"output JSON (default MODEL/{CALIBRATION_FILE})")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> Path:
    """``videox-fun calibrate-cache``: :func:`videox_fun.runtime.calibrate.calibrate_cache` with the flags."""
    from .io.files import read_prompts
    from .runtime.calibrate import calibrate_cache

    return calibrate_cache(
        args.model,
        prompts=read_prompts(args.prompts_file) if args.prompts_file else None,
        steps=args.steps,
        indicator=args.indicator,
        degree=args.degree,
        out=args.out,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        image=args.image,
        control_video=args.control_video,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The :class:`~videox_fun.api.RuntimeOptions` the flags ask for."""
    from .api import RuntimeOptions, options_from

    values = vars(args) | {"lora_path": args.lora_path or [], "lora_high_path": args.lora_high_path or []}
    return options_from(values, RuntimeOptions)


def generation_request(args: argparse.Namespace, prompt: str, seed: int) -> GenerationRequest:
    """The :class:`~videox_fun.api.GenerationRequest` of one prompt with the flags' inputs and settings."""
    from .api import GenerationRequest, options_from
    from .families import all_settings

    renamed = {"num_frames": args.frames, "steps": args.steps, "guidance_scale": args.guidance}
    references = args.ref_image
    # several: VACE subjects, an edit's pictures
    renamed["ref_image"] = references[0] if references and len(references) == 1 else references
    renamed["extra"] = {name: getattr(args, name) for name in all_settings() if getattr(args, name, None) is not None}
    return options_from(vars(args) | renamed | {"prompt": prompt, "seed": seed, "guidance_scale_2": args.guidance_2},
                        GenerationRequest)  # fmt: skip


def check_output_flags(args: argparse.Namespace, num_prompts: int) -> None:
    """``--output`` names one file of a known kind that the run may write (with its sidecar), and every output
    location can be written."""
    from .io.files import check_output_location, check_output_target, printable
    from .io.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if args.output is not None:
        if num_prompts > 1:
            raise ValueError("--output names one file; with several prompts use --output-dir")
        if args.output.suffix.lower() not in (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES):
            raise ValueError(
                f"--output {printable(args.output)}: use one of {', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)}"
            )
    check_output_location(args.output, args.output_dir)
    if args.output is not None:  # never replace a file the run did not write: the video's name or its sidecar's
        check_output_target(args.output, "--output", args.overwrite)
        check_output_target(args.output.with_suffix(".json"), "--output (its .json sidecar)", args.overwrite)
    elif args.overwrite:
        raise ValueError("--overwrite is for --output; numbered outputs always take a free name")


def read_prompt_flags(args: argparse.Namespace) -> list[str]:
    """The prompts to generate: ``--prompt`` or the lines of ``--prompts-file`` (exactly one of them, not blank)."""
    from .io.files import read_prompts

    if args.prompt is not None and args.prompts_file is not None:
        raise ValueError("--prompt and --prompts-file together: give one (a prompts file holds one prompt a line)")
    if args.prompts_file is not None:
        return read_prompts(args.prompts_file)
    if args.prompt is None:
        raise ValueError("give --prompt or --prompts-file")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty: give the text of the video to generate")
    return [args.prompt]


def run_generate(args: argparse.Namespace) -> list[Path]:
    """Load the model once and write one video per prompt; returns the written paths.

    Every check that needs no weights runs first (values, the model's layout, the mode and its
    inputs, output locations), so a mistake fails in seconds, not after a 14B load.
    """
    from .api import (
        check_fits_memory,
        check_request,
        default_mode_for,
        load_pipeline,
        resolve_device_and_dtype,
        resolve_folder,
    )
    from .families import recognise
    from .io.inputs import check_input_file

    prompts = read_prompt_flags(args)
    options = runtime_options(args)
    first = generation_request(args, prompts[0], args.seed)
    first.check_values(len(prompts))
    options.check()
    check_output_flags(args, len(prompts))
    for name, value in first.inputs().items():
        if value is not None:
            check_input_file(name, value)  # an undecodable input fails before even the model is looked up
    recognised = recognise(resolve_folder(args.model, default_mode_for(first)), options.config)
    mode = check_request(recognised, first, len(prompts))
    check_fits_memory(recognised, first, resolve_device_and_dtype(options.device, options.dtype)[0])

    started = time.perf_counter()
    with interrupt_event() as interrupted:
        loaded = load_pipeline(None, options, recognised=recognised)
        out_dir = args.output_dir or loaded.output_folder(mode)
        return generate_all(args, loaded, prompts, out_dir, interrupted, started)


def generate_all(
    args: argparse.Namespace,
    loaded: LoadedPipeline,
    prompts: list[str],
    out_dir: Path,
    interrupted: threading.Event,
    started: float,
) -> list[Path]:
    """Generate and write each prompt's video with the loaded pipeline; stop at a step once ``interrupted`` is set."""
    from .api import write_numbered, write_result

    written = []
    for i, prompt in enumerate(prompts):
        request = generation_request(args, prompt, args.seed + i)
        result = loaded.generate(request, progress=not args.quiet, cancel=interrupted)
        if interrupted.is_set():  # Ctrl-C came after the last step (and its KeyboardInterrupt was lost)
            raise KeyboardInterrupt
        if not loaded.runtime.is_main:
            continue  # every rank generates (and holds the same video); rank 0 writes it
        if args.output is not None:
            written.append(write_result(result, args.output, overwrite=args.overwrite))
        else:
            written.append(write_numbered(result, out_dir))
    logger.info("generated %d video(s) in %.1f s", len(written), time.perf_counter() - started)
    return written


@contextlib.contextmanager
def interrupt_event() -> Iterator[threading.Event]:
    """An event that Ctrl-C (SIGINT) sets while the block runs, besides raising KeyboardInterrupt as usual.

    Python drops a KeyboardInterrupt raised inside a finalizer (``__del__``, common while large
    libraries import and load), and the run would go on to the end; the event outlives it, so the
    generation stops at its next step (``cancel``) all the same. Such a dropped interrupt is not
    reported either: the event stands for it. Outside the main thread (signals cannot be caught
    there), or where SIGINT is ignored, the event is never set.
    """
    interrupted = threading.Event()
    # A background job started with SIGINT ignored (nohup, `cmd &` in a script) stays so.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield interrupted
        return

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if not (interrupted.is_set() and isinstance(report.exc_value, KeyboardInterrupt)):
            previous_hook(report)

    previous_handler, previous_hook = signal.signal(signal.SIGINT, on_sigint), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook


def build_parser() -> argparse.ArgumentParser:
    """The ``videox-fun`` argument parser with its subcommands."""
    parser = FlagSpellingParser(prog="videox-fun", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate videos", formatter_class=DefaultsHelpFormatter)
    add_generate_arguments(generate)
    generate.set_defaults(handler=run_generate)
    from .benchmarks.cli import add_bench_command
    from .serve.cli import add_serve_command
    from .toyworld.cli import add_toyworld_commands
    from .ui.cli import add_ui_command

    add_calibrate_command(commands)
    add_bench_command(commands)
    add_serve_command(commands)
    add_ui_command(commands)

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
    from .api import CancelledError, OutputWriteError

    try:
        args.handler(args)
    except USER_ERRORS as err:
        print(f"error: {single_line(str(err))}", file=sys.stderr)
        return 2
    except OutputWriteError as err:  # the disk, not the arguments: exit 1
        print(f"error: {single_line(str(err))}; nothing was left half-written", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, CancelledError):  # CancelledError: the step after a dropped KeyboardInterrupt
        # A KeyboardInterrupt that ended a string exec (dataclasses build their methods so, while libraries
        # import) sets CPython's "unhandled KeyboardInterrupt" flag even once caught, and `python -m` then
        # ends by SIGINT instead of this exit code; a string exec that ends normally clears the flag.
        exec("pass")
        print("error: interrupted (Ctrl-C); nothing was left half-written", file=sys.stderr)
        return 130  # what a shell reports for a process ended by SIGINT
    except (MemoryError, RuntimeError) as err:
        from .api import is_out_of_memory

        if not is_out_of_memory(err):
            raise
        print(f"error: out of memory ({str(err).splitlines()[0]}): try a smaller size or fewer frames, or a "
              "--gpu-memory-mode that offloads", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def example_main(*modes: str) -> None:
    """Entry of the thin ``examples/*/predict_*.py`` scripts: ``generate`` limited to the script's modes.

    Flags after the script name are those of ``videox-fun generate``. Without ``--mode`` the mode
    is inferred from the inputs when it is one of ``modes`` (a v2v script given ``--mask``
    inpaints), else the first of ``modes``.
    """
    from .api import default_mode_for

    parser = build_parser()
    args = parser.parse_args(["generate", *sys.argv[1:]])
    if args.mode is None:
        inferred = default_mode_for(generation_request(args, args.prompt or "", args.seed))
        if inferred not in modes and inferred != "t2v":
            script, served = Path(sys.argv[0]).name, ", ".join(modes)
            sys.exit(f"error: {script} serves {served}; these inputs ask for {inferred} (--mode {inferred})")
        args.mode = inferred if inferred in modes else modes[0]
    sys.exit(run_parsed(args))


if __name__ == "__main__":
    sys.exit(main())
