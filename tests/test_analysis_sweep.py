"""`viral sweep`: grid parsing, and a 2-point sweep on the tiny preset that writes its table and resumes."""

import json

import pytest
import yaml

from conftest import train_overrides
from viral.config import ConfigError
from viral.sweep import grid_points, parse_grid, point_name, run_sweep


def test_grid_axes_cross_and_name_points():
    axes = [parse_grid("target_layers=[[2],[4, 6]]"), parse_grid("align.vra_target=[encoder, dinov2-vit-b]")]
    points = grid_points(axes)
    assert len(points) == 4
    assert points[1] == {"target_layers": [2], "align.vra_target": "dinov2-vit-b"}
    assert point_name(points[2]) == "target_layers-4-6__vra_target-encoder"
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_grid("target_layers=2")


def test_two_point_sweep_writes_its_table_and_resumes(tmp_path, shapes_dir):
    overrides = [o for o in train_overrides(tmp_path / "unused", shapes_dir, "train.max_steps=1")
                 if not o.startswith("output_dir=")]
    overrides += ["align.vra_loss=true", "align.vra_target=encoder"]
    out = tmp_path / "sweep"
    run_sweep(None, ["target_layers=[[1],[2]]"], out, overrides, eval_limit=4)
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| target_layers | shapes | shapes.")
    assert len(table) == 4  # header, rule, two points
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [row["point"] for row in rows] == [{"target_layers": [1]}, {"target_layers": [2]}]
    assert all(0.0 <= row["scores"]["shapes"] <= 100.0 and row["status"] == "trained" for row in rows)
    assert (out / "target_layers-1" / "eval" / "shapes.json").is_file()

    again = run_sweep(None, ["target_layers=[[1],[2]]"], out, overrides, eval_limit=4)
    assert [row["status"] for row in again["rows"]] == ["reused", "reused"]
    assert [row["scores"] for row in again["rows"]] == [row["scores"] for row in rows]

    # a base config saved by a resumed run names that run's finished checkpoint; each point still trains its own
    first = out / "target_layers-1"
    checkpoints = sorted(first.glob("checkpoint-*"))
    assert checkpoints
    saved = yaml.safe_load((first / "viral_config.yaml").read_text())
    saved["train"]["resume_from_checkpoint"] = str(checkpoints[-1])
    base = tmp_path / "resumed_run.yaml"
    base.write_text(yaml.safe_dump(saved))
    other = run_sweep(str(base), ["target_layers=[[2]]"], tmp_path / "from-saved", [], eval_limit=4)
    point = tmp_path / "from-saved" / "target_layers-2"
    assert other["rows"][0]["status"] == "trained"
    assert [json.loads(x)["step"] for x in (point / "metrics.jsonl").read_text().splitlines()] == [1]
    assert yaml.safe_load((point / "viral_config.yaml").read_text())["train"]["resume_from_checkpoint"] is None


def test_a_bad_point_fails_before_any_training(tmp_path, shapes_dir):
    overrides = [o for o in train_overrides(tmp_path / "x", shapes_dir) if not o.startswith("output_dir=")]
    with pytest.raises(ConfigError, match="alignment_loss"):
        run_sweep(None, ["alignment_loss=[cosine, nonsense]"], tmp_path / "sweep", overrides)
    assert not (tmp_path / "sweep").exists()
