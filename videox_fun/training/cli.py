"""``videox-fun train`` and ``videox-fun cache``: the training commands of the CLI.

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

from ..argparsing import DefaultsHelpFormatter
from .config import add_train_arguments, config_from_args


def run_train_script(**presets: Any) -> None:
    """The body of every ``scripts/<family>/train*.py``: VideoX-Fun's flags, with the script's own defaults
    (``train_mode="control"``, ``use_lora=True``...) under what YAML and flags say."""
    from ..argparsing import single_line
    from ..cli import USER_ERRORS
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


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``cache`` on the ``videox-fun`` subcommands."""
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
