"""`viral sweep CONFIG.yaml --grid key=[...] ...`: one training + evaluation per grid point, one table."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train and evaluate every point of a grid of config values (the paper's Table 2)",
        description="Cross the --grid axes, train each point into OUT/<point>, score it on the benchmark, and "
                    "write OUT/sweep.json and OUT/sweep.md. Points already trained are reused (resumable).",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML/JSON file (defaults when omitted)")
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=[V1,V2,...]",
                        help="an axis, values as YAML, e.g. target_layers=[[2],[4]] (repeat to cross axes)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every point")
    parser.add_argument("--out", default="runs/sweep", help="folder of the runs and the table")
    parser.add_argument("--eval", dest="evals", action="append", default=None, metavar="BENCHMARK=PATH",
                        help="a `viral eval` benchmark and its data, e.g. shapes=data/shapes or cvbench=data/CV-Bench; "
                             "repeat for several (default: ShapesBench beside the config's data.path)")
    parser.add_argument("--eval-limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--launcher", default=None,
                        help="run each training as this shell command, {command} standing for `viral train ...` "
                             "(e.g. \"srun -p gpu {command}\"); it must block until the run ends")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.sweep import SWEEP_TABLE, run_sweep

    run_sweep(args.config, args.grid, args.out, args.overrides, evals=args.evals,
              launcher=args.launcher, eval_limit=args.eval_limit)
    print(f"table: {args.out}/{SWEEP_TABLE}")
    return 0
