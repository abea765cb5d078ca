"""`write_html_report(folder)`: one self-contained HTML page for a study or run folder (Jinja2 template).

The page holds what the folder has and skips what it lacks: the study table (each arm's mean ± std,
the paired difference with its 95% CI and tests, as in study.md) and the per-seed scores, or a run's
ShapesBench scores; loss curves; ShapesBench during training; CKNNA per layer and attention entropy
(`viral analyze` outputs below the folder); and a question browser - image, question, reference answer,
each arm's answer - filtered by seed, type and outcome ("VIRAL right, baseline wrong", ...) with a few
lines of inline JavaScript. Figures and images are `data:` URIs, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from viral.evaluate.shapes import AXIS_GROUPS
from viral.report import figures
from viral.report.inputs import ReportInputs, RunData, read_inputs
from viral.study.pipeline import ARMS
from viral.study.report import (ARM_LABELS, LABELS, MAIN_HEADER, TYPES, axis_rows, comparison_rows, format_p,
                                premise_sentence)

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
DEFAULT_MAX_QUESTIONS = 1000  # per seed: the browser holds the first questions of the benchmark
OUTCOMES = {  # outcome code -> label, for two arms and for one run
    "viral-only": "VIRAL right, baseline wrong",
    "baseline-only": "baseline right, VIRAL wrong",
    "both-right": "both right",
    "both-wrong": "both wrong",
    "right": "right",
    "wrong": "wrong",
}


def _type_label(name: str) -> str:
    return "all" if name == "accuracy" else name


def _study_section(summary: dict[str, Any]) -> dict[str, Any]:
    """The main table (rows as study.md has them, keyed by type), per-seed scores, warnings and the premise."""
    statistics = summary.get("statistics", {})
    types = [name for name in TYPES if name in statistics.get("types", {})]
    per_seed = []
    for seed, runs in summary["runs"].items():
        mcnemar = summary.get("mcnemar_per_seed", {}).get(seed, {}).get("accuracy", {})
        for arm in ARMS:
            run = runs.get(arm, {})
            per_seed.append({"seed": seed, "arm": ARM_LABELS[arm],
                             "scores": [run.get("scores", {}).get(t) for t in types],
                             "mcnemar": format_p(mcnemar.get("p_value")) if arm == "viral" else "",
                             "train_seconds": run.get("train_seconds")})
    learnable = summary.get("above_chance") or {}
    stuck = [f"{ARM_LABELS[arm]}: {name}" for arm in ARMS for name, ok in learnable.get(arm, {}).items() if not ok]
    probes = (summary.get("encoders") or {}).get("probes")
    settings = summary.get("settings", {})
    return {
        "header": MAIN_HEADER,
        "rows": [{"type": name, "cells": cells} for name, cells in zip(types, comparison_rows(summary))],
        "axis_rows": axis_rows(summary),
        "types": [_type_label(t) for t in types],
        "per_seed": per_seed,
        "stuck": stuck,
        "margin": learnable.get("margin"),
        "premise": premise_sentence(probes) if probes else None,
        "command": summary.get("command"),
        "seeds": statistics.get("seeds", list(summary["runs"])),
        "settings": settings,
        "minutes": (summary.get("seconds") or {}).get("total", 0) / 60,
    }


def _run_section(run: RunData) -> dict[str, Any]:
    """A single run's facts: its alignment settings, steps, timings and ShapesBench scores when evaluated."""
    config = run.config or {}
    align, train = config.get("align") or {}, config.get("train") or {}
    facts = []
    if align:
        facts.append(("VIRAL", "on" if align.get("vra_loss") else "off"))
        if align.get("vra_loss"):
            facts += [("target layers", align.get("target_layers")), ("λ", align.get("vra_weight")),
                      ("teacher", align.get("vra_target"))]
    if train:
        facts += [("stage", train.get("stage")), ("max steps", train.get("max_steps"))]
    if run.metrics:
        facts.append(("logged steps", len(run.metrics)))
    if run.record:
        facts += [(key.replace("_", " "), run.record[key]) for key in ("train_seconds", "eval_seconds")
                  if key in run.record]
    scores = []
    if run.eval_summary:
        metrics, counts = run.eval_summary.get("metrics", {}), run.eval_summary.get("counts", {})
        scores = [{"type": _type_label(name), "accuracy": metrics[name],
                   "questions": counts.get("evaluated") if name == "accuracy" else counts.get(name)}
                  for name in TYPES if isinstance(metrics.get(name), (int, float))]
    return {"facts": [(name, value) for name, value in facts if value is not None], "scores": scores}


def _references(results: dict[str, Any]) -> list[str]:
    names = {"encoder": "encoder: the vision features entering the projector", "teacher": "teacher: the VFM's"}
    found = dict.fromkeys(reference for result in results.values() for reference in result["curves"])
    return [names.get(reference, reference) for reference in found]


