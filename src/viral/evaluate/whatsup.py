"""What's Up (Kamath et al. 2023), COCO-one and COCO-two subsets, as VIRAL evaluates them.

Local copy (`--data DIR`), the files the publishers ship:
- `coco_qa_one_obj.json`, `coco_qa_two_obj.json`: lists of `[image_id, caption_true, caption_false]`
  (from whatsup_vlms; also looked for under `DIR/data/`);
- the four-option prompt files `COCO_QA_one_obj_with_answer_four_options.jsonl` and
  `COCO_QA_two_obj_with_answer_four_options.jsonl` (AdaptVis; in `DIR` or `DIR/prompts/`), one
  line per QA entry, in the same order: `{"id", "question": "<image>\\nUSER: Where is ...? Answer
  with ...\\nASSISTANT:", "answer": ["Left"]}`;
- COCO val2017 images `val2017/{image_id:012d}.jpg` (in `DIR` or `DIR/data/`).
A subset whose files are absent is skipped; at least one must be present.

Prompt (VIRAL's eval_whatsup_one/two.py): the question from the prompt file (the text after
"USER:" up to its "?") + " Answer with a single word from left, right, top, or bottom."
(two-object: left, right, above, or below).
Parsing: the first direction word of the subset's four; a hedge ("left or right") is wrong.
Metrics: accuracy per subset and their mean (the paper's number).
"""

from __future__ import annotations

import re
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
    read_json,
    read_jsonl,
    record_error,
    require,
    require_path,
)
from viral.evaluate.parsing import parse_direction

SUBSETS = {
    # name: (QA file, prompt file, allowed answers, suffix)
    "coco_one": (
        "coco_qa_one_obj.json",
        "COCO_QA_one_obj_with_answer_four_options.jsonl",
        ("left", "right", "top", "bottom"),
        "Answer with a single word from left, right, top, or bottom.",
    ),
    "coco_two": (
        "coco_qa_two_obj.json",
        "COCO_QA_two_obj_with_answer_four_options.jsonl",
        ("left", "right", "above", "below"),
        "Answer with a single word from left, right, above, or below.",
    ),
}
_USER_QUESTION = re.compile(r"USER:\s*(.*?\?)", re.DOTALL)


class WhatsUp(Benchmark):
    name = "whatsup"
    headline = "mean"

    def load_records(self, data: Path) -> list[Record]:
        data = require_path(data)
        records: list[Record] = []
        for subset, (qa_name, prompt_name, directions, _suffix) in SUBSETS.items():
            qa_file = find_first(data, [qa_name, f"data/{qa_name}"])
            prompt_file = find_first(data, [prompt_name, f"prompts/{prompt_name}"])
            if qa_file is None and prompt_file is None:
                continue
            if qa_file is None or prompt_file is None:
                missing = qa_name if qa_file is None else prompt_name
                raise DataError(f"{data}: What's Up subset {subset} needs {missing} as well")
            records.extend(self._load_subset(subset, qa_file, prompt_file, directions, data))
        if not records:
            names = [name for qa, prompt, _, _ in SUBSETS.values() for name in (qa, prompt)]
            raise DataError(f"{data}: no What's Up subset found; expected the files {names}")
        return records

    @staticmethod
    def _load_subset(subset, qa_file: Path, prompt_file: Path, directions, data: Path) -> list[Record]:
        qa_entries = read_json(qa_file)
        prompts = read_jsonl(prompt_file)
        if not isinstance(qa_entries, list):
            raise DataError(f"{qa_file}: expected a JSON list of [image_id, caption, caption]")
        if len(qa_entries) != len(prompts):
            raise DataError(
                f"{qa_file} has {len(qa_entries)} entries but {prompt_file} has {len(prompts)} lines; "
                "they must pair up line by line"
            )
        image_dir = find_first(data, ["val2017", "data/val2017"]) or data / "val2017"
        records = []
        for index, (entry, prompt_row) in enumerate(zip(qa_entries, prompts)):
            if not isinstance(entry, list) or len(entry) < 1:
                raise record_error(qa_file, index, "image_id", "expected [image_id, caption, caption]")
            image_id = entry[0]
            question_text = str(require(prompt_row, "question", prompt_file, index))
            match = _USER_QUESTION.search(question_text)
            if not match:
                raise record_error(prompt_file, index, "question", "no 'USER: ...?' question in it")
            answers = require(prompt_row, "answer", prompt_file, index)
            answer = str(answers[0] if isinstance(answers, list) else answers).strip().lower()
            if answer not in directions:
                raise record_error(prompt_file, index, "answer", f"{answer!r} is not one of {directions}")
            records.append(
                Record(
                    question_id=f"{subset}-{index}",
                    question=" ".join(match.group(1).split()),
                    answer=answer,
                    image=ImageRef.from_path(image_dir / _coco_file_name(image_id)),
                    groups={"subset": subset, "image_id": image_id},
                )
            )
        return records

    def build_prompt(self, record: Record) -> str:
        suffix = SUBSETS[record.groups["subset"]][3]
        return f"{record.question} {suffix}"

    def parse_answer(self, output: str, record: Record) -> str | None:
        return parse_direction(output, SUBSETS[record.groups["subset"]][2])

    def score(self, predictions: list[Prediction]) -> ScoreReport:
        by_subset = group_by(predictions, "subset")
        subset_accuracy = {subset: accuracy(group) for subset, group in by_subset.items()}
        mean = round(sum(subset_accuracy.values()) / len(subset_accuracy), 4) if subset_accuracy else 0.0
        return ScoreReport(
            metrics={"mean": mean, **subset_accuracy},
            counts={subset: len(group) for subset, group in by_subset.items()},
        )


def _coco_file_name(image_id) -> str:
    """COCO val2017 file name: 139 -> "000000000139.jpg"; a name with an extension is kept."""
    text = str(image_id).strip()
    if text.isdigit():
        return f"{int(text):012d}.jpg"
    return text if Path(text).suffix else f"{text}.jpg"
