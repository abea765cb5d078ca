"""The `viral` command line: one sub-command per job, each a thin call into the library.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments. Adding a command is one line in COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules whose `register(subparsers)` adds commands, in the order `viral --help` lists them.
COMMAND_MODULES = [
    "viral.commands.train",
    "viral.commands.cache_teacher",
    "viral.commands.infer",
    "viral.commands.shapes",
    "viral.commands.eval",
    "viral.commands.demo",
    "viral.commands.study",
    "viral.commands.analyze",
    "viral.commands.report",
    "viral.commands.sweep",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viral",
        description="Train and study multimodal LLMs with visual representation alignment (VIRAL) and VLoRA.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
