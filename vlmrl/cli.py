"""The ``vlmrl`` console script: one subcommand per user task.

Every command module exposes ``add_parser(subparsers)``, which registers its subcommand and sets
``func`` to the callable that runs it. Heavy imports (torch, SB3, open_clip) happen inside those
callables, so ``vlmrl --help`` stays fast.

Errors a user can fix (:class:`~vlmrl.errors.UserError`: bad input, missing weights, a busy
output) print one line, ``vlmrl COMMAND: error: MESSAGE``, and exit with 2. Commands turn the
library errors they expect (a corrupt HDF5 or JSON file, a folder that cannot be written) into
UserErrors where they arise, naming the file, episode or field; anything else is a bug and keeps
its traceback. ``--debug`` (before or after the command) or ``VLMRL_DEBUG=1`` shows the
traceback of UserErrors too, for bug reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vlmrl.errors import UserError
from vlmrl.stopping import Stopped

COMMAND_MODULES = (
    "vlmrl.train",
    "vlmrl.record",
    "vlmrl.eval_reward",
    "vlmrl.bench",
    "vlmrl.collect",
    "vlmrl.relabel",
    "vlmrl.label_pairs",
    "vlmrl.report",
)

DEBUG_HELP = "show the full traceback of errors (also VLMRL_DEBUG=1), for bug reports"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmrl",
        description=(
            "Train embodied RL agents from a sentence: rewards come from vision-language models "
            "(CLIP zero-shot scores or VLM preferences) instead of hand-written reward code."
        ),
        epilog="Run `vlmrl COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    for subparser in subparsers.choices.values():
        _add_debug_flag(subparser)
    return parser


def _add_debug_flag(subparser: argparse.ArgumentParser) -> None:
    """``vlmrl COMMAND ... --debug`` too; SUPPRESS keeps a top-level ``vlmrl --debug`` when absent."""
    try:
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    except argparse.ArgumentError:
        pass  # the command has its own --debug


def debug_enabled(args: argparse.Namespace) -> bool:
    """``--debug`` given, or ``VLMRL_DEBUG`` set to anything but empty / 0 / false."""
    return bool(getattr(args, "debug", False)) or os.environ.get("VLMRL_DEBUG", "").lower() not in ("", "0", "false")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as error:
        if debug_enabled(args):
            raise
        print(f"vlmrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:  # SIGTERM / SIGINT, handled where a command can stop cleanly
        print(f"vlmrl {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        if debug_enabled(args):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
