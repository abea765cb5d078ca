"""The interface every benchmark implements, the record it produces, and readers for local data.

A benchmark is a small class with four steps:

    load_records(data)  -> list[Record]   read the local copy in the publisher's own layout
    build_prompt(record) -> str           the question text the model sees (plus the protocol's suffix)
    parse_answer(output, record) -> str | None
    score(predictions) -> ScoreReport     the metrics of the paper's protocol

Everything here is offline: `data` is a path on disk. Bad input raises `DataError` naming the file,
the record index and the field; a missing image raises `MissingImageError` (or is skipped and
counted with `--skip-missing`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from PIL import Image

from viral.errors import UserError


class DataError(UserError, ValueError):
    """A benchmark's local data is missing or malformed; the message names file, record and field."""


class MissingImageError(DataError):
    """A record's image is not on disk (or not in the table)."""


def record_error(source: Path | str, index: int | str, field_name: str, problem: str) -> DataError:
    """A DataError worded the same way everywhere: `file: record N: field 'x': problem`."""
    return DataError(f"{source}: record {index}: field {field_name!r}: {problem}")


@dataclass(frozen=True)
class ImageRef:
    """Where a record's image lives: a file on disk, or encoded bytes read from a table.

    `where` is the human description used in errors (a path, or "file.parquet record 3 field 'image'").
    """

    where: str
    path: Path | None = None
    load_bytes: Callable[[], bytes | None] | None = None

    @classmethod
    def from_path(cls, path: Path | str) -> "ImageRef":
        return cls(where=str(path), path=Path(path))

    def exists(self) -> bool:
        if self.path is not None:
            return self.path.is_file()
        return bool(self.load_bytes and self.load_bytes())

    def open(self) -> Image.Image:
        """The image as RGB; a DataError naming the file if it cannot be read."""
        if not self.exists():
            raise MissingImageError(f"image not found: {self.where}")
        try:
            if self.path is not None:
                with Image.open(self.path) as image:
                    return image.convert("RGB")
            with Image.open(io.BytesIO(self.load_bytes())) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"cannot read image {self.where}: {error}") from error


@dataclass
class Record:
    """One benchmark question: what to ask, about which image, and the gold answer.

    `answer` is already normalised to what the parser returns (e.g. "C", "yes", "left", "2").
    `groups` holds the fields the metrics group by (task, source, split, category, pair, ...).
    """

    question_id: str
    question: str
    answer: str
    image: ImageRef | None
    groups: dict[str, Any] = field(default_factory=dict)
    letters: str = ""  # the option letters of a multiple-choice question, e.g. "ABCD"


@dataclass
class Prediction:
    """A record after generation: the prompt sent, the raw output, the parsed answer, the verdict."""

    record: Record
    prompt: str
    output: str
    parsed: str | None
    correct: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "question_id": self.record.question_id,
            "prompt": self.prompt,
            "output": self.output,
            "parsed": self.parsed,
            "answer": self.record.answer,
            "correct": self.correct,
            **self.record.groups,
        }


@dataclass
class ScoreReport:
    """Metrics (percent, nested by group) and the counts behind them (ints, nested by group)."""

    metrics: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)


def percent(correct: int | float, total: int) -> float:
    """100 * correct / total, rounded to 4 decimals; 0.0 for an empty group."""
    return round(100.0 * correct / total, 4) if total else 0.0


def accuracy(predictions: Iterable[Prediction]) -> float:
    predictions = list(predictions)
    return percent(sum(p.correct for p in predictions), len(predictions))


def confusion_metrics(labels: list[str], said: list[str | None]) -> dict[str, float]:
    """Accuracy, precision, recall (the yes rate when the truth is yes), F1, yes-ratio and the false-positive
    rate (the yes rate when the truth is no), in percent, with "yes" as positive. A recall near the
    false-positive rate means answers that do not depend on the truth.

    An unparsed answer (None) is wrong: it is neither a "yes" (so not a false positive) nor a
    correct "no".
    """
    true_positive = sum(label == "yes" and answer == "yes" for label, answer in zip(labels, said))
    said_yes = sum(answer == "yes" for answer in said)
    label_yes = sum(label == "yes" for label in labels)
    false_positive = said_yes - true_positive
    correct = sum(label == answer for label, answer in zip(labels, said))
    precision = true_positive / said_yes if said_yes else 0.0
    recall = true_positive / label_yes if label_yes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": percent(correct, len(labels)),
        "precision": round(100 * precision, 4),
        "recall": round(100 * recall, 4),
        "f1": round(100 * f1, 4),
        "yes_ratio": percent(said_yes, len(labels)),
        "false_positive_rate": percent(false_positive, len(labels) - label_yes),
    }


