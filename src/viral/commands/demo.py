"""`viral demo`: the built-in end-to-end run on ShapesWorld (what `make demo` calls)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="generate ShapesWorld, train the tiny preset with VIRAL, answer questions",
        description="Runs on the CPU in minutes with no download. Data under OUT/shapes is reused when present.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--config", default="configs/tiny-shapes.yaml", help="training config")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the training config, e.g. max_steps=50")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.demo import run_demo

    run_demo(args.out, args.config, overrides=args.overrides)
    return 0
