"""Shared output helpers of the analyses: examples to run on, JSON results and matplotlib figures (Agg)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
DEFAULT_PROMPT = "Describe the image."


@dataclass
class Example:
    """One image with a question (and the reference answer when the data has one)."""

    image: Image.Image
    question: str
    answer: str | None = None
    type: str | None = None
    id: str | None = None


def _question(record: dict) -> str:
    if isinstance(record.get("question"), str):
        return record["question"]
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
            return str(turn.get("value", "")).replace("<image>", "").strip()
    return DEFAULT_PROMPT


def _answer(record: dict) -> str | None:
    if record.get("answer") is not None:
        return str(record["answer"])
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") in ("gpt", "assistant"):
            return str(turn.get("value", "")).strip()
    return None


def load_examples(path: str | Path, limit: int | None = None, prompt: str | None = None) -> list[Example]:
    """Examples from a folder of images, or a .jsonl/.json file of records with `image` (relative to the
    file's folder or `image_folder`) and `question`/`answer` (ShapesWorld eval) or LLaVA `conversations`.
    `prompt` replaces every question when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    examples: list[Example] = []
    if path.is_dir():
        for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if limit is not None and len(examples) >= limit:
                break
            examples.append(Example(Image.open(file).convert("RGB"), prompt or DEFAULT_PROMPT, id=file.name))
        if not examples:
            raise ValueError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return examples

    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from err
    else:
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records")
    for index, record in enumerate(records):
        if limit is not None and len(examples) >= limit:
            break
        if not isinstance(record, dict) or not record.get("image"):
            continue  # text-only records carry no image tokens to analyse
        image_path = Path(record.get("image_folder") or path.parent) / str(record["image"])
        if not image_path.is_file():
            raise FileNotFoundError(f"{path}, record {index}, field 'image': {image_path} does not exist")
        examples.append(
            Example(
                image=Image.open(image_path).convert("RGB"),
                question=prompt or _question(record),
                answer=_answer(record),
                type=record.get("type"),
                id=str(record.get("question_id", record.get("id", index))),
            )
        )
    if not examples:
        raise ValueError(f"{path}: no records with an image")
    return examples


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def new_figure(*args, **kwargs):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(*args, **kwargs)


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
