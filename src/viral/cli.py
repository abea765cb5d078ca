"""The `viral` command line: one sub-command per job, each a thin call into the library.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments. Adding a command is one line in COMMAND_MODULES.

An expected user error (`viral.errors.UserError`: a bad config key, a malformed record, a missing
file) prints as `viral: error: <message>` (plus a `viral: hint:` line when one helps) and exits 2,
as argparse does for a bad flag; `--debug` or `VIRAL_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from viral.errors import UserError

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
USER_ERROR_EXIT = 2  # argparse's code for a usage error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viral",
        description="Train and study multimodal LLMs with visual representation alignment (VIRAL) and VLoRA.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: VIRAL_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VIRAL_DEBUG", "").strip() not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError) as error:
        if args.debug or _debug_requested(argv):
            raise
        message = str(error) if isinstance(error, UserError) else f"{error.strerror}: {error.filename}"
        print(f"viral: error: {message}", file=sys.stderr)
        if getattr(error, "hint", None):
            print(f"viral: hint: {error.hint}", file=sys.stderr)
        return USER_ERROR_EXIT
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
