"""MME (Fu et al. 2023): yes/no questions, two per image, over 14 perception/cognition subtasks.

Local copy (`--data PATH`), either layout:
- the `lmms-lab/MME` parquet: every `*.parquet` under PATH, columns `question_id` (e.g.
  "code_reasoning/0020.png", the image's id), `image`, `question`, `answer` ("Yes"/"No"),
  `category` (the subtask);
- the original release folder (`MME_Benchmark_release_version/`, PATH may be it or its parent):
  one folder per subtask holding either `images/` + `questions_answers_YN/` or images side by side
  with their `.txt` files; each `.txt` has one "question<TAB>answer" line per question.

Prompt: the question as given (it already ends with "Please answer yes or no.").
Parsing: the first standalone yes/no.
Metrics (MME's eval tool): per subtask acc = % questions right, acc+ = % images with both questions
right, score = acc + acc+; perception = sum of the 10 perception subtask scores (max 2000),
cognition = sum of the 4 cognition subtask scores (max 800).
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
    group_by,
    percent,
    read_table,
    record_error,
    require,
    require_path,
    table_image,
)
from viral.evaluate.parsing import parse_yes_no

PERCEPTION = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
RELEASE_FOLDER = "MME_Benchmark_release_version"


class MME(Benchmark):
    name = "mme"
    headline = "perception"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        tables = [data] if data.suffix == ".parquet" else sorted(data.rglob("*.parquet"))
        if tables:
            records = [record for table in tables for record in self._load_table(table)]
        else:
            records = self._load_folder(data / RELEASE_FOLDER if (data / RELEASE_FOLDER).is_dir() else data)
        if not records:
            raise DataError(f"{data}: no MME questions found (lmms-lab/MME parquet or the release folder)")
        return records

    @staticmethod
    def _load_table(file: Path) -> list[Record]:
        records = []
        questions_per_image: dict[str, int] = {}
        for index, row in enumerate(read_table(file)):
            subtask = str(require(row, "category", file, index))
            image_id = str(require(row, "question_id", file, index))
            number = questions_per_image[image_id] = questions_per_image.get(image_id, -1) + 1
            records.append(
                Record(
                    question_id=f"{image_id}#{number}",
                    question=str(require(row, "question", file, index)).strip(),
                    answer=_answer(require(row, "answer", file, index), file, index),
                    image=table_image(require(row, "image", file, index), f"{file} record {index} field 'image'"),
                    groups={"subtask": subtask, "image_id": image_id},
                )
            )
        return records

    @staticmethod
    def _load_folder(root: Path) -> list[Record]:
        records = []
        for subtask_dir in sorted(path for path in root.iterdir() if path.is_dir()):
            subtask = subtask_dir.name
            if (subtask_dir / "questions_answers_YN").is_dir():
                text_files = sorted((subtask_dir / "questions_answers_YN").glob("*.txt"))
                image_dir = subtask_dir / "images"
            else:
                text_files = sorted(subtask_dir.glob("*.txt"))
                image_dir = subtask_dir
            for text_file in text_files:
                image_path = next(
                    (image_dir / f"{text_file.stem}{suffix}" for suffix in IMAGE_SUFFIXES
                     if (image_dir / f"{text_file.stem}{suffix}").is_file()),
                    image_dir / f"{text_file.stem}.jpg",  # reported as missing if absent
                )
                lines = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
                for line_number, line in enumerate(lines):
                    if "\t" not in line:
                        raise record_error(text_file, line_number, "question<TAB>answer", f"no tab in {line!r}")
                    question, answer = line.rsplit("\t", 1)
                    image_id = f"{subtask}/{image_path.name}"
                    records.append(
                        Record(
                            question_id=f"{image_id}#{line_number}",
                            question=question.strip(),
                            answer=_answer(answer, text_file, line_number),
                            image=ImageRef.from_path(image_path),
                            groups={"subtask": subtask, "image_id": image_id},
                        )
                    )
        return records

    def build_prompt(self, record: Record) -> str:
        return record.question

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_yes_no(output)

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        subtasks = {}
        for subtask, group in group_by(predictions, "subtask").items():
            images = group_by(group, "image_id")
            images_right = sum(all(p.correct for p in members) for members in images.values())
            acc = accuracy(group)
            acc_plus = percent(images_right, len(images))
            subtasks[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": round(acc + acc_plus, 4)}
        metrics = {
            "perception": round(sum(subtasks[name]["score"] for name in PERCEPTION if name in subtasks), 4),
            "cognition": round(sum(subtasks[name]["score"] for name in COGNITION if name in subtasks), 4),
            "subtasks": subtasks,
        }
        counts = {
            "questions": {subtask: len(group) for subtask, group in group_by(predictions, "subtask").items()},
            "unknown_subtasks": sorted(set(subtasks) - set(PERCEPTION) - set(COGNITION)),
        }
        return ScoreReport(metrics=metrics, counts=counts)


def _answer(value, source, index) -> str:
    answer = str(value).strip().lower()
    if answer not in ("yes", "no"):
        raise record_error(source, index, "answer", f"expected Yes or No, got {value!r}")
    return answer
