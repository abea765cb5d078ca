"""MMStar (Chen et al. 2024): 1500 vision-indispensable multiple-choice questions.

Local copy (`--data PATH`): the `Lin-Chen/MMStar` parquet (`mmstar.parquet`, or every
`*.parquet` under PATH), columns `index`, `question` (with its options, "Options: A: ..., B: ..."),
`image` (embedded), `answer` (a letter), `category`, `l2_category`.

Prompt (VIRAL's eval_mmstar.py): the question + "\\n" + the CV-Bench suffix.
Parsing: the first standalone option letter (of the letters the question offers; A-D by default).
Metrics: overall accuracy (the paper's number), accuracy per category and per l2 category.
"""

from __future__ import annotations

import re
from pathlib import Path

from viral.evaluate.base import (
    Benchmark,
    DataError,
    Prediction,
    Record,
    ScoreReport,
    accuracy,
    group_by,
    read_table,
    record_error,
    require,
    require_path,
    table_image,
)
from viral.evaluate.cvbench import CVBENCH_SUFFIX
from viral.evaluate.parsing import parse_choice

# An option label in the question text: "A:" / "A." at the start of a line or after ", " / " ".
_OPTION_LABEL = re.compile(r"(?:^|[\s,(])([A-F])\s*[:.]\s", re.MULTILINE)


def option_letters(question: str) -> str:
    """The option letters a question offers ("ABCD" when fewer than two are found)."""
    options_part = question.split("Options:", 1)[-1]
    found = sorted(set(_OPTION_LABEL.findall(options_part)))
    return "".join(found) if len(found) >= 2 else "ABCD"


class MMStar(Benchmark):
    name = "mmstar"
    headline = "accuracy"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        tables = [data] if data.suffix == ".parquet" else sorted(data.rglob("*.parquet"))
        if not tables:
            raise DataError(f"{data}: no MMStar parquet (expected mmstar.parquet from Lin-Chen/MMStar)")
        records = []
        for table in tables:
            for index, row in enumerate(read_table(table)):
                question = str(require(row, "question", table, index))
                letters = option_letters(question)
                answer = str(require(row, "answer", table, index)).strip().strip("()").upper()
                if answer not in letters:
                    raise record_error(table, index, "answer", f"{answer!r} is not one of the options {letters}")
                records.append(
                    Record(
                        question_id=str(row.get("index", index)),
                        question=question,
                        answer=answer,
                        image=table_image(require(row, "image", table, index), f"{table} record {index} field 'image'"),
                        letters=letters,
                        groups={
                            "category": str(require(row, "category", table, index)),
                            "l2_category": str(require(row, "l2_category", table, index)),
                        },
                    )
                )
        return records

    def build_prompt(self, record: Record) -> str:
        return f"{record.question}\n{CVBENCH_SUFFIX}"

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_choice(output, record.letters)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        by_category = group_by(predictions, "category")
        by_l2 = group_by(predictions, "l2_category")
        return ScoreReport(
            metrics={
                "accuracy": accuracy(predictions),
                "category": {name: accuracy(group) for name, group in by_category.items()},
                "l2_category": {name: accuracy(group) for name, group in by_l2.items()},
            },
            counts={
                "category": {name: len(group) for name, group in by_category.items()},
                "l2_category": {name: len(group) for name, group in by_l2.items()},
            },
        )
