"""POPE (Li et al. 2023): object-hallucination yes/no questions on COCO val2014, three splits.

Local copy (`--data PATH`), either layout:
- the question files of the POPE repository, one JSON object per line with `question_id`,
  `image`, `text`, `label` ("yes"/"no"): every `*.json`/`*.jsonl` in PATH (or PATH/coco) whose
  name contains "random", "popular" or "adversarial" (e.g. `coco_pope_random.json`), with the COCO
  val2014 images in `val2014/`, `images/` or PATH itself;
- the `lmms-lab/POPE` parquet (`question_id`, `question`, `answer`, `image`, `category` = split):
  every `*.parquet` under PATH.
PATH may also be one such file.

Prompt (VIRAL's eval_pope.py): the question + " Answer with only 'yes' or 'no'."
Parsing: the first standalone yes/no; anything else is unparsed (wrong, never "yes").
Metrics per split, "yes" as the positive class: accuracy, precision = TP / said-yes,
recall = TP / label-yes, F1, yes-ratio = said-yes / all; the paper's number (`paper_accuracy`)
is the mean accuracy of the random and popular splits (of the splits present if neither is).
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
    confusion_metrics,
    find_first,
    group_by,
    read_jsonl,
    read_table,
    record_error,
    require,
    require_path,
    table_image,
)
from viral.evaluate.parsing import parse_yes_no

POPE_SUFFIX = "Answer with only 'yes' or 'no'."
SPLITS = ("random", "popular", "adversarial")
PAPER_SPLITS = ("random", "popular")


def split_of(name: str) -> str | None:
    lowered = name.lower()
    return next((split for split in SPLITS if split in lowered), None)


class POPE(Benchmark):
    name = "pope"
    headline = "paper_accuracy"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        if data.is_file():
            files = [data]
        else:
            files = sorted(data.rglob("*.parquet"))
            if not files:
                search_dirs = [data] + ([data / "coco"] if (data / "coco").is_dir() else [])
                files = sorted(
                    (
                        file
                        for folder in search_dirs
                        for pattern in ("*.json", "*.jsonl")
                        for file in folder.glob(pattern)
                        if split_of(file.name)
                    ),
                    key=lambda file: (SPLITS.index(split_of(file.name)), file.name),
                )
        if not files:
            raise DataError(
                f"{data}: no POPE data; expected coco_pope_{{random,popular,adversarial}}.json question "
                "files or lmms-lab/POPE parquet files"
            )
        records: list[Record] = []
        for file in files:
            if file.suffix == ".parquet":
                records.extend(self._load_table(file))
            else:
                records.extend(self._load_question_file(file, data if data.is_dir() else data.parent))
        return records

    @staticmethod
    def _load_question_file(file: Path, root: Path) -> list[Record]:
        split = split_of(file.name)
        if split is None:
            raise DataError(f"{file}: cannot tell the split; the name must contain one of {SPLITS}")
        image_dir = find_first(root, ["val2014", "images", "coco/val2014"]) or root
        records = []
        for index, row in enumerate(read_jsonl(file)):
            records.append(
                Record(
                    question_id=f"{split}-{require(row, 'question_id', file, index)}",
                    question=str(require(row, "text", file, index)).strip(),
                    answer=_label(require(row, "label", file, index), file, index, "label"),
                    image=ImageRef.from_path(image_dir / str(require(row, "image", file, index))),
                    groups={"split": split},
                )
            )
        return records

    @staticmethod
    def _load_table(file: Path) -> list[Record]:
        records = []
        for index, row in enumerate(read_table(file)):
            split = split_of(str(row.get("category") or "")) or split_of(file.name)
            if split is None:
                raise record_error(file, index, "category", f"expected one of {SPLITS}, got {row.get('category')!r}")
            where = f"{file} record {index} field 'image'"
            records.append(
                Record(
                    question_id=f"{split}-{require(row, 'question_id', file, index)}",
                    question=str(require(row, "question", file, index)).strip(),
                    answer=_label(require(row, "answer", file, index), file, index, "answer"),
                    image=table_image(require(row, "image", file, index), where, base_dir=file.parent),
                    groups={"split": split},
                )
            )
        return records

    def build_prompt(self, record: Record) -> str:
        return f"{record.question} {POPE_SUFFIX}"

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_yes_no(output)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        by_split = group_by(predictions, "split")
        metrics: dict = {}
        for split in SPLITS:
            if split in by_split:
                group = by_split[split]
                metrics[split] = confusion_metrics([p.record.answer for p in group], [p.parsed for p in group])
        paper_splits = [split for split in PAPER_SPLITS if split in metrics] or list(metrics)
        paper = sum(metrics[split]["accuracy"] for split in paper_splits) / len(paper_splits) if paper_splits else 0.0
        return ScoreReport(
            metrics={"paper_accuracy": round(paper, 4), **metrics},
            counts={split: len(group) for split, group in by_split.items()},
        )


def _label(value, source, index, field_name) -> str:
    label = str(value).strip().lower()
    if label not in ("yes", "no"):
        raise record_error(source, index, field_name, f"expected 'yes' or 'no', got {value!r}")
    return label
