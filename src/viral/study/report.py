"""The study's human-readable outputs: `study.md` (tables) and `study.png` (bars per type, loss curves)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from viral.evaluate.shapes import AXIS_GROUPS

ARM_LABELS = {"baseline": "baseline", "viral": "VIRAL"}
TYPES = ["accuracy", "count", "relation", "existence", "colour", "position"]
LABELS = {"accuracy": "all", "position_horizontal": "position: left / right", "position_vertical":
          "position: top / bottom", "relation_horizontal": "relation: left / right",
          "relation_vertical": "relation: above / below"}


def _pm(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if stats.get("std") is not None else "")


def format_p(value: float | None) -> str:
    """A p-value for a table; the statistics keep 4 decimals, so 0 means below 1e-4."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e-4 else "<1e-4"


def wall_times(summary: dict[str, Any]) -> str:
    """'wall time 8.1 min (world 0.3, ...); start-end: student 0.0-2.7, ...' in minutes: each stage's wall time,
    then when each job of the study's graph ran (jobs overlap: they run side by side), then the wall times of
    the earlier calls on the same folder (a call that reuses finished runs takes seconds)."""
    seconds = summary["seconds"]
    text = f"wall time {seconds['total'] / 60:.1f} min"
    if seconds.get("stages"):
        text += " (" + ", ".join(f"{name} {value / 60:.1f}" for name, value in seconds["stages"].items()) + ")"
    if seconds.get("jobs"):
        text += "; start-end: " + ", ".join(f"{name} {span['start'] / 60:.1f}-{span['end'] / 60:.1f}"
                                             for name, span in seconds["jobs"].items())
    if seconds.get("earlier"):
        text += "; earlier calls on this folder: " + ", ".join(f"{call['total'] / 60:.1f} min"
                                                                for call in seconds["earlier"])
    return text


def comparison_rows(summary: dict[str, Any], names: Sequence[str] = TYPES,
                    statistics: str = "statistics") -> list[list[str]]:
    """Rows of the main table (or of `axis_rows`): type, chance, each arm's mean ± std, difference, tests."""
    rows = []
    for name in names:
        entry = summary.get(statistics, {}).get("types", {}).get(name)
        if entry is None:
            continue
        paired = entry["paired"]
        ci = paired["paired_t"]["ci95"]
        difference = f"{paired['mean_difference']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        sign = paired["sign_test"]
        chance = summary["chance"].get(name)
        rows.append([LABELS.get(name, name), "-" if chance is None else f"{chance:.1f}",
                     _pm(entry["baseline"]), _pm(entry["viral"]), difference,
                     format_p(paired["paired_t"]["p_value"]),
                     f"{sign['positive']}+/{sign['negative']}- p={format_p(sign['p_value'])}"])
    return rows


def axis_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of relation and position per axis of the image, as `comparison_rows` (none for older studies)."""
    return comparison_rows(summary, AXIS_GROUPS, "statistics_by_axis")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain-text aligned table for the terminal."""
    table = [header] + rows
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


PREMISE_MARGIN = 5.0  # points by which the teacher's patch probe must beat the student's


def premise_sentence(probes: dict[str, Any], margin: float = PREMISE_MARGIN) -> str:
    """Whether the premise holds per probe task: the dense teacher's patch-level probe beats the global student's.

    The paper's premise is that a contrastive (global) encoder loses what a dense one keeps; here it holds for
    a task when the teacher's patch attention probe is at least `margin` points above the student's.
    """
    holds, fails = [], []
    for task in ("count", "position"):
        if task not in probes.get("student", {}) or task not in probes.get("teacher", {}):
            continue
        student = probes["student"][task]["patch_attention_probe"]
        teacher = probes["teacher"][task]["patch_attention_probe"]
        chance = probes["student"][task]["chance"]
        text = f"{task} (teacher {teacher:.1f} vs student {student:.1f}, chance {chance:.1f})"
        (holds if teacher >= student + margin else fails).append(text)
    parts = []
    if holds:
        parts.append("holds for " + " and ".join(holds))
    if fails:
        parts.append("does not hold for " + " and ".join(fails))
    return (f"Premise (the dense teacher's patch features carry what the global student's lack; patch attention "
            f"probe, teacher at least {margin:.0f} points above the student): " + "; it ".join(parts) + ".")


