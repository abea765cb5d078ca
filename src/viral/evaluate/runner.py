"""`evaluate`: run one benchmark with any model that has a `generate` method, score, write results.

The model is duck-typed: anything with

    generate(images: list[PIL.Image | None], prompts: list[str], max_new_tokens: int,
             temperature: float, top_p: float, seed: int | None) -> list[str]

works (`viral.infer.Predictor`, or a fake with known answers in tests). Decoding is greedy unless
`temperature > 0`; with sampling, batch k gets the seed `seed + k`, so a seeded run repeats exactly.

Outputs, when `output` is given: the summary JSON at `output` and `predictions.jsonl` beside it,
one line per question (question id, prompt, raw output, parsed answer, gold answer, correct, and
the record's group fields) so that any score can be audited.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from viral import __version__
from viral.evaluate.base import Benchmark, DataError, MissingImageError, Prediction, Record
from viral.evaluate.registry import get_benchmark

PREDICTIONS_FILE_NAME = "predictions.jsonl"


class Generator(Protocol):
    def generate(
        self,
        images: list[Image.Image | None],
        prompts: list[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]: ...


def predictions_path(output: Path | str) -> Path:
    """Where the per-question predictions of a summary file go: `predictions.jsonl` beside it."""
    return Path(output).with_name(PREDICTIONS_FILE_NAME)


def evaluate(
    model: Generator,
    benchmark: str | Benchmark,
    data: Path | str,
    *,
    output: Path | str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    skip_missing: bool = False,
    progress: bool = True,
    model_path: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `benchmark` read from the local copy at `data`; the summary dict.

    `limit` keeps the first N records (in file order). A record whose image is missing raises
    MissingImageError naming the file, unless `skip_missing`, which skips and counts it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    max_new_tokens = max_new_tokens or bench.max_new_tokens

    records = bench.load_records(Path(data))
    if limit is not None:
        records = records[:limit]
    to_run, skipped = _check_images(records, skip_missing)
    if not to_run:
        raise DataError(f"{data}: nothing to evaluate: all {len(records)} records have missing images")

    predictions: list[Prediction] = []
    with tqdm(total=len(to_run), desc=f"eval {bench.name}", unit="q", disable=not progress, file=sys.stderr) as bar:
        for batch_number, start in enumerate(range(0, len(to_run), batch_size)):
            batch = to_run[start : start + batch_size]
            prompts = [bench.build_prompt(record) for record in batch]
            images = [record.image.open() if record.image is not None else None for record in batch]
            outputs = model.generate(
                images,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seed is None else seed + batch_number,
            )
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model returned {len(outputs)} answers for a batch of {len(batch)}")
            for record, prompt, text in zip(batch, prompts, outputs):
                parsed = bench.parse_answer(text, record)
                predictions.append(Prediction(record, prompt, text, parsed, bench.is_correct(parsed, record)))
            bar.update(len(batch))

    report = bench.score(predictions)
    summary = {
        "benchmark": bench.name,
        "headline": {"metric": bench.headline, "value": lookup(report.metrics, bench.headline)},
        "metrics": report.metrics,
        "counts": {
            "records": len(records),
            "evaluated": len(predictions),
            "correct": sum(p.correct for p in predictions),
            "unparsed": sum(p.parsed is None for p in predictions),
            "skipped_missing_image": len(skipped),
            **report.counts,
        },
        "skipped_missing_image": skipped,
        "model_path": model_path,
        "data": str(data),
        "settings": {
            "limit": limit,
            "batch_size": batch_size,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "decoding": "sampled" if temperature > 0 else "greedy",
        },
        "viral_version": __version__,
    }
    if output is not None:
        summary["predictions_file"] = PREDICTIONS_FILE_NAME
        write_results(summary, predictions, Path(output))
    return summary


def _check_images(records: list[Record], skip_missing: bool) -> tuple[list[Record], list[str]]:
    to_run, skipped = [], []
    for record in records:
        if record.image is None or record.image.exists():
            to_run.append(record)
        elif skip_missing:
            skipped.append(record.question_id)
        else:
            raise MissingImageError(
                f"image not found: {record.image.where} (question {record.question_id}); "
                "pass --skip-missing to skip such questions and count them in the summary"
            )
    return to_run, skipped


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    """metrics["a"]["b"] for "a.b"; None when absent."""
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def write_results(summary: dict[str, Any], predictions: list[Prediction], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(predictions_path(output), "w", encoding="utf-8") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
    output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
