"""`viral eval`: score a checkpoint on a benchmark, or compare two results files.

    viral eval --model-path P --benchmark NAME --data PATH --output results.json [options]
    viral eval compare A.json B.json

The first form loads `viral.infer.Predictor` and calls `viral.evaluate.evaluate`; the second calls
`viral.evaluate.compare_results`. Nothing is re-implemented here.
"""

from __future__ import annotations

import argparse

from viral.evaluate import BENCHMARKS, compare_results, evaluate, format_comparison, load_results
from viral.evaluate.compare import flatten_metrics
from viral.evaluate.runner import predictions_path

DESCRIPTION = """\
Score a checkpoint on one benchmark, read from a local copy in its publisher's layout:

  viral eval --model-path P --benchmark NAME --data PATH --output results.json

writes the summary to results.json and one line per question to predictions.jsonl beside it
(use one output folder per run). Decoding is greedy unless --temperature > 0.

Compare two results files (or two folders of them), metric by metric, with the difference:

  viral eval compare A.json B.json

Benchmarks: cvbench (CV-Bench 2D), whatsup (What's Up COCO-one/two), mmvp, pope, mme, mmstar,
shapes (ShapesBench from `viral shapes generate`).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a checkpoint on a benchmark; `viral eval compare A.json B.json` compares two results",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-path", help="checkpoint folder written by `viral train`, or any llava-hf model")
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--data", help="local copy of the benchmark (folder or file, see the benchmark's docs)")
    parser.add_argument("--output", help="summary JSON to write; predictions.jsonl goes beside it")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call (default 8)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when --temperature > 0")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampled decoding (batch k uses seed + k)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the benchmark's default (16)")
    parser.add_argument("--skip-missing", action="store_true", help="skip questions whose image is missing and count them, instead of failing")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    commands = parser.add_subparsers(dest="eval_command", metavar="{compare}")
    compare = commands.add_parser(
        "compare",
        help="table of two results' metrics with their difference",
        description="Compare two `viral eval` results files (or folders of them): A, B and B - A per metric.",
    )
    compare.add_argument("a", help="results JSON (or folder of them): the baseline")
    compare.add_argument("b", help="results JSON (or folder of them): the one compared with A")
    parser.set_defaults(func=run, _eval_parser=parser)


def run(args: argparse.Namespace) -> int:
    # a DataError or a missing file reaches viral.cli, which prints it as one line and exits 2
    if args.eval_command == "compare":
        return run_compare(args)
    return run_eval(args)


def run_compare(args: argparse.Namespace) -> int:
    rows = compare_results(load_results(args.a), load_results(args.b))
    print(f"A: {args.a}\nB: {args.b}\n")
    print(format_comparison(rows))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--model-path", args.model_path), ("--benchmark", args.benchmark),
                                         ("--data", args.data), ("--output", args.output)) if not value]
    if missing:
        args._eval_parser.error(f"the following arguments are required: {', '.join(missing)}")
    from viral.infer import Predictor  # heavy import (torch, transformers) only when generating

    predictor = Predictor.from_pretrained(args.model_path, device=args.device, dtype=args.dtype)
    summary = evaluate(
        predictor,
        args.benchmark,
        args.data,
        output=args.output,
        limit=args.limit,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        skip_missing=args.skip_missing,
        progress=not args.no_progress,
        model_path=args.model_path,
    )
    print(format_summary(summary))
    print(f"\nsummary: {args.output}\npredictions: {predictions_path(args.output)}")
    return 0


def format_summary(summary: dict) -> str:
    """Headline, then every metric, then the counts worth knowing (unparsed, skipped)."""
    counts = summary["counts"]
    lines = [
        f"{summary['benchmark']}: {summary['headline']['metric']} = {summary['headline']['value']:.2f}"
        f"  ({counts['evaluated']} questions, {counts['unparsed']} unparsed, "
        f"{counts['skipped_missing_image']} skipped for a missing image)"
    ]
    for name, value in flatten_metrics(summary["metrics"]).items():
        lines.append(f"  {name:<40} {value:8.2f}")
    return "\n".join(lines)