MAIN_HEADER = ["type", "chance", "baseline", "VIRAL", "VIRAL - baseline [95% CI]", "paired t p", "sign test"]


def write_markdown(out: Path, summary: dict[str, Any]) -> Path:
    settings = summary["settings"]
    seeds = summary["statistics"]["seeds"]
    lines = [
        "# ShapesWorld study: baseline versus VIRAL",
        "",
        f"Command: `{summary.get('command') or 'viral study'}`  ",
        f"Seeds: {seeds}; {settings['n_train']} training images, ShapesBench on {settings['n_eval']} evaluation "
        f"images; language stage {settings.get('language_steps', 0)} steps on the "
        f"{settings.get('language_corpus', 'text')} corpus; stage 1 {settings['pretrain_steps']} "
        f"steps; stage 2 config `{settings['config']}` {' '.join(settings['overrides'])}; {wall_times(summary)}.",
        "",
        *([f"Runs copied from an earlier study (`--reuse-from`): " + ", ".join(
            f"`{new}` from `{old}`" for new, old in summary["copied_from"].items()) + ".", ""]
          if summary.get("copied_from") else []),
        "## ShapesBench accuracy (%), mean ± std over seeds",
        "",
        markdown_table(MAIN_HEADER, comparison_rows(summary)),
        "",
        "Chance: for each question form (the question with its colour and shape words masked), always giving "
        "that form's most frequent answer - what a model that ignores the image can reach. The difference is "
        "paired by seed (same stage-1 weights and data order in both arms); p-values are two-sided (paired "
        "t-test over seeds; exact sign test).",
        "",
    ]
    by_axis = axis_rows(summary)
    if by_axis:
        lines += ["Relation and position per axis of the image (from each run's `eval/predictions.jsonl`):", "",
                  markdown_table(MAIN_HEADER, by_axis), ""]
    learnable = summary.get("above_chance", {})
    if learnable and not learnable.get("all", True):
        failing = [f"{ARM_LABELS[arm]}: {name}" for arm in ARM_LABELS for name, ok in learnable.get(arm, {}).items()
                   if not ok]
        lines += [f"**Warning:** not clearly above chance (< {learnable['margin']:.0f} points over it in some seed): "
                  + ", ".join(failing) + ". A difference on those types means nothing.", ""]
    lines += ["## Per seed", ""]
    types = [t for t in TYPES if t in summary["statistics"]["types"]]  # the world's question types only
    rows = []
    for seed, runs in summary["runs"].items():
        mcnemar = summary["mcnemar_per_seed"].get(seed, {}).get("accuracy", {})
        for arm in ARM_LABELS:
            run = runs[arm]
            rows.append([seed, ARM_LABELS[arm]] + [f"{run['scores'][t]:.2f}" for t in types]
                        + [format_p(mcnemar.get("p_value")) if arm == "viral" else "",
                           f"{run.get('train_seconds', 0):.0f}", f"`{run['dir']}`"])
    header = ["all" if t == "accuracy" else t for t in types]
    lines += [markdown_table(["seed", "arm", *header, "McNemar p (all)", "train s", "run"], rows), ""]
    encoders = summary.get("encoders", {})
    if encoders.get("probes"):
        probes = encoders["probes"]
        rows = []
        for task in (t for t in probes["student"] if t in probes["teacher"]):
            for kind in ("patch_attention_probe", "pooled_linear_probe"):
                rows.append([task, kind.replace("_", " "), f"{probes['student'][task][kind]:.1f}",
                             f"{probes['teacher'][task][kind]:.1f}", f"{probes['student'][task]['chance']:.1f}"])
        diagnostics = encoders.get("diagnostics", {})
        lines += [
            "## Stage 0: the premise", "",
            f"Encoders in `{encoders['dir']}`. Student (CLIP architecture, global objective): "
            f"{json.dumps(encoders.get('student_eval'))}. Teacher (DINOv2 architecture, dense objective): "
            f"{json.dumps(encoders.get('teacher_eval'))}.", "",
            markdown_table(["probe task", "probe", "student", "teacher", "chance"], rows), "",
            premise_sentence(probes), "",
            f"Alignment diagnostics (mean cosine with the teacher's patch features, eval images): best constant "
            f"vector {diagnostics.get('constant_target_cosine')}, linear map from the student's own patch features "
            f"{diagnostics.get('student_linear_map_cosine')}.", "",
        ]
    lines += ["## Files", "", f"- summary: `{out / 'study.json'}`", f"- plot: `{out / 'study.png'}`",
              f"- data: `{summary['data']}`", ""]
    path = out / "study.md"
    path.write_text("\n".join(lines))
    return path