def _analysis_sections(inputs: ReportInputs) -> list[dict[str, Any]]:
    """CKNNA per layer and attention entropy per layer: the plot and the numbers of each JSON found."""
    sections = []
    for path, data in inputs.analyses.get("cknna", []):
        results = data.get("results") or {}
        if not results:
            continue
        first = next(iter(results.values()))
        rows = [{"name": f"{label} vs {reference}", "values": curve["mean"]}
                for label, result in results.items() for reference, curve in result["curves"].items()]
        sections.append({"id": f"cknna-{len(sections)}", "kind": "cknna", "title": "CKNNA per LLM layer",
                         "file": path.relative_to(inputs.root), "figure": figures.cknna_figure(results),
                         "layers": first["layers"], "rows": rows,
                         "caption": f"Mutual k-NN kernel alignment (k={first.get('k')}) of the image-token states with "
                                    f"reference features ({', '.join(_references(results))}), over "
                                    f"{first.get('n_images')} images; layer 0 = the LLM's input embeddings."})
    for path, data in inputs.analyses.get("attention", []):
        results = data.get("results") or {}
        if not results:
            continue
        first = next(iter(results.values()))
        rows = [{"name": label, "values": result["mean_entropy_per_layer"]} for label, result in results.items()]
        sections.append({"id": f"attention-{len(sections)}", "kind": "attention",
                         "title": "Spatial entropy of text-to-image attention per layer",
                         "file": path.relative_to(inputs.root), "figure": figures.attention_figure(results),
                         "layers": first["layers"], "rows": rows,
                         "caption": f"Mean over heads and {first.get('n_images')} images, in nats (uniform over the "
                                    f"image = {first.get('max_entropy', 0):.2f}); lower is more focused."})
    return sections


def _question_browser(inputs: ReportInputs, max_questions: int | None) -> dict[str, Any] | None:
    """Rows of (seed, question) with every arm's answer, the outcome code, and the images they show."""
    by_seed: dict[str | None, dict[str, RunData]] = {}
    for run in inputs.runs:
        if run.predictions:
            by_seed.setdefault(run.seed, {})[run.label] = run
    if not by_seed:
        return None
    rows, images, image_keys, totals = [], {}, {}, []
    for seed, arms in by_seed.items():
        paired = inputs.kind == "study" and all(arm in arms for arm in ARMS)
        order = [arms[arm] for arm in ARMS if arm in arms] if inputs.kind == "study" else list(arms.values())
        answers = [{str(p["question_id"]): p for p in run.predictions} for run in order]
        question_ids = list(answers[0])
        totals.append(len(question_ids))
        for question_id in question_ids[:max_questions] if max_questions else question_ids:
            first = answers[0][question_id]
            outputs = [{"arm": ARM_LABELS.get(run.label, run.label), "prediction": answer.get(question_id)}
                       for run, answer in zip(order, answers)]
            correct = [bool(o["prediction"] and o["prediction"].get("correct")) for o in outputs]
            if paired:
                outcome = {(True, True): "both-right", (False, False): "both-wrong", (False, True): "viral-only",
                           (True, False): "baseline-only"}[(correct[0], correct[1])]
            else:
                outcome = "right" if correct[0] else "wrong"
            record = inputs.questions.get(question_id, {})
            image_key = None
            if record.get("image") and inputs.data_dir is not None:
                image_path = inputs.data_dir / record["image"]
                if image_path.is_file():
                    image_key = image_keys.setdefault(str(image_path), f"i{len(image_keys)}")
                    if image_key not in images:
                        images[image_key] = figures.thumbnail_uri(image_path)
            rows.append({"seed": "" if seed is None else seed, "id": question_id, "type": first.get("type", ""),
                         "question": record.get("question") or first.get("prompt", ""),
                         "answer": first.get("answer", record.get("answer", "")), "image": image_key,
                         "image_name": record.get("image", ""), "outputs": outputs, "outcome": outcome})
    present = {row["outcome"] for row in rows}
    return {
        "rows": rows, "images": images,
        "arms": [output["arm"] for output in rows[0]["outputs"]] if rows else [],
        "seeds": [s for s in by_seed if s is not None],
        "types": [t for t in TYPES if any(row["type"] == t for row in rows)],
        "outcomes": [(code, label) for code, label in OUTCOMES.items() if code in present or
                     (code == "viral-only" and inputs.kind == "study")],
        "total_per_seed": max(totals), "max_questions": max_questions,
        "data_dir": inputs.data_dir,
    }


def build_context(inputs: ReportInputs, max_questions: int | None = DEFAULT_MAX_QUESTIONS) -> dict[str, Any]:
    """Everything the template shows; None for an absent section."""
    summary = inputs.summary
    chance = (summary or {}).get("chance") or {}
    context = {
        "title": "ShapesWorld study: baseline versus VIRAL" if inputs.kind == "study" else f"Run {inputs.root.name}",
        "kind": inputs.kind,
        "root": inputs.root,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "study": _study_section(summary) if summary else None,
        "run": _run_section(inputs.runs[0]) if inputs.kind == "run" else None,
        "losses": figures.loss_figure(inputs.runs),
        "curves": figures.curve_figure(inputs.runs, [*TYPES, *AXIS_GROUPS], chance, LABELS),
        "analyses": _analysis_sections(inputs),
        "browser": _question_browser(inputs, max_questions),
        "outcome_labels": OUTCOMES,
    }
    return context


def render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("viral.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["fixed"] = lambda value, digits=2: "-" if value is None else f"{float(value):.{digits}f}"
    return environment.get_template(TEMPLATE).render(**context)


def write_html_report(folder: str | Path, out: str | Path | None = None,
                      max_questions: int | None = DEFAULT_MAX_QUESTIONS) -> Path:
    """Write the report of a study or run folder (default FOLDER/report.html) and return its path.

    `max_questions`: questions per seed in the browser (the benchmark's first ones; None or 0: all).
    """
    inputs = read_inputs(folder)
    path = Path(out) if out else inputs.root / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(build_context(inputs, max_questions or None)), encoding="utf-8")
    return path
