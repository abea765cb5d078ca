"""ShapesBench: the eval split of ShapesWorld, written by `viral shapes generate --out DIR`.

Local copy (`--data DIR`): `DIR/eval.jsonl`, one JSON object per line with `question_id`,
`image` (relative to DIR), `question` (carrying its own instruction, e.g. "How many red circles
are there? Answer with a number."), `answer` ("2", "yes", "red", ...) and `type`
(count / relation / existence / colour / position).

Prompt: the question as written. Parsing: normalised exact match - the first word or number of
the output, lowercased, number words mapped to digits ("Two." -> "2", "Yes, there is" -> "yes"),
compared with the answer normalised the same way.
Metrics: accuracy overall and per question type; for the yes/no existence questions also POPE's
confusion metrics (`existence_recall` = the yes rate when the truth is yes, `existence_false_positive_rate`
= the yes rate when it is no, precision, F1, yes-ratio); for relation and position also the accuracy per
axis (`position_horizontal`: "left or right" questions, `position_vertical`: "top or bottom", likewise
`relation_horizontal` / `relation_vertical`), since a model can read one axis of an image and not the other.
"""

from __future__ import annotations

from pathlib import Path

from viral.evaluate.base import (
    Benchmark,
    DataError,
    ImageRef,
    Prediction,
    Record,
    ScoreReport,
    accuracy,
    confusion_metrics,
    group_by,
    read_jsonl,
    record_error,
    require,
    require_path,
)
from viral.evaluate.parsing import normalise_short_answer, parse_short_answer

QUESTION_TYPES = ("count", "relation", "existence", "colour", "position")
AXIS_TYPES = ("position", "relation")  # the types asked along one axis of the image
AXES = {"left": "horizontal", "right": "horizontal", "top": "vertical", "bottom": "vertical", "above": "vertical",
        "below": "vertical"}  # each answer of those types -> its axis
AXIS_GROUPS = tuple(f"{name}_{axis}" for name in AXIS_TYPES for axis in ("horizontal", "vertical"))


def axis_group(question_type: str, answer: str) -> str | None:
    """'position_horizontal' for a position question answered 'left' or 'right' (the answer as ShapesBench
    normalises it: "Left." counts too), ...; None off those types."""
    axis = AXES.get(normalise_short_answer(answer) or "")
    return f"{question_type}_{axis}" if question_type in AXIS_TYPES and axis else None


class ShapesBench(Benchmark):
    name = "shapes"
    headline = "accuracy"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        file = data if data.is_file() else data / "eval.jsonl"
        if not file.is_file():
            raise DataError(f"{data}: no eval.jsonl (write one with `viral shapes generate --out {data}`)")
        records = []
        for index, row in enumerate(read_jsonl(file)):
            question_type = str(require(row, "type", file, index))
            if question_type not in QUESTION_TYPES:
                raise record_error(file, index, "type", f"expected one of {QUESTION_TYPES}, got {question_type!r}")
            answer = normalise_short_answer(str(require(row, "answer", file, index)))
            if answer is None:
                raise record_error(file, index, "answer", f"no word or number in {row['answer']!r}")
            records.append(
                Record(
                    question_id=str(require(row, "question_id", file, index)),
                    question=str(require(row, "question", file, index)),
                    answer=answer,
                    image=ImageRef.from_path(file.parent / str(require(row, "image", file, index))),
                    groups={"type": question_type, "axis": axis_group(question_type, answer)},
                )
            )
        if not records:
            raise DataError(f"{file}: no questions")
        return records

    def build_prompt(self, record: Record) -> str:
        return record.question

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_short_answer(output)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        by_type = group_by(predictions, "type")
        by_axis = group_by(predictions, "axis")
        existence = by_type.get("existence", [])
        confusion = confusion_metrics([p.record.answer for p in existence], [p.parsed for p in existence])
        return ScoreReport(
            metrics={
                "accuracy": accuracy(predictions),
                **{name: accuracy(by_type[name]) for name in QUESTION_TYPES if name in by_type},
                **{name: accuracy(by_axis[name]) for name in AXIS_GROUPS if name in by_axis},
                **({f"existence_{key}": value for key, value in confusion.items() if key != "accuracy"}
                   if existence else {}),
            },
            counts={**{name: len(group) for name, group in by_type.items()},
                    **{name: len(by_axis[name]) for name in AXIS_GROUPS if name in by_axis}},
        )