def _read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_curve(runs: list[str], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for run_dir in runs:
        for row in _read_metrics(run_dir):
            if row.get(key) is not None:
                by_step.setdefault(int(row["step"]), []).append(float(row[key]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _mean_curve_scores(runs: list[str], name: str) -> tuple[list[int], list[float]]:
    """Mean over runs of a type's accuracy at each step of their `eval_curve.jsonl`."""
    by_step: dict[int, list[float]] = {}
    for run_dir in runs:
        path = Path(run_dir) / "eval_curve.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if name in row.get("scores", {}):
                by_step.setdefault(int(row["step"]), []).append(float(row["scores"][name]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def write_plot(out: Path, summary: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curves, progress) = plt.subplots(1, 3, figsize=(17, 4.5))
    types = [t for t in TYPES if t in summary["statistics"]["types"]]
    width = 0.38
    for k, arm in enumerate(ARM_LABELS):
        means = [summary["statistics"]["types"][t][arm]["mean"] for t in types]
        errors = [summary["statistics"]["types"][t][arm]["std"] or 0.0 for t in types]
        positions = [i + (k - 0.5) * width for i in range(len(types))]
        bars.bar(positions, means, width, yerr=errors, capsize=3, label=ARM_LABELS[arm])
    for i, t in enumerate(types):
        if t in summary["chance"]:
            bars.hlines(summary["chance"][t], i - 0.45, i + 0.45, colors="k", linestyles="dotted")
    bars.set_xticks(range(len(types)), ["all" if t == "accuracy" else t for t in types])
    bars.set_ylabel("ShapesBench accuracy (%)")
    bars.set_ylim(0, 100)
    n = len(summary["statistics"]["seeds"])
    bars.set_title(f"mean ± std over {n} seed{'s' if n != 1 else ''} (dotted: chance)")
    bars.legend(loc="upper right")
    runs = summary["runs"].values()
    for arm in ARM_LABELS:
        steps, values = _mean_curve([r[arm]["dir"] for r in runs], "loss_lm")
        curves.plot(steps, values, label=f"L_LM {ARM_LABELS[arm]}")
    curves.set_xlabel("stage-2 step")
    curves.set_ylabel("L_LM")
    curves.set_yscale("log")
    steps, values = _mean_curve([r["viral"]["dir"] for r in runs], "loss_vra")
    if steps:
        vra = curves.twinx()
        vra.plot(steps, values, "C2--", label="L_VRA VIRAL")
        vra.set_ylabel("L_VRA (negative cosine)")
        vra.legend(loc="upper center")
    curves.legend(loc="upper right")
    curves.set_title("training losses (mean over seeds)")
    drew = False
    for k, name in enumerate(TYPES[1:]):
        for arm, style in (("baseline", "-"), ("viral", "--")):
            steps, values = _mean_curve_scores([r[arm]["dir"] for r in runs], name)
            if steps:
                drew = True
                progress.plot(steps, values, style, color=f"C{k}", label=f"{name} {ARM_LABELS[arm]}")
        if name in summary["chance"]:
            progress.axhline(summary["chance"][name], color=f"C{k}", linestyle="dotted", linewidth=0.8)
    progress.set_xlabel("stage-2 step")
    progress.set_ylabel("accuracy (%) on the first questions")
    progress.set_title("ShapesBench during training (solid baseline, dashed VIRAL)")
    if drew:
        progress.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path = out / "study.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(out: Path, summary: dict[str, Any]) -> dict[str, str]:
    """study.md and study.png; returns their paths."""
    return {"markdown": str(write_markdown(out, summary)), "plot": str(write_plot(out, summary)),
            "json": str(out / "study.json")}
