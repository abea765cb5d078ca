"""Writers of tiny benchmark copies in each publisher's own layout, plus a fake model.

Every writer takes a folder and a list of question specs, generates the images with PIL, and
writes the files the way the benchmark's publishers ship them. Used by tests/test_eval_*.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLOURS = [(220, 40, 40), (40, 160, 60), (50, 80, 220), (230, 200, 40), (150, 60, 170), (240, 140, 30)]


def make_image(seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A small distinct image: a coloured background with a square whose place depends on seed."""
    image = Image.new("RGB", size, COLOURS[seed % len(COLOURS)])
    x = (seed * 7) % (size[0] - 8)
    image.paste(COLOURS[(seed + 3) % len(COLOURS)], (x, 4, x + 8, 12))
    return image


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    make_image(seed).save(buffer, format=fmt)
    return buffer.getvalue()


def save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(seed).save(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_parquet(path: Path, rows: list[dict], image_column: str = "image") -> None:
    """Rows to parquet; the image column as HF's Image struct {bytes, path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        if name == image_column:
            columns[name] = pa.array(values, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            columns[name] = pa.array(values)
    pq.write_table(pa.table(columns), path)


class FakeModel:
    """A model whose answer to each prompt is decided by `answer(prompt)`; records every call."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[dict] = []

    def generate(self, images, prompts, max_new_tokens=32, temperature=0.0, top_p=1.0, seed=None):
        assert len(images) == len(prompts)
        self.calls.append({"images": images, "prompts": prompts, "temperature": temperature, "seed": seed})
        return [self.answer(prompt) for prompt in prompts]


def answer_by_tag(table: dict[str, str]):
    """An `answer` function: the output for the first tag (e.g. "[q3]") found in the prompt."""

    def answer(prompt: str) -> str:
        for tag, output in table.items():
            if tag in prompt:
                return output
        raise AssertionError(f"no scripted answer for prompt {prompt!r}")

    return answer


# --- CV-Bench ------------------------------------------------------------------------------------

def cvbench_rows(specs: list[dict]) -> list[dict]:
    """specs: {"task": "Count"|"Relation", "source": "ADE20K"|"COCO", "answer": "B"} -> CV-Bench rows."""
    rows = []
    for idx, spec in enumerate(specs):
        choices = ["3", "2", "1", "0"] if spec["task"] == "Count" else ["left", "right"]
        question = f"[q{idx}] " + ("How many chairs are in the image?" if spec["task"] == "Count"
                                   else "Where is the lamp (highlighted by a red box) relative to the sofa?")
        options = "\n".join(f"({'ABCD'[i]}) {choice}" for i, choice in enumerate(choices))
        folder = "count" if spec["task"] == "Count" else "relation"
        filename = f"img/2D/{folder}/{spec['source'].lower()}_{idx}.png"
        rows.append({
            "idx": idx, "type": "2D", "task": spec["task"], "image": filename, "question": question,
            "choices": choices, "answer": f"({spec['answer']})",
            "prompt": f"{question} Select from the following choices.\n{options}",
            "filename": filename, "source": spec["source"], "source_dataset": f"{spec['source']} Validation Set",
            "source_filename": f"src_{idx}.jpg", "target_class": "chair", "target_size": 3, "bbox": None,
        })
    return rows


def write_cvbench_jsonl(root: Path, specs: list[dict], with_3d: bool = True) -> Path:
    rows = cvbench_rows(specs)
    for idx, row in enumerate(rows):
        save_image(root / row["filename"], idx)
    if with_3d:  # a 3D record, which the 2D benchmark must leave out
        rows.append({**rows[0], "idx": len(rows), "type": "3D", "task": "Depth", "source": "Omni3D",
                     "filename": "img/3D/depth/omni3d_0.png"})
    write_jsonl(root / "test_2d.jsonl", rows)
    return root


def write_cvbench_parquet(root: Path, specs: list[dict]) -> Path:
    rows = cvbench_rows(specs)
    for idx, row in enumerate(rows):
        row["image"] = {"bytes": image_bytes(idx), "path": row["filename"]}
        row["bbox"] = [[0, 0, 1, 1]]
    write_parquet(root / "test_2d.parquet", rows)
    return root


def write_cvbench_saved_dataset(root: Path, specs: list[dict]) -> Path:
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    rows = cvbench_rows(specs)
    for idx, row in enumerate(rows):
        row["image"] = {"bytes": image_bytes(idx), "path": None}
        row.pop("bbox")
    dataset = Dataset.from_list(rows).cast_column("image", ImageFeature())
    DatasetDict({"test": dataset}).save_to_disk(str(root))
    return root


# --- What's Up -----------------------------------------------------------------------------------

WHATSUP_FILES = {
    "one": ("coco_qa_one_obj.json", "COCO_QA_one_obj_with_answer_four_options.jsonl",
            "Where is the {obj} in the photo? Answer with left, right, top or bottom."),
    "two": ("coco_qa_two_obj.json", "COCO_QA_two_obj_with_answer_four_options.jsonl",
            "Where is the {obj} in relation to the table? Answer with left, right, above, or below."),
}


def write_whatsup(root: Path, answers: dict[str, list[str]]) -> Path:
    """answers: {"one": ["Left", "Top"], "two": ["Below"]}; objects are named oneobj0, twoobj0, ..."""
    root.mkdir(parents=True, exist_ok=True)
    image_id = 139
    for subset, golds in answers.items():
        qa_name, prompt_name, template = WHATSUP_FILES[subset]
        qa, prompts = [], []
        for index, gold in enumerate(golds):
            obj = f"{subset}obj{index}"
            qa.append([image_id, f"A photo of a {obj} on the {gold.lower()}", f"A photo of a {obj} on the other side"])
            prompts.append({"id": index, "question": f"<image>\nUSER: {template.format(obj=obj)}\nASSISTANT:", "answer": [gold]})
            save_image(root / "val2017" / f"{image_id:012d}.jpg", image_id)
            image_id += 1
        (root / qa_name).write_text(json.dumps(qa), encoding="utf-8")
        write_jsonl(root / "prompts" / prompt_name, prompts)
    return root


# --- MMVP ----------------------------------------------------------------------------------------

def write_mmvp(root: Path, answers: list[str], index_column: str = "Index") -> Path:
    """answers: gold letters "a"/"b" per question, in index order 1, 2, ..."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([index_column, "Question", "Options", "Correct Answer"])
        for index, gold in enumerate(answers, start=1):
            pair = (index - 1) // 2
            writer.writerow([index, f"[q{index}] Is the door of pair {pair} open or closed?", "(a) Open (b) Closed", f"({gold})"])
            save_image(root / "MMVP Images" / f"{index}.jpg", index)
    return root


# --- POPE ----------------------------------------------------------------------------------------

def pope_rows(split: str, labels: list[str]) -> list[dict]:
    return [
        {"question_id": index + 1, "image": f"COCO_val2014_{index:012d}.jpg",
         "text": f"[{split}{index}] Is there a dog in the image?", "label": label}
        for index, label in enumerate(labels)
    ]


def write_pope_files(root: Path, labels: dict[str, list[str]]) -> Path:
    """The POPE repo's question files (`coco_pope_<split>.json`, JSON lines) + val2014 images."""
    for split, split_labels in labels.items():
        rows = pope_rows(split, split_labels)
        write_jsonl(root / f"coco_pope_{split}.json", rows)
        for index, row in enumerate(rows):
            save_image(root / "val2014" / row["image"], index)
    return root


def write_pope_parquet(root: Path, labels: dict[str, list[str]]) -> Path:
    """The lmms-lab/POPE parquet: id, question_id, question, answer, image_source, image, category."""
    rows = []
    for split, split_labels in labels.items():
        for index, row in enumerate(pope_rows(split, split_labels)):
            rows.append({
                "id": str(len(rows)), "question_id": str(row["question_id"]), "question": row["text"],
                "answer": row["label"], "image_source": row["image"][:-4],
                "image": {"bytes": image_bytes(index, "JPEG"), "path": None}, "category": split,
            })
    write_parquet(root / "data" / "test-00000-of-00001.parquet", rows)
    return root


# --- MME -----------------------------------------------------------------------------------------

def write_mme_parquet(root: Path, questions: list[dict]) -> Path:
    """questions: {"subtask", "image": name, "answer": "Yes"/"No"}; two per image as MME has."""
    rows = []
    for index, spec in enumerate(questions):
        rows.append({
            "question_id": f"{spec['subtask']}/{spec['image']}",
            "image": {"bytes": image_bytes(index), "path": None},
            "question": f"[q{index}] Is there a red object in this image? Please answer yes or no.",
            "answer": spec["answer"], "category": spec["subtask"],
        })
    write_parquet(root / "data" / "test-00000-of-00001.parquet", rows)
    return root


def write_mme_folder(root: Path, questions: list[dict]) -> Path:
    """The original release: subtasks with images/ + questions_answers_YN/ (artwork, ...) or flat."""
    release = root / "MME_Benchmark_release_version"
    lines: dict[tuple[str, str], list[str]] = {}
    for index, spec in enumerate(questions):
        question = f"[q{index}] Is there a red object in this image? Please answer yes or no."
        lines.setdefault((spec["subtask"], spec["image"]), []).append(f"{question}\t{spec['answer']}")
    for seed, ((subtask, image), subtask_lines) in enumerate(lines.items()):
        stem = Path(image).stem
        if subtask in ("artwork", "celebrity", "landmark", "posters", "scene"):
            save_image(release / subtask / "images" / image, seed)
            text_file = release / subtask / "questions_answers_YN" / f"{stem}.txt"
        else:
            save_image(release / subtask / image, seed)
            text_file = release / subtask / f"{stem}.txt"
        text_file.parent.mkdir(parents=True, exist_ok=True)
        text_file.write_text("\n".join(subtask_lines) + "\n", encoding="utf-8")
    return root


# --- MMStar --------------------------------------------------------------------------------------

def write_mmstar(root: Path, questions: list[dict]) -> Path:
    """questions: {"answer": "C", "category", "l2_category"} -> Lin-Chen/MMStar's mmstar.parquet."""
    rows = []
    for index, spec in enumerate(questions):
        rows.append({
            "index": index,
            "question": f"[q{index}] Which option describes the object relationship in the image correctly?\n"
                        "Options: A: The cup is on the book., B: The cup is under the book., "
                        "C: The cup is beside the book., D: The cup is inside the book.",
            "image": {"bytes": image_bytes(index), "path": None},
            "answer": spec["answer"], "category": spec["category"], "l2_category": spec["l2_category"],
            "meta_info": {"source": "SEEDBench_IMG", "split": "val", "image_path": f"images/{index}.jpg"},
        })
    write_parquet(root / "mmstar.parquet", rows)
    return root


# --- ShapesBench ---------------------------------------------------------------------------------

def write_shapes(root: Path, questions: list[dict]) -> Path:
    """questions: {"type", "answer"} -> eval.jsonl + images/, as `viral shapes generate` writes."""
    questions_text = {
        "count": "How many red circles are there? Answer with a number.",
        "relation": "Is the blue square left of the green triangle? Answer yes or no.",
        "existence": "Is there a yellow circle? Answer yes or no.",
        "colour": "What colour is the triangle? Answer with one word.",
        "position": "Is the red object in the left or the right half? Answer with one word.",
    }
    rows = []
    for index, spec in enumerate(questions):
        image = f"images/eval_{index:04d}.png"
        save_image(root / image, index)
        rows.append({"question_id": f"eval-{index}", "image": image,
                     "question": f"[q{index}] {questions_text[spec['type']]}", "answer": spec["answer"], "type": spec["type"]})
    write_jsonl(root / "eval.jsonl", rows)
    return root
