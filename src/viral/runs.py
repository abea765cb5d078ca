"""What a run folder holds, shared by every connector's training and by inference and analysis.

The file names of a run (`viral_config.yaml`, `metrics.jsonl`) and the callback that writes the
metrics log live here, below `viral.train` and `viral.infer`, so the connectors (`llava`, `vlora`)
and readers of runs import them without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

RUN_CONFIG_NAME = "viral_config.yaml"  # the resolved experiment config, beside the checkpoint
METRICS_NAME = "metrics.jsonl"  # one JSON line per logging step


class MetricsJsonlCallback(TrainerCallback):
    """Writes one JSON line per logging step: step, loss_lm, loss_vra (null when off), lr."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"step": state.global_step, "loss": logs.get("loss"), "loss_lm": logs.get("loss_lm"),
               "loss_vra": logs.get("loss_vra"), "lr": logs.get("learning_rate")}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a Trainer checkpoint folder was saved at (its `trainer_state.json`; 0 without one)."""
    state_file = Path(checkpoint) / "trainer_state.json"
    return json.loads(state_file.read_text())["global_step"] if state_file.is_file() else 0


def trim_metrics(path: Path, resume_from_checkpoint: str | None) -> None:
    """Start `metrics.jsonl` afresh, or on resume keep only the rows up to the checkpoint's step."""
    if not path.exists():
        return
    if not resume_from_checkpoint:
        path.unlink()
        return
    step = checkpoint_step(resume_from_checkpoint)
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(row + "\n" for row in rows))
