"""The built-in demo: one seed of the ShapesWorld study (`viral.study`), baseline versus VIRAL, side by side.

World and stage-0 encoders are reused when present, so a second `make demo` only retrains what changed.
The demo runs fewer steps than `viral study` (DEMO_DEFAULTS: 200 stage-1 and 500 stage-2 steps instead of
300 and 2000, sized for about 15 minutes on two idle CPU cores) and trains the two arms (and the two
encoders) side by side in two processes of one thread each. With so few steps some question types can
stay at chance; the table says so, and `viral study` is the experiment.
"""

from __future__ import annotations

import shlex
import sys

from viral.study.pipeline import ARMS, QUESTION_TYPES, run_study
from viral.study.report import format_table

DEMO_DEFAULTS = {"finetune_steps": 500, "pretrain_steps": 200, "jobs": 2}


def side_by_side(summary: dict) -> str:
    """Baseline, VIRAL and the difference per question type for the demo's single seed."""
    seed = str(summary["statistics"]["seeds"][0])
    runs = summary["runs"][seed]
    mcnemar = summary["mcnemar_per_seed"][seed]
    rows = []
    for name in ("accuracy", *QUESTION_TYPES):
        if name not in runs["baseline"]["scores"]:
            continue
        b, v = runs["baseline"]["scores"][name], runs["viral"]["scores"][name]
        chance = summary["chance"].get(name)
        rows.append(["all" if name == "accuracy" else name, "-" if chance is None else f"{chance:.1f}",
                     f"{b:.2f}", f"{v:.2f}", f"{v - b:+.2f}", f"{mcnemar[name]['p_value']:.3g}"])
    return format_table(["type", "chance", "baseline", "VIRAL", "difference", "McNemar p"], rows)


def run_demo(args) -> dict:
    """One seed of the study with the demo's step counts; prints the table and the paths it wrote."""
    from viral.commands.study import settings_from_args

    settings, encoders = settings_from_args(args, [args.seed], dict(DEMO_DEFAULTS))
    command = "viral " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_study(args.out, settings, encoders, data_dir=args.data, encoders_dir=args.encoders, command=command)
    print("\nShapesBench accuracy (%), one seed: baseline vs VIRAL from the same weights and data order\n")
    print(side_by_side(summary))
    diagnostics = summary["encoders"].get("diagnostics") or {}
    print(f"\nteacher diagnostics: constant-target cosine {diagnostics.get('constant_target_cosine')}, "
          f"linear map from the student's patches {diagnostics.get('student_linear_map_cosine')}")
    learnable = summary["above_chance"]
    if not learnable["all"]:
        stuck = sorted({name for arm in ARMS for name, ok in learnable[arm].items() if not ok})
        print(f"not clearly above chance in both arms: {', '.join(stuck)} - a difference there means nothing")
    print(f"wall time {summary['seconds']['total'] / 60:.1f} min\n")
    seed = str(summary["statistics"]["seeds"][0])
    for arm in ARMS:
        print(f"{arm} run: {summary['runs'][seed][arm]['dir']}")
    runs = summary["runs"][seed]
    print(f"compare: viral eval compare {runs['baseline']['dir']}/eval {runs['viral']['dir']}/eval")
    print(f"stage-0 encoders: {summary['encoders']['dir']}\ndata: {summary['data']}")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    return summary
