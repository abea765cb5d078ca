"""The built-in demo: seed 0 of the ShapesWorld study (`viral.study`), baseline versus VIRAL, side by side.

The demo is exactly `viral study --scale demo --seeds 1` (`viral.study.scales`: about a sixth of the full
study's compute, to fit 10 minutes on 2 CPU cores), so its folder is that study's seed 0 and
`viral study --scale demo --out runs/demo` adds the other seeds to it. World and stage-0 encoders are
reused when present, so a second `make demo` only retrains what changed. Two processes of one thread work
through the study's jobs, each as soon as what it reads is ready (`viral.study.pipeline.study_jobs`: the
two encoders, the LLM's language stage and stage 1, the two arms, the encoders' probes), one progress bar
shows them all, and the end prints the table, each stage's wall time and when each job ran.
"""

from __future__ import annotations

import shlex
import sys

from viral.evaluate.shapes import AXIS_GROUPS
from viral.report import write_html_report
from viral.study.pipeline import ARMS, QUESTION_TYPES, run_study
from viral.study.report import LABELS, format_p, format_table, premise_sentence, wall_times


def demo_defaults() -> dict:
    """The study's settings, two side-by-side processes."""
    from viral.commands.study import default_jobs

    return {"jobs": default_jobs()}


def side_by_side(summary: dict) -> str:
    """Baseline, VIRAL and the difference per question type (then relation and position per axis of the image)
    for the demo's single seed."""
    seed = str(summary["statistics"]["seeds"][0])
    runs = summary["runs"][seed]
    mcnemar = summary["mcnemar_per_seed"][seed]
    scores = {arm: {**runs[arm]["scores"], **runs[arm].get("axes", {})} for arm in ARMS}
    rows = []
    for name in ("accuracy", *QUESTION_TYPES, *AXIS_GROUPS):
        if name not in scores["baseline"] or name not in mcnemar:
            continue
        b, v = scores["baseline"][name], scores["viral"][name]
        chance = summary["chance"].get(name)
        rows.append([LABELS.get(name, name), "-" if chance is None else f"{chance:.1f}",
                     f"{b:.2f}", f"{v:.2f}", f"{v - b:+.2f}", format_p(mcnemar[name]["p_value"])])
    return format_table(["type", "chance", "baseline", "VIRAL", "difference", "McNemar p"], rows)


def verdict(summary: dict, alpha: float = 0.05) -> str:
    """What this seed says, from its own McNemar tests: where VIRAL is ahead or behind, where no difference shows."""
    seed = str(summary["statistics"]["seeds"][0])
    runs, mcnemar = summary["runs"][seed], summary["mcnemar_per_seed"][seed]
    ahead, behind, same = [], [], []
    for name in QUESTION_TYPES:
        if name not in runs["baseline"]["scores"]:
            continue
        difference = runs["viral"]["scores"][name] - runs["baseline"]["scores"][name]
        if difference and mcnemar[name]["p_value"] is not None and mcnemar[name]["p_value"] < alpha:
            (ahead if difference > 0 else behind).append(f"{name} ({difference:+.1f})")
        else:
            same.append(name)
    parts = [f"VIRAL ahead on {', '.join(ahead)}" if ahead else "VIRAL ahead on no type",
             f"behind on {', '.join(behind)}" if behind else "",
             f"no difference at p < {alpha} on {', '.join(same)}" if same else ""]
    return "this seed (McNemar): " + "; ".join(part for part in parts if part) + \
        ". One seed is a smoke test; the README's five-seed table at this scale is the result."


def run_demo(args) -> dict:
    """One seed of the study; prints the table, the verdicts, each stage's time and the paths it wrote."""
    from viral.commands.study import settings_from_args

    settings, encoders = settings_from_args(args, [args.seed], demo_defaults())
    command = "viral " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_study(args.out, settings, encoders, data_dir=args.data, encoders_dir=args.encoders, command=command,
                        reuse_from=args.reuse_from)
    print("\nShapesBench accuracy (%), one seed: baseline vs VIRAL from the same weights and data order\n")
    print(side_by_side(summary))
    print(verdict(summary))
    diagnostics = summary["encoders"].get("diagnostics") or {}
    print(f"\nteacher diagnostics: constant-target cosine {diagnostics.get('constant_target_cosine')}, "
          f"linear map from the student's patches {diagnostics.get('student_linear_map_cosine')}")
    if summary["encoders"].get("probes"):
        print(premise_sentence(summary["encoders"]["probes"]))
    learnable = summary["above_chance"]
    if not learnable["all"]:
        stuck = sorted({name for arm in ARMS for name, ok in learnable[arm].items() if not ok})
        print(f"not clearly above chance in both arms: {', '.join(stuck)} - a difference there means nothing")
    print(wall_times(summary) + " (minutes)\n")
    seed = str(summary["statistics"]["seeds"][0])
    for arm in ARMS:
        print(f"{arm} run: {summary['runs'][seed][arm]['dir']}")
    runs = summary["runs"][seed]
    print(f"compare: viral eval compare {runs['baseline']['dir']}/eval {runs['viral']['dir']}/eval")
    print(f"stage-0 encoders: {summary['encoders']['dir']}\ndata: {summary['data']}")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    print(f"report: {write_html_report(args.out)}")  # one HTML page: tables, curves, question browser
    return summary
