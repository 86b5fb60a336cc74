"""``videox-fun bench NAME``: run one benchmark and write its JSON (and plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..argparsing import DefaultsHelpFormatter, non_negative_int, positive_int

BENCHMARKS = (
    "transformer",
    "cogvideox",
    "images",
    "streams",
    "pipeline",
    "vae",
    "fp8",
    "cache",
    "memory",
    "startup",
    "serve",
)


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    parser = subparsers.add_parser(
        "bench", help="side-by-side benchmarks, JSON out", formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("name", choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/NAME_<device>.json)")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed rounds (transformer, cogvideox, images, streams, pipeline, vae, startup)",
    )
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    parser.add_argument("--model", help="model for cache / memory (default: the built-in tiny model)")
    parser.add_argument("--prompts", type=positive_int, default=8, help="cache: prompts per threshold")
    parser.add_argument(
        "--skip-start", type=non_negative_int, default=1, help="cache: steps always computed at the start"
    )
    parser.add_argument("--no-eval", action="store_true", help="cache: skip the toy-world evaluation")
    parser.add_argument("--plot", type=Path, help="cache: PNG of speed-up vs PSNR")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> dict:
    """Dispatch to the benchmark module and write the result."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from ..io.files import check_output_location
    from . import cache, cogvideox, fp8, memory, pipeline, startup, transformer, vae
    from .common import write_json

    device = "gpu" if torch.cuda.is_available() else "cpu"
    out = args.out or Path("benchmarks/results") / f"{args.name}_{device}.json"
    check_output_location(out, None, "--out")  # before the benchmark, not after it
    if args.plot is not None:
        check_output_location(args.plot, None, "--plot")
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # its fp32-module notes on dtype casts are not ours to fix here
    if args.name == "transformer":
        result = transformer.run(args.repeats)
    elif args.name == "cogvideox":
        result = cogvideox.run(args.repeats)
    elif args.name == "images":
        from . import images

        result = images.run(args.repeats)
    elif args.name == "streams":
        from . import streams

        result = streams.run(args.repeats)
    elif args.name == "pipeline":
        result = pipeline.run(args.repeats)
    elif args.name == "vae":
        result = vae.run(args.repeats)
    elif args.name == "fp8":
        result = fp8.run()
    elif args.name == "cache":
        result = cache.run(args.model, args.prompts, args.skip_start, evaluate=not args.no_eval)
    elif args.name == "startup":
        result = startup.run(args.repeats)
    elif args.name == "serve":
        from . import serve

        result = serve.run(args.repeats, threads=args.threads or 1)
    else:
        result = memory.run(args.model)
    write_json(result, out)
    if result.get("failed"):  # after the JSON: what the other cases measured is kept, the exit status still fails
        raise SystemExit(f"bench {args.name}: failed cases: {', '.join(result['failed'])} (errors in {out})")
    if args.name == "cache" and args.plot:  # after the JSON: a missing plotting library loses nothing
        cache.plot(result, args.plot)
    return result
