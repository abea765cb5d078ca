"""The built-in demo: ShapesWorld data -> tiny MLLM trained with VIRAL -> answers to evaluation questions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from viral.config import load_config
from viral.data.images import load_image
from viral.data.shapes import generate
from viral.infer import Predictor
from viral.train import METRICS_NAME, train


def run_demo(out_dir: str | Path, config_path: str | Path = "configs/tiny-shapes.yaml",
             n_train: int = 3000, n_eval: int = 100, n_questions: int = 12, overrides: list[str] | None = None) -> dict:
    """Generate (or reuse) data, train with VIRAL, answer a few ShapesBench questions; returns a summary."""
    start = time.time()
    torch.set_num_threads(1)  # the tiny model's ops are too small to share: a second thread only spins
    out = Path(out_dir)
    data = out / "shapes"
    if not (data / "eval.jsonl").is_file():
        generate(data, seed=0, n_train=n_train, n_eval=n_eval)
    run_dir = out / "viral"
    config = load_config(config_path, [f"output_dir={run_dir}", f"data.path={data / 'train.json'}",
                                       "train.overwrite_output_dir=true",
                                       *(overrides or [])])
    train(config)
    metrics = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    predictor = Predictor.from_pretrained(str(run_dir), device="cpu")
    records = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()][:n_questions]
    answers = predictor.generate([load_image(data / r["image"]) for r in records], [r["question"] for r in records],
                                 max_new_tokens=4, temperature=0.0)
    print("\nquestion | expected | model")
    for record, answer in zip(records, answers):
        print(f"{record['question']} | {record['answer']} | {answer}")
    correct = sum(a.split()[:1] == [r["answer"]] for r, a in zip(records, answers))
    summary = {
        "wall_time_s": round(time.time() - start, 1),
        "first_logged": metrics[0], "last_logged": metrics[-1],
        "answered_correctly": f"{correct}/{len(records)}",
        "checkpoint": str(run_dir), "data": str(data), "metrics": str(run_dir / METRICS_NAME),
    }
    print(json.dumps(summary, indent=2))
    return summary
