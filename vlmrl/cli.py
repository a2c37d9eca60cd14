"""The ``vlmrl`` console script: one subcommand per user task.

Every command module exposes ``add_parser(subparsers)``, which registers its subcommand and sets
``func`` to the callable that runs it. Heavy imports (torch, SB3, open_clip) happen inside those
callables, so ``vlmrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vlmrl.errors import UserError

COMMAND_MODULES = (
    "vlmrl.train",
    "vlmrl.record",
    "vlmrl.eval_reward",
    "vlmrl.bench",
    "vlmrl.collect",
    "vlmrl.relabel",
    "vlmrl.label_pairs",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmrl",
        description=(
            "Train embodied RL agents from a sentence: rewards come from vision-language models "
            "(CLIP zero-shot scores or VLM preferences) instead of hand-written reward code."
        ),
        epilog="Run `vlmrl COMMAND --help` for the options of each command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as error:
        print(f"vlmrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