def group_by(predictions: Iterable[Prediction], key: str) -> dict[str, list[Prediction]]:
    """Predictions grouped by `record.groups[key]`, groups in first-seen order."""
    groups: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        groups.setdefault(str(prediction.record.groups.get(key)), []).append(prediction)
    return groups


class Benchmark:
    """Base class: subclasses set `name`, `headline` and implement the four steps."""

    name: ClassVar[str] = ""
    # The metric the paper's Table 1 reports, as a dotted path into ScoreReport.metrics.
    headline: ClassVar[str] = "accuracy"
    max_new_tokens: ClassVar[int] = 16

    def load_records(self, data: Path) -> list[Record]:
        raise NotImplementedError

    def build_prompt(self, record: Record) -> str:
        raise NotImplementedError

    def parse_answer(self, output: str, record: Record) -> str | None:
        raise NotImplementedError

    def is_correct(self, parsed: str | None, record: Record) -> bool:
        return parsed is not None and parsed == record.answer

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Readers for the publishers' file formats. Each returns a list of plain dicts.
# ---------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a bad line raises a DataError naming its index."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(line for line in handle if line.strip()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: record {index}: not valid JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DataError(f"{path}: record {index}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file (or a folder of parquet shards), image cells left as raw structs.

    Cells of an HF `Image` column come back as {"bytes": ..., "path": ...}; decode them with
    `table_image`.
    """
    import pyarrow.parquet as pq

    files = sorted(Path(path).rglob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    rows: list[dict[str, Any]] = []
    for file in files:
        for row in pq.read_table(file).to_pylist():
            row["__source__"] = str(file)
            rows.append(row)
    return rows


def read_saved_dataset(path: Path, split: str = "test") -> list[dict[str, Any]]:
    """Rows of a dataset written by `datasets.Dataset(Dict).save_to_disk`, images undecoded."""
    from datasets import DatasetDict, Image as ImageFeature, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(f"{path}: saved dataset has splits {sorted(dataset)}, no {split!r}")
        dataset = dataset[split]
    for name, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            dataset = dataset.cast_column(name, ImageFeature(decode=False))
    rows = dataset.to_list()
    for row in rows:
        row["__source__"] = str(path)
    return rows


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def table_image(cell: Any, where: str, base_dir: Path | None = None) -> ImageRef | None:
    """An ImageRef for an image cell of a table: HF struct, raw bytes, base64 text or a path."""
    if cell is None:
        return None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data:
            return ImageRef(where=where, load_bytes=lambda data=data: data)
        if path and base_dir is not None:
            return ImageRef.from_path(base_dir / path)
        return ImageRef(where=f"{where} (no bytes, path {path!r})", load_bytes=lambda: None)
    if isinstance(cell, (bytes, bytearray)):
        return ImageRef(where=where, load_bytes=lambda data=bytes(cell): data)
    if isinstance(cell, str):
        candidate = (base_dir / cell) if base_dir is not None else Path(cell)
        if len(cell) < 1024 and candidate.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}:
            return ImageRef.from_path(candidate)
        try:
            data = base64.b64decode(cell, validate=True)
        except ValueError as error:
            raise DataError(f"{where}: neither an image path nor base64 image data") from error
        return ImageRef(where=where, load_bytes=lambda data=data: data)
    raise DataError(f"{where}: unsupported image cell of type {type(cell).__name__}")


def require(row: dict[str, Any], field_name: str, source: Path | str, index: int | str) -> Any:
    """row[field_name], or a DataError naming file, record and field when absent or empty."""
    value = row.get(field_name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise record_error(source, index, field_name, "missing or empty")
    return value


def find_first(directory: Path, candidates: Iterable[str]) -> Path | None:
    """The first of `candidates` (paths relative to `directory`) that exists."""
    for candidate in candidates:
        path = directory / candidate
        if path.exists():
            return path
    return None


def require_path(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path does not exist: {path}")
    return path
