"""MMVP (Tong et al. 2024): 150 CLIP-blind image pairs, one two-option question per image.

Local copy (`--data DIR`, as `MMVP/MMVP` ships it): `Questions.csv` with columns Index (spelt
"lndex" in some releases), Question, Options ("(a) Open (b) Closed"), Correct Answer ("(a)"), and
the images `{Index}.jpg` in `MMVP Images/` (or `Images/`, `images/`, or `DIR` itself).

Prompt (VIRAL's eval_mmvp.py): the question, the options rewritten as "A. Open\\nB. Closed", then
"Answer with the option's letter from the given choices directly."
Metrics: pair accuracy (the paper's number: both questions of a pair right; a pair is two
consecutive indices 1-2, 3-4, ...; a pair with a member missing is left out and counted), plus
per-question accuracy.
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
    percent,
    read_csv,
    record_error,
    require,
    require_path,
)
from viral.evaluate.parsing import parse_choice

MMVP_SUFFIX = "Answer with the option's letter from the given choices directly."
INDEX_COLUMNS = ("Index", "lndex", "index")
IMAGE_DIRS = ("MMVP Images", "Images", "images", ".")
_OPTION = re.compile(r"\(([a-z])\)\s*")
_ANSWER = re.compile(r"^\(?\s*([a-zA-Z])\s*\)?$")


def split_options(options: str) -> list[str]:
    """ "(a) Open (b) Closed" -> ["Open", "Closed"]."""
    parts = _OPTION.split(options.strip())
    # parts = ["", "a", "Open ", "b", "Closed"]
    return [text.strip() for text in parts[2::2]]


class MMVP(Benchmark):
    name = "mmvp"
    headline = "pair_accuracy"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        csv_file = data if data.is_file() else find_first(data, ["Questions.csv", "questions.csv"])
        if csv_file is None:
            raise DataError(f"{data}: no Questions.csv")
        root = csv_file.parent
        image_dir = find_first(root, IMAGE_DIRS[:-1]) or root
        rows = read_csv(csv_file)
        if rows and not any(column in rows[0] for column in INDEX_COLUMNS):
            raise DataError(f"{csv_file}: no index column (looked for {INDEX_COLUMNS}); columns are {list(rows[0])}")
        records = []
        for position, row in enumerate(rows):
            index_column = next(column for column in INDEX_COLUMNS if column in row)
            raw_index = require(row, index_column, csv_file, position)
            try:
                index = int(str(raw_index).strip())
            except ValueError:
                raise record_error(csv_file, position, index_column, f"not an integer: {raw_index!r}") from None
            options = split_options(str(require(row, "Options", csv_file, position)))
            if len(options) < 2:
                raise record_error(csv_file, position, "Options", "expected '(a) ... (b) ...'")
            letters = string.ascii_uppercase[: len(options)]
            answer_match = _ANSWER.match(str(require(row, "Correct Answer", csv_file, position)).strip())
            if not answer_match or answer_match.group(1).upper() not in letters:
                raise record_error(csv_file, position, "Correct Answer", f"expected one of the options, got {row['Correct Answer']!r}")
            options_text = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, options))
            records.append(
                Record(
                    question_id=str(index),
                    question=f"{str(require(row, 'Question', csv_file, position)).strip()}\n{options_text}",
                    answer=answer_match.group(1).upper(),
                    image=ImageRef.from_path(image_dir / f"{index}.jpg"),
                    letters=letters,
                    groups={"pair": (index - 1) // 2},
                )
            )
        if not records:
            raise DataError(f"{csv_file}: no questions")
        return records

    def build_prompt(self, record: Record) -> str:
        return f"{record.question}\n{MMVP_SUFFIX}"

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_choice(output, record.letters)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        pairs: dict[int, list[Prediction]] = {}
        for prediction in predictions:
            pairs.setdefault(prediction.record.groups["pair"], []).append(prediction)
        complete = [members for members in pairs.values() if len(members) == 2]
        pairs_right = sum(all(member.correct for member in members) for members in complete)
        return ScoreReport(
            metrics={
                "pair_accuracy": percent(pairs_right, len(complete)),
                "question_accuracy": accuracy(predictions),
            },
            counts={"pairs": len(complete), "incomplete_pairs": len(pairs) - len(complete), "questions": len(predictions)},
        )
