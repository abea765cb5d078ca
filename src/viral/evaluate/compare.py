"""Side-by-side comparison of two evaluation results: `viral eval compare A.json B.json`.

Each side is a summary file written by `viral eval --output`, or a folder of them (every `*.json`
in it that has a "benchmark" key). Rows pair up by benchmark and metric; each benchmark's headline
metric (the paper's number) comes first, marked with `*`, then every other metric flattened to a
dotted name ("random.f1", "subtasks.OCR.acc_plus"). The last column is B - A.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viral.evaluate.base import DataError


@dataclass
class ComparisonRow:
    benchmark: str
    metric: str
    a: float | None
    b: float | None
    headline: bool = False

    @property
    def difference(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        return round(self.b - self.a, 4)


def load_results(path: Path | str) -> dict[str, dict[str, Any]]:
    """Summaries by benchmark name, from one summary file or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"results not found: {path}")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    results: dict[str, dict[str, Any]] = {}
    for file in files:
        try:
            summary = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{file}: not valid JSON ({error.msg})") from error
        if not isinstance(summary, dict) or "benchmark" not in summary or "metrics" not in summary:
            if path.is_dir():
                continue  # some other JSON file in the folder
            raise DataError(f"{file}: not a `viral eval` results file (no 'benchmark'/'metrics')")
        if summary["benchmark"] in results:
            raise DataError(f"{path}: two results for benchmark {summary['benchmark']!r}")
        results[summary["benchmark"]] = summary
    if not results:
        raise DataError(f"{path}: no `viral eval` results files in it")
    return results


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"random": {"f1": 80.0}} -> {"random.f1": 80.0}; non-numeric leaves are dropped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def compare_results(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[ComparisonRow]:
    """One row per (benchmark, metric) present on either side, headline metric first."""
    rows = []
    for benchmark in list(a) + [name for name in b if name not in a]:
        a_metrics = flatten_metrics(a[benchmark]["metrics"]) if benchmark in a else {}
        b_metrics = flatten_metrics(b[benchmark]["metrics"]) if benchmark in b else {}
        headline = (a.get(benchmark) or b.get(benchmark)).get("headline", {}).get("metric")
        names = list(a_metrics) + [name for name in b_metrics if name not in a_metrics]
        if headline in names:
            names.remove(headline)
            names.insert(0, headline)
        for name in names:
            rows.append(ComparisonRow(benchmark, name, a_metrics.get(name), b_metrics.get(name), name == headline))
    return rows


def format_comparison(rows: list[ComparisonRow], a_label: str = "A", b_label: str = "B") -> str:
    """A plain-text table: benchmark, metric, A, B, B - A."""

    def number(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:+.2f}" if signed else f"{value:.2f}"

    header = ["benchmark", "metric", a_label, b_label, f"{b_label} - {a_label}"]
    table = [header] + [
        [row.benchmark, row.metric + (" *" if row.headline else ""), number(row.a), number(row.b), number(row.difference, True)]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines = []
    for position, line in enumerate(table):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])] + [
            cell.rjust(width) for cell, width in zip(line[2:], widths[2:])
        ]
        lines.append("  ".join(cells).rstrip())
        if position == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("* the benchmark's headline metric (the number the paper reports)")
    return "\n".join(lines)
