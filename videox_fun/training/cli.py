"""``videox-fun train``, ``cache`` and ``teacher-pairs``: the training commands of the CLI.

Both take ``--config FILE`` (a training YAML holding TrainConfig's fields) and every field as a
flag (``--train_batch_size 2``...), flags overriding the file. Run them under
``accelerate launch -m videox_fun.cli train ...`` for several processes, or use the VideoX-Fun
entry point ``scripts/wan2.1_fun/train.py`` with the same flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..argparsing import DefaultsHelpFormatter, positive_int
from .config import add_train_arguments, config_from_args


def run_train_script(**presets: Any) -> None:
    """The body of every ``scripts/<family>/train*.py``: VideoX-Fun's flags, with the script's own defaults
    (``train_mode="control"``, ``use_lora=True``...) under what YAML and flags say."""
    from ..argparsing import USER_ERRORS, single_line
    from .config import parse_train_args
    from .trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        train(parse_train_args(**presets))
    except USER_ERRORS as err:  # a mistake in what was asked: one line and exit code 2, as `videox-fun train`
        print(f"error: {single_line(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None


def run_train(args: argparse.Namespace) -> None:
    """Handler of ``videox-fun train``."""
    from .trainer import train

    result = train(config_from_args(args))
    print(f"trained {result.global_step} steps; outputs in {result.output_dir}")


def run_cache(args: argparse.Namespace) -> None:
    """Handler of ``videox-fun cache``."""
    from .cache import build_cache

    folder = build_cache(config_from_args(args))
    print(f"latent cache written to {folder}")


def run_teacher_pairs(args: argparse.Namespace) -> None:
    """Handler of ``videox-fun teacher-pairs``: the teacher's samples for ``--distill_regression_path``."""
    from ..api import RuntimeOptions, load_pipeline
    from ..io.files import check_output_target
    from .data.prompts import load_prompts
    from .teacher_pairs import make_teacher_pairs

    prompts = load_prompts(args.prompts_file)
    check_output_target(args.out, "--out", args.overwrite)
    loaded = load_pipeline(args.model, RuntimeOptions(device=args.device, dtype=args.dtype))
    defaults = loaded.recognised.defaults
    size = (args.frames or defaults.num_frames, args.height or defaults.height, args.width or defaults.width)
    pairs = make_teacher_pairs(loaded, prompts, args.count, args.seed, size, progress=not args.quiet)
    print(f"{len(pairs)} teacher samples written to {pairs.save(args.out)}")


def add_teacher_pairs_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``teacher-pairs``: the teacher's own samples from known noise, for distillation's regression."""
    from pathlib import Path

    from ..argparsing import add_device_arguments

    pairs = subparsers.add_parser(
        "teacher-pairs",
        help="sample the teacher from known noise for train --distill_regression_path",
        formatter_class=DefaultsHelpFormatter,
    )
    pairs.add_argument("--model", required=True, help="the teacher (model folder or name), at its own defaults")
    pairs.add_argument("--prompts-file", type=Path, required=True, help="prompts (.txt one a line, .json / .jsonl)")
    pairs.add_argument("--count", type=positive_int, required=True, help="samples; prompt i is line i mod lines")
    pairs.add_argument("--out", type=Path, required=True, help="the pairs file (.safetensors)")
    pairs.add_argument("--seed", type=int, default=0, help="sample i has seed SEED + i (default 0)")
    pairs.add_argument("--frames", type=positive_int, help="frames (default: the model's)")
    pairs.add_argument("--height", type=positive_int, help="height (default: the model's)")
    pairs.add_argument("--width", type=positive_int, help="width (default: the model's)")
    add_device_arguments(pairs)
    pairs.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pairs.add_argument("--quiet", action="store_true", help="no progress bar")
    pairs.set_defaults(handler=run_teacher_pairs)


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``cache`` and ``teacher-pairs`` on the ``videox-fun`` subcommands."""
    formatter = DefaultsHelpFormatter
    train = subparsers.add_parser(
        "train", help="train a model (full, LoRA, inpaint, control)", formatter_class=formatter
    )
    add_train_arguments(train)
    train.set_defaults(handler=run_train)
    cache = subparsers.add_parser(
        "cache", help="pre-compute VAE latents and text embeddings for training", formatter_class=formatter
    )
    add_train_arguments(cache)
    cache.set_defaults(handler=run_cache)
    add_teacher_pairs_command(subparsers)
