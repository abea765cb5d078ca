"""CV-Bench 2D (Cambrian-1, `nyu-visionx/CV-Bench`): object counting and spatial relation.

Local copy, either layout the publishers ship:
- `test_2d.jsonl` (or `test.jsonl`) + the `img/` folder its `filename` field points into;
- `test_2d.parquet` / `test.parquet` (images embedded), or a folder written by `save_to_disk`.
`--data` may name the folder or the file. Records of the 3D tasks (Depth, Distance) are left out.

Fields used: `prompt` (question + lettered choices), `answer` like "(C)", `task` (Count/Relation),
`source` (ADE20K/COCO), `filename` or `image`; `idx` as the question id when present.

Prompt (VIRAL's eval_cvbench.py): the record's `prompt` + "\\n" + CVBENCH_SUFFIX.
Metrics: overall accuracy over both tasks (the paper's number), Count and Relation accuracy, and
the official per-source average (mean of the ADE20K and COCO accuracies, as CV-Bench's README
computes "2D accuracy").
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from viral.evaluate.base import (
    Benchmark,
    DataError,
    ImageRef,
    Prediction,
    Record,
    ScoreReport,
    accuracy,
    find_first,
    group_by,
    is_saved_dataset,
    read_jsonl,
    read_saved_dataset,
    read_table,
    record_error,
    require,
    require_path,
    table_image,
)
from viral.evaluate.parsing import parse_choice

CVBENCH_SUFFIX = (
    "Base your answer on reasoning. Your final answer must be only the single capital letter "
    "corresponding to the correct choice."
)
TASKS_2D = {"count": "Count", "relation": "Relation"}
_LETTER_ANSWER = re.compile(r"^\(?\s*([A-Z])\s*\)?$")
_PROMPT_LETTERS = re.compile(r"\(([A-Z])\)")

JSONL_NAMES = ("test_2d.jsonl", "test.jsonl")
TABLE_NAMES = ("test_2d.parquet", "test.parquet")


def parse_letter_answer(value: str, source: Path | str, index: int, field_name: str = "answer") -> str:
    """ "(C)" / "C" -> "C"; anything else is a DataError naming the record."""
    match = _LETTER_ANSWER.match(str(value).strip())
    if not match:
        raise record_error(source, index, field_name, f"expected an option letter like '(C)', got {value!r}")
    return match.group(1)


class CVBench(Benchmark):
    name = "cvbench"
    headline = "accuracy"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        rows, image_root = self._read_rows(data)
        records = []
        for index, row in enumerate(rows):
            source_file = row.pop("__source__", str(data))
            if str(row.get("type", "2D")).upper() != "2D":
                continue
            task = str(require(row, "task", source_file, index)).strip()
            if task.lower() not in TASKS_2D:
                continue  # a 3D task in a full test file
            prompt = str(require(row, "prompt", source_file, index))
            answer = parse_letter_answer(require(row, "answer", source_file, index), source_file, index)
            letters = self._letters(row, prompt)
            if answer not in letters:
                raise record_error(source_file, index, "answer", f"{answer!r} is not one of the choices {letters}")
            image = self._image(row, image_root, source_file, index)
            records.append(
                Record(
                    question_id=str(row.get("idx", index)),
                    question=prompt,
                    answer=answer,
                    image=image,
                    letters=letters,
                    groups={
                        "task": TASKS_2D[task.lower()],
                        "source": str(require(row, "source", source_file, index)),
                    },
                )
            )
        if not records:
            raise DataError(f"{data}: no CV-Bench 2D (Count/Relation) records found")
        return records

    @staticmethod
    def _read_rows(data: Path) -> tuple[list[dict], Path]:
        if data.is_file():
            if data.suffix == ".jsonl":
                return _with_source(read_jsonl(data), data), data.parent
            if data.suffix == ".parquet":
                return read_table(data), data.parent
            raise DataError(f"{data}: expected a .jsonl or .parquet CV-Bench file")
        jsonl = find_first(data, JSONL_NAMES)
        if jsonl is not None:
            return _with_source(read_jsonl(jsonl), jsonl), data
        table = find_first(data, TABLE_NAMES)
        if table is not None:
            return read_table(table), data
        if is_saved_dataset(data):
            return read_saved_dataset(data), data
        raise DataError(
            f"{data}: no CV-Bench data found; expected one of {JSONL_NAMES + TABLE_NAMES} "
            "or a folder written by datasets' save_to_disk"
        )

    @staticmethod
    def _letters(row: dict, prompt: str) -> str:
        choices = row.get("choices")
        if choices:
            return string.ascii_uppercase[: len(choices)]
        found = "".join(dict.fromkeys(_PROMPT_LETTERS.findall(prompt)))
        return found or "ABCD"

    @staticmethod
    def _image(row: dict, image_root: Path, source_file: str, index: int) -> ImageRef:
        cell = row.get("image")
        if isinstance(cell, (bytes, bytearray)) or (isinstance(cell, dict) and cell.get("bytes")):
            return table_image(cell, f"{source_file} record {index} field 'image'")
        name = row.get("filename") or (cell.get("path") if isinstance(cell, dict) else cell)
        if not name:
            raise record_error(source_file, index, "filename", "missing, and no image bytes in 'image'")
        return ImageRef.from_path(image_root / name)

    def build_prompt(self, record: Record) -> str:
        return f"{record.question}\n{CVBENCH_SUFFIX}"

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_choice(output, record.letters)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        by_task = group_by(predictions, "task")
        by_source = group_by(predictions, "source")
        source_accuracy = {source: accuracy(group) for source, group in by_source.items()}
        metrics = {
            "accuracy": accuracy(predictions),
            **{task.lower(): accuracy(by_task.get(task, [])) for task in TASKS_2D.values()},
            # CV-Bench README: 2D accuracy = mean over sources (ADE20K, COCO) of per-source accuracy.
            "source_average": round(sum(source_accuracy.values()) / len(source_accuracy), 4) if source_accuracy else 0.0,
            "sources": source_accuracy,
        }
        counts = {
            "tasks": {task: len(group) for task, group in by_task.items()},
            "sources": {source: len(group) for source, group in by_source.items()},
        }
        return ScoreReport(metrics=metrics, counts=counts)


def _with_source(rows: list[dict], source: Path) -> list[dict]:
    for row in rows:
        row["__source__"] = str(source)
    return rows
