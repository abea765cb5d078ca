"""Layer / target sweeps (the VIRAL paper's Table 2): one training and one evaluation per grid point,
and one table of benchmark scores (`viral.evaluate`, percent) with a row per point.

`--grid key=[v1, v2, ...]` axes (keys as in `--set`: dotted or bare when unique) are crossed. Each point
trains into `OUT/<point name>`; a point whose folder already holds an exported checkpoint is not
retrained, so a killed sweep resumes where it stopped. Training runs in this process, or through a
launcher command (`--launcher "srun -p gpu {command}"`) that must block until the run ends.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers.trainer_utils import get_last_checkpoint

from viral.config import ConfigError, load_config

SWEEP_JSON = "sweep.json"
SWEEP_TABLE = "sweep.md"


def parse_grid(spec: str) -> tuple[str, list[Any]]:
    """`target_layers=[[2],[4]]` -> ("target_layers", [[2], [4]]); the values must form a non-empty list."""
    if "=" not in spec:
        raise ConfigError(f"--grid {spec!r} must look like key=[value, value, ...]")
    key, text = spec.split("=", 1)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--grid {spec!r}: the values are not valid YAML ({err})") from err
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--grid {spec!r}: give a non-empty list of values, e.g. {key}=[[2],[4]]")
    return key.strip(), values


def grid_points(grids: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """The cross product of the axes, in the order given."""
    keys = [key for key, _ in grids]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid keys repeat: {keys}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in grids))]


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a point: `target_layers-2__vra_target-encoder`."""
    def text(value):
        if isinstance(value, (list, tuple)):
            return "-".join(text(v) for v in value)
        return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")

    return "__".join(f"{key.split('.')[-1]}-{text(value)}" for key, value in point.items())


def point_overrides(point: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in point.items()]


def is_trained(run_dir: Path) -> bool:
    """An exported checkpoint (written last by `train`) is there."""
    return (run_dir / "config.json").is_file() and (run_dir / "viral_config.yaml").is_file()


def parse_eval(spec: str) -> tuple[str, str]:
    """`shapes=data/shapes` -> ("shapes", "data/shapes"): a `viral eval` benchmark and its local data."""
    name, sep, data = spec.partition("=")
    if not sep or not name or not data:
        raise ConfigError(f"--eval {spec!r} must look like BENCHMARK=PATH, e.g. shapes=data/shapes")
    from viral.evaluate import get_benchmark

    get_benchmark(name.strip())  # an unknown name fails here, before any training
    return name.strip(), data


def scores(checkpoint: Path, benchmarks: list[tuple[str, str]], limit: int | None = None,
           batch_size: int = 8) -> dict[str, float]:
    """Each benchmark's headline metric (column `name`) and top-level numeric sub-metrics (`name.sub`)."""
    from viral.evaluate import evaluate
    from viral.infer import Predictor

    predictor = Predictor.from_pretrained(str(checkpoint))
    row: dict[str, float] = {}
    for name, data in benchmarks:
        summary = evaluate(predictor, name, data, output=checkpoint / "eval" / f"{name}.json", limit=limit,
                           batch_size=batch_size, progress=False, model_path=str(checkpoint))
        row[name] = summary["headline"]["value"]
        for metric, value in summary["metrics"].items():
            if metric != summary["headline"]["metric"] and isinstance(value, (int, float)):
                row[f"{name}.{metric}"] = value
    return row


def _train(config_path: str | None, overrides: list[str], launcher: str | None) -> None:
    if launcher is None:
        from viral.train import train

        train(load_config(config_path, overrides))
        return
    command = [sys.executable, "-m", "viral.cli", "train", *([config_path] if config_path else []), "--set", *overrides]
    line = launcher.replace("{command}", shlex.join(command)) if "{command}" in launcher else \
        f"{launcher} {shlex.join(command)}"
    completed = subprocess.run(line, shell=True)
    if completed.returncode != 0:
        raise RuntimeError(f"training failed (exit {completed.returncode}): {line}")


def run_sweep(config_path: str | None, grids: list[str], out_dir: str | Path, overrides: list[str] | None = None,
              evals: list[str] | None = None, launcher: str | None = None, eval_limit: int | None = None) -> dict:
    """Train and evaluate every grid point; writes `sweep.json` and `sweep.md` in `out_dir`.

    `evals` are `BENCHMARK=PATH` specs; by default ShapesBench beside the config's `data.path`."""
    out = Path(out_dir)
    axes = [parse_grid(spec) for spec in grids]
    points = grid_points(axes)
    base = list(overrides or [])
    # validate every point before training any of them
    for point in points:
        load_config(config_path, [*base, *point_overrides(point), f"output_dir={out / point_name(point)}"])
    if evals:
        benchmarks = [parse_eval(spec) for spec in evals]
    else:
        data_path = load_config(config_path, base).data.path
        shapes = Path(data_path).parent / "eval.jsonl" if data_path else None
        if shapes is None or not shapes.is_file():
            raise ConfigError(f"no evaluation data: {shapes} does not exist; pass --eval shapes=DIR (or another "
                              "benchmark=PATH)")
        benchmarks = [("shapes", str(shapes))]
    rows = []
    for point in points:
        run_dir = out / point_name(point)
        run_overrides = [*base, *point_overrides(point), f"output_dir={run_dir}"]
        status = "reused"
        if not is_trained(run_dir):
            last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
            # a killed point continues from its last complete checkpoint, and only from its own: a base config
            # saved by a resumed run names that run's checkpoint, which would make every point a copy of it
            run_overrides.append(f"train.resume_from_checkpoint={last or 'null'}")
            print(f"[sweep] {'resuming' if last else 'training'} {point_name(point)}", flush=True)
            _train(config_path, run_overrides, launcher)
            status = "resumed" if last else "trained"
        row_scores = scores(run_dir, benchmarks, eval_limit)
        rows.append({"point": point, "name": point_name(point), "checkpoint": str(run_dir), "status": status,
                     "scores": row_scores})
        print(f"[sweep] {point_name(point)}: " + " ".join(f"{k}={v:.2f}" for k, v in row_scores.items()), flush=True)
        write_table(rows, [key for key, _ in axes], out, config_path, benchmarks)
    return {"rows": rows}


def write_table(rows: list[dict], keys: list[str], out: Path, config_path: str | None,
                benchmarks: list[tuple[str, str]]) -> None:
    """sweep.json (everything) and sweep.md (one row per point: the grid values, then the scores in %)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"config": config_path, "benchmarks": dict(benchmarks), "rows": rows}
    (out / SWEEP_JSON).write_text(json.dumps(data, indent=2) + "\n")
    columns = []
    for row in rows:
        columns += [name for name in row["scores"] if name not in columns]
    lines = ["| " + " | ".join([*keys, *columns]) + " |", "|" + "---|" * (len(keys) + len(columns))]
    for row in rows:
        cells = [json.dumps(row["point"][key]) for key in keys]
        cells += [f"{row['scores'][c]:.1f}" if c in row["scores"] else "" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    (out / SWEEP_TABLE).write_text("\n".join(lines) + "\n")
