"""`viral demo`: one seed of the ShapesWorld study, baseline versus VIRAL (what `make demo` calls)."""

from __future__ import annotations

import argparse

from viral.commands.study import add_study_arguments, setup


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="one seed of the ShapesWorld study: baseline vs VIRAL side by side",
        description="One seed of `viral study` at the demo's scale (--scale demo: about a sixth of the full "
                    "study's compute, 10 minutes on 2 CPU cores). Generates ShapesWorld (reused when present), "
                    "trains the stage-0 encoders (reused), then for one seed pre-trains the projector and "
                    "fine-tunes twice from the same weights - baseline and VIRAL - scores both on ShapesBench "
                    "and prints the side-by-side table. Runs on the CPU with no download.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    add_study_arguments(parser, demo=True)
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.demo import run_demo

    setup(args)
    run_demo(args)
    return 0
