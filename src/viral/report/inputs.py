"""What a study or run folder holds, read once for the HTML report; absent parts are None or empty.

A study folder (`viral study` / `viral demo`) has `study.json` and `seed-K/{baseline,viral}/`; a run folder
(`viral train`) has `metrics.jsonl` and maybe `eval/shapes.json` + `eval/predictions.jsonl`,
`eval_curve.jsonl`, `run.json`. Analysis outputs (`cknna.json`, `attention_entropy.json` from
`viral analyze ... --out`) are picked up anywhere below the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from viral.evaluate.base import DataError, read_json, read_jsonl
from viral.study.pipeline import ARMS, CURVE_FILE, EVAL_DIR, EVAL_FILE, RUN_RECORD
from viral.train import METRICS_NAME, RUN_CONFIG_NAME

STUDY_FILE = "study.json"
PREDICTIONS_FILE = "predictions.jsonl"
ANALYSIS_FILES = {"cknna": "cknna.json", "attention": "attention_entropy.json"}


@dataclass
class RunData:
    """One training run's files: `label` is the arm (study) or the folder's name (single run)."""

    label: str
    dir: Path
    seed: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    curve: list[dict[str, Any]] = field(default_factory=list)  # eval_curve.jsonl rows
    eval_summary: dict[str, Any] | None = None  # eval/shapes.json
    predictions: list[dict[str, Any]] = field(default_factory=list)  # eval/predictions.jsonl rows
    record: dict[str, Any] | None = None  # run.json
    config: dict[str, Any] | None = None  # viral_config.yaml


@dataclass
class ReportInputs:
    """Everything the report shows, as read from `root`."""

    root: Path
    kind: str  # "study" | "run"
    summary: dict[str, Any] | None  # study.json
    runs: list[RunData]
    data_dir: Path | None  # the ShapesBench folder the predictions refer to, when it is on disk
    questions: dict[str, dict[str, Any]]  # eval.jsonl rows by question_id (image, question, answer, type)
    analyses: dict[str, list[tuple[Path, dict[str, Any]]]]  # "cknna" / "attention" -> (file, its JSON)


def _optional_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def read_run(run_dir: Path, label: str | None = None, seed: str | None = None) -> RunData:
    """A run folder's files; any of them may be missing (an unfinished or unevaluated run)."""
    config_file = run_dir / RUN_CONFIG_NAME
    return RunData(
        label=label or run_dir.name, dir=run_dir, seed=seed,
        metrics=_optional_jsonl(run_dir / METRICS_NAME),
        curve=_optional_jsonl(run_dir / CURVE_FILE),
        eval_summary=_optional_json(run_dir / EVAL_DIR / EVAL_FILE),
        predictions=_optional_jsonl(run_dir / EVAL_DIR / PREDICTIONS_FILE),
        record=_optional_json(run_dir / RUN_RECORD),
        config=yaml.safe_load(config_file.read_text()) if config_file.is_file() else None,
    )


def _study_run_dir(root: Path, seed: str, arm: str, recorded: str | None) -> Path:
    """The run's folder as study.json recorded it, or where it sits under `root` if the study was moved."""
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return root / f"seed-{seed}" / arm


def find_analyses(root: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """`viral analyze` outputs below `root` (checkpoint folders not searched), in path order."""
    files: dict[str, list[Path]] = {name: [] for name in ANALYSIS_FILES}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith("checkpoint-")]
        for kind, file_name in ANALYSIS_FILES.items():
            if file_name in names:
                files[kind].append(Path(folder) / file_name)
    return {kind: [(path, read_json(path)) for path in sorted(paths)] for kind, paths in files.items()}


def _read_questions(data_dir: Path | None) -> dict[str, dict[str, Any]]:
    if data_dir is None or not (data_dir / "eval.jsonl").is_file():
        return {}
    return {str(row["question_id"]): row for row in read_jsonl(data_dir / "eval.jsonl") if "question_id" in row}


def read_inputs(root: str | Path) -> ReportInputs:
    """Read a study folder (it has study.json) or a run folder; an error when it holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    analyses = find_analyses(root)
    if (root / STUDY_FILE).is_file():
        summary = read_json(root / STUDY_FILE)
        if not isinstance(summary, dict) or "runs" not in summary:
            raise DataError(f"{root / STUDY_FILE}: not a study summary (no 'runs' field)")
        runs = [read_run(_study_run_dir(root, seed, arm, summary["runs"][seed].get(arm, {}).get("dir")), arm, seed)
                for seed in summary["runs"] for arm in ARMS]
        data = Path(summary["data"]) if summary.get("data") else root / "shapes"
        kind = "study"
    else:
        run = read_run(root)
        if not (run.metrics or run.eval_summary or run.predictions or any(analyses.values())):
            raise DataError(f"{root}: neither a study folder ({STUDY_FILE}) nor a run folder ({METRICS_NAME}, "
                            f"{EVAL_DIR}/{EVAL_FILE}) nor `viral analyze` output "
                            f"({', '.join(ANALYSIS_FILES.values())})")
        summary, runs, kind = None, [run], "run"
        recorded = (run.eval_summary or {}).get("data")
        data = Path(recorded) if recorded else None
        if data is not None and data.is_file():  # `viral eval --data DIR/eval.jsonl`
            data = data.parent
    data = data if data is not None and data.is_dir() else None
    return ReportInputs(root=root, kind=kind, summary=summary, runs=runs, data_dir=data,
                        questions=_read_questions(data), analyses=analyses)
