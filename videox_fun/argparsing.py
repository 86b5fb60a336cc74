"""Argument parsing shared by every ``videox-fun`` command: flag spellings, default display, the flags several
commands take (device, multi-GPU) and the errors that are a user's mistake.

VideoX-Fun users write flags with underscores (``--num_inference_steps``, ``--GPU_memory_mode``)
while our generation flags use hyphens and the training flags keep VideoX-Fun's underscores. The
parser here accepts either spelling, in any letter case, wherever the other one is a flag.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import NoReturn


class FlagSpellingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reads ``--foo_bar`` as ``--foo-bar`` (and back) when only one is a flag.

    Sub-commands inherit the class, so each one resolves spellings against its own flags.
    """

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's ``parse_known_args`` after respelling each ``--flag`` token by :meth:`known_spelling`.

        ``--foo_bar`` becomes ``--foo-bar`` (or the reverse, also lower-cased) when only that spelling is a flag
        of this parser; a ``--flag=value`` token keeps its value; everything else passes unchanged.
        """
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self.known_spelling(token) for token in args], namespace)

    def error(self, message: str) -> NoReturn:
        """Print one line (argparse's message and where to read more) and exit with code 2.

        argparse prints the whole usage block first, which buries the one thing that is wrong.
        """
        self.exit(2, f"{self.prog}: error: {single_line(message)} (see {self.prog} --help)\n")

    def known_spelling(self, token: str) -> str:
        """``token`` with its flag part respelled to a flag of this parser, if one matches; else unchanged."""
        if not token.startswith("--") or token == "--":
            return token
        flag, equals, value = token.partition("=")
        if flag in self._option_string_actions:
            return token
        name = flag[2:]
        for candidate in (name.replace("_", "-"), name.replace("-", "_")):
            for spelled in (f"--{candidate}", f"--{candidate.lower()}"):
                if spelled in self._option_string_actions:
                    return spelled + equals + value
        return token


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show and the help does not state it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more (argparse prints the error with the flag's name)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite number (NaN and infinities are refused; argparse names the flag)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def single_line(text: str) -> str:
    """``text`` on one line: its line breaks (those of ``str.splitlines``, which a value given by the user may
    hold) become spaces, so an error stays one line on the terminal and in a log."""
    return " ".join(text.splitlines())


# Mistakes in what the user asked for: one line, exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def add_device_arguments(group: argparse._ActionsContainer) -> None:
    """``--device`` and ``--dtype``, resolved by :func:`videox_fun.api.resolve_device_and_dtype`."""
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    group.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)",
    )


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-GPU flags: sequence-parallel degrees, CFG parallelism and FSDP."""
    group = parser.add_argument_group(
        "multi-GPU (launch with torchrun; ulysses x ring x (2 with --cfg-parallel) must equal the process count)"
    )
    group.add_argument(
        "--ulysses-degree",
        type=int,
        help="Ulysses sequence parallelism (all-to-all); default: every process when neither degree is given, else 1",
    )
    group.add_argument("--ring-degree", type=int, help="Ring sequence parallelism (K/V passed around) (default 1)")
    group.add_argument(
        "--cfg-parallel", action="store_true", help="conditional and unconditional passes on two groups of ranks"
    )
    group.add_argument("--fsdp-dit", action="store_true", help="shard the transformer's weights over the ranks")
    group.add_argument("--fsdp-text-encoder", action="store_true", help="shard the text encoder's weights")
