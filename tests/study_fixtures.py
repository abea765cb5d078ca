"""A study summary built from fixed fake scores, shaped like `run_study`'s, for report and demo tests."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from viral.study.pipeline import StudySettings, above_chance
from viral.study.stats import summarise

WORLD_TYPES = ("count", "relation", "existence", "colour")  # a default world: no position questions
CHANCE = {"count": 33.9, "relation": 51.0, "existence": 50.7, "colour": 26.9}
# probes of a world where the premise holds for counting and not for position
PROBES = {
    "student": {"count": {"patch_attention_probe": 57.7, "pooled_linear_probe": 59.2, "chance": 46.8},
                "position": {"patch_attention_probe": 73.7, "pooled_linear_probe": 14.3, "chance": 16.0}},
    "teacher": {"count": {"patch_attention_probe": 80.6, "pooled_linear_probe": 60.9, "chance": 46.8},
                "position": {"patch_attention_probe": 43.0, "pooled_linear_probe": 14.7, "chance": 16.0}},
}


# relation per axis of the image: VIRAL 5 points up on left/right
AXIS_CHANCE = {"relation_horizontal": 51.2, "relation_vertical": 50.8}
AXES = {"baseline": {"relation_horizontal": 50.0, "relation_vertical": 50.5},
        "viral": {"relation_horizontal": 55.0, "relation_vertical": 50.5}}


def fake_scores(seed: int, arm: str) -> dict[str, float]:
    """Count learnt (VIRAL 2 points up), colour learnt, relation and existence at chance."""
    scores = {"count": 84.0 + seed + (2.0 if arm == "viral" else 0.0), "relation": 50.0 + 0.1 * seed,
              "existence": 51.0, "colour": 71.0 - seed}
    scores["accuracy"] = sum(scores.values()) / len(scores)
    return scores


def fake_summary(out: Path, seeds=(0, 1, 2)) -> dict:
    settings = StudySettings(seeds=list(seeds))
    runs = {str(seed): {arm: {"dir": str(out / f"seed-{seed}" / arm), "scores": fake_scores(seed, arm),
                              "axes": AXES[arm], "train_seconds": 600.0} for arm in ("baseline", "viral")}
            for seed in seeds}
    scores = {arm: {seed: runs[str(seed)][arm]["scores"] for seed in seeds} for arm in ("baseline", "viral")}
    summary = {
        "command": "viral study --seeds 3", "settings": asdict(settings), "data": str(out / "shapes"),
        "encoders": {"dir": str(out / "encoders"), "probes": PROBES,
                     "diagnostics": {"constant_target_cosine": 0.869, "student_linear_map_cosine": 0.935},
                     "seconds": {"total": 300.0}, "student_eval": {"label_accuracy": 92.2},
                     "teacher_eval": {"patch_shape_accuracy": 98.5}},
        "chance": {**CHANCE, **AXIS_CHANCE}, "runs": runs,
        "statistics": summarise(scores, ["accuracy", *WORLD_TYPES]),
        "mcnemar_per_seed": {str(seed): {name: {"p_value": 0.04, "questions": 1000}
                                         for name in ("accuracy", *WORLD_TYPES, *AXIS_CHANCE)} for seed in seeds},
        "seconds": {"total": 3600.0, "stages": {"world": 60.0, "stages 0-2 and ShapesBench": 3540.0},
                    "jobs": {"teacher": {"start": 0.0, "end": 240.0}, "student": {"start": 0.0, "end": 200.0},
                             "language 0": {"start": 200.0, "end": 270.0}}},
    }
    summary["above_chance"] = above_chance(summary)
    return summary
