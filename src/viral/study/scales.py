"""Named sizes of the ShapesWorld study: `full`, the study of record, and `demo`, what `make demo` runs.

A scale is a set of defaults for `StudySettings` and `EncoderSettings`; command-line flags override them.
`viral demo` is `viral study --scale demo --seeds 1`, so `viral study --scale demo --out runs/demo` adds seeds
to the demo's folder and tells whether the effect its one seed shows is the study's at that size.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from viral.config import ConfigError
from viral.study.encoders import EncoderSettings
from viral.study.pipeline import StudySettings

# `demo` fits `make demo` in 10 minutes on 2 CPU cores, install included: about 15 core-minutes against the
# full study's 85 a seed (62 at 900 stage-2 steps, 42 at 300). Half the images and 800 evaluation images; the
# LLM stages at batch 16 (half the cost of a step) with 300 language steps, 150 stage-1 and 200 stage-2 steps; the
# encoders at batch 32, the student for 700 steps, the teacher for 1400 (at 700 steps of batch 64 its count
# probe was 54.0 against the student's 49.8: the premise failed); probes of 250 steps fitted on 1000 images.
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"study": {}, "encoders": {}},
    "demo": {
        "study": {"n_train": 4000, "n_eval": 800, "language_steps": 300, "pretrain_steps": 150,
                  "finetune_steps": 200, "overrides": ["train.per_device_train_batch_size=16"]},
        "encoders": {"batch_size": 32, "student_steps": 700, "teacher_steps": 1400, "probe_steps": 250,
                     "probe_train": 1000},
    },
}


def scaled_settings(scale: str, **study: Any) -> tuple[StudySettings, EncoderSettings]:
    """The settings of `scale`, with `study` (StudySettings fields: seeds, config, jobs, ...) on top; the
    scale's `--set` overrides come before any given in `study["overrides"]`."""
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r}: choose among {sorted(SCALES)}")
    preset = SCALES[scale]
    values = {**preset["study"], **study}
    values["overrides"] = list(preset["study"].get("overrides", [])) + list(study.get("overrides", []))
    known = {f.name for f in fields(StudySettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"scale {scale!r}: StudySettings has no field {unknown}")
    return StudySettings(**values), EncoderSettings(**preset["encoders"])
