"""The scene-text oracle: can the study's tiny LLM learn ShapesBench's question types at all?

The study's image pipeline can fail a question type in two places: the image tokens may not carry what the
question needs, or the LLM may not learn to use it. The oracle removes the first: every image is replaced by
its exact scene as text (`scene_words`: one word per grid cell in raster order, the cell's colour and shape
or "blank", as the image tokens are laid out), and the study's tiny LLM is trained from scratch on the
world's training questions with that text in place of the image - the study's language stage (same config,
tokenizer and optimiser, `stage_configs` / `run_one`) on a different corpus. It is then scored on
ShapesBench with the eval images' scenes as text. A type at chance here is a type the LLM does not learn in
that budget even when it is handed the answer's ingredients word by word.

Options narrow the question: `types` keeps only those questions (training and benchmark), `single_turn`
makes one record per question instead of the study's multi-turn conversations, `row_end` closes every row of
the scene with a word (does a row delimiter let the LLM read columns, which a raster order hides?), and
`cell_names` puts a word naming its row and column before each cell (does an explicit 2-D position do it?).

Writes under OUT: `scene-text.json` (the corpus), `language/` (the run), `oracle.json` (settings, scores per
type, the training loss) and `predictions.jsonl`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig

from viral.data.shapes import text_records
from viral.study.encoders import STUDENT_DIR
from viral.study.pipeline import QUESTION_TYPES, StudySettings, run_one, stage_configs
from viral.study.world import split_scenes

logger = logging.getLogger(__name__)

CORPUS_NAME = "scene-text.json"
RESULT_NAME = "oracle.json"
PREDICTIONS_NAME = "predictions.jsonl"


@dataclass
class OracleSettings:
    """What the oracle trains on and for how long."""

    steps: int = 1000
    types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    single_turn: bool = False
    grid: int | None = None  # cells per side (None: the student's patch grid, image size // patch size)
    seed: int = 0
    eval_limit: int | None = None  # ShapesBench questions scored (None: all of the kept types)
    row_end: str | None = None  # a word closing each row of the scene (None: the rows run on, as image tokens do)
    cell_names: bool = False  # each cell's word after a word naming its row and column ("r2c5")
    overrides: list[str] = field(default_factory=list)  # --set overrides of the language stage's config


def score_scene_text(model_dir: Path, data_dir: Path, scenes: dict[str, str], types: list[str],
                     limit: int | None, out: Path, batch_size: int = 64) -> dict[str, float]:
    """ShapesBench with each question's image replaced by its scene text; writes `PREDICTIONS_NAME`."""
    from tqdm import tqdm

    from viral.evaluate.base import Prediction
    from viral.evaluate.shapes import ShapesBench
    from viral.infer import Predictor

    bench = ShapesBench()
    records = [r for r in bench.load_records(data_dir) if r.groups["type"] in types][:limit]
    predictor = Predictor.from_pretrained(str(model_dir))
    predictions = []
    for start in tqdm(range(0, len(records), batch_size), desc="oracle ShapesBench", leave=False):
        batch = records[start:start + batch_size]
        prompts = [f"{scenes[Path(r.image.path).name]}\n{bench.build_prompt(r)}" for r in batch]
        outputs = predictor.generate([None] * len(batch), prompts, max_new_tokens=4)
        for record, prompt, text in zip(batch, prompts, outputs):
            parsed = bench.parse_answer(text, record)
            predictions.append(Prediction(record, prompt, text, parsed, bench.is_correct(parsed, record)))
    (out / PREDICTIONS_NAME).write_text("".join(json.dumps(p.to_json()) + "\n" for p in predictions))
    return bench.score(predictions).metrics


def scene_oracle(data_dir: str | Path, encoders_dir: str | Path, out: str | Path,
                 settings: OracleSettings | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train the tiny LLM on the scene-text corpus and score it on ShapesBench as text; returns `oracle.json`."""
    settings = settings or OracleSettings()
    unknown = sorted(set(settings.types) - set(QUESTION_TYPES))
    if unknown or not settings.types:
        raise ValueError(f"types {settings.types}: choose among {QUESTION_TYPES}")
    data_dir, out = Path(data_dir), Path(out)
    student = CLIPVisionConfig.from_pretrained(Path(encoders_dir) / STUDENT_DIR)  # the stage-0 student's shape
    grid = settings.grid or student.image_size // student.patch_size
    out.mkdir(parents=True, exist_ok=True)
    records = json.loads((data_dir / "train.json").read_text())
    scenes = {split: split_scenes(data_dir, split, grid, settings.row_end, settings.cell_names)
              for split in ("train", "eval")}
    corpus = text_records(records, scenes["train"], settings.types, settings.single_turn)
    if not corpus:
        raise ValueError(f"{data_dir / 'train.json'}: no training question of types {settings.types}")
    (out / CORPUS_NAME).write_text(json.dumps(corpus))
    study = StudySettings(seeds=[settings.seed], overrides=list(settings.overrides), language_seed=settings.seed,
                          language_steps=settings.steps)
    config = stage_configs(study, settings.seed, data_dir, Path(encoders_dir), out / "seed", student,
                           out / CORPUS_NAME)["language"]
    config["output_dir"] = str(out / "language")
    config["train"]["disable_tqdm"] = False  # one run in this process: its own progress bar
    record = run_one(config, threads=threads)
    scores = score_scene_text(out / "language", data_dir, scenes["eval"],
                              settings.types, settings.eval_limit, out)
    result = {"settings": asdict(settings), "grid": grid, "records": len(corpus), "scores": scores,
              "seconds": record.get("train_seconds"), "final_loss": _final_loss(out / "language")}
    (out / RESULT_NAME).write_text(json.dumps(result, indent=2))
    return result


def _final_loss(run_dir: Path) -> float | None:
    from viral.runs import METRICS_NAME

    metrics = run_dir / METRICS_NAME
    if not metrics.is_file():  # fewer steps than the logging interval
        return None
    losses = [json.loads(line).get("loss") for line in metrics.read_text().splitlines() if line]
    losses = [loss for loss in losses if loss is not None]
    return round(losses[-1], 4) if losses else None
