"""Config loading and overrides; the command line lists its commands."""

import subprocess
import sys

import pytest

from viral.cli import build_parser, main
from viral.config import ConfigError, load_config


def test_dotted_and_bare_overrides(tmp_path):
    config = load_config("configs/tiny-shapes.yaml", ["align.vra_weight=0.25", "max_steps=7",
                                                     "output_dir=runs/x", "align.target_layers=[1,3]"])
    assert config.align.vra_weight == 0.25 and config.train.max_steps == 7
    assert config.output_dir == "runs/x" and config.align.target_layers == [1, 3]


@pytest.mark.parametrize("override,message", [
    ("align.no_such_key=1", "unknown key"),
    ("train.max_steps=abc", "must be an integer"),
    ("align.alignment_loss=l2", "cosine"),
    ("model.preset=huge", "tiny, llava, compose, qwen2_vl, qwen2_5_vl"),
    ("nonsense=1", "not a known field"),
])
def test_bad_config_values_say_what_to_change(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_shipped_configs_load():
    tiny = load_config("configs/tiny-shapes.yaml")
    big = load_config("configs/llava-1.5-7b-viral.yaml")
    assert tiny.align.vra_loss and big.align.target_layers == [16] and big.align.vra_weight == 0.5
    assert big.train.lora_r == 128 and big.train.lora_alpha == 256 and big.align.vra_target == "dinov2-vit-b"


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in ("train", "infer", "shapes", "demo"):
        assert command in text
    result = subprocess.run([sys.executable, "-m", "viral.cli", "--help"], capture_output=True, text=True,
                            env={"PYTHONPATH": "src", "PATH": ""})
    assert result.returncode == 0 and "train" in result.stdout


def test_shapes_generate_is_deterministic(tmp_path):
    assert main(["shapes", "generate", "--out", str(tmp_path / "a"), "--train", "5", "--eval", "3"]) == 0
    assert main(["shapes", "generate", "--out", str(tmp_path / "b"), "--train", "5", "--eval", "3"]) == 0
    for name in ("train.json", "eval.jsonl", "captions.json", "images/train_000004.png", "labels/eval_000002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shapes_label_maps_match_the_drawn_objects(tmp_path):
    import numpy as np
    from PIL import Image

    from viral.data.shapes import COLOURS, draw_scene

    _, objects, image, labels = draw_scene(seed=3, split="train", index=0, size=64)
    pixels, label = np.asarray(image), np.asarray(labels)
    for obj in objects:
        y, x = int(obj.cy), int(obj.cx)
        assert label[y, x, 0] > 0 and list(COLOURS)[label[y, x, 1] - 1] == obj.colour
        assert tuple(pixels[y, x]) == COLOURS[obj.colour]
    assert (label[..., 0] > 0).mean() < 0.6


def test_shapes_generate_takes_types_and_max_objects(tmp_path, capsys):
    import json

    from viral.study.world import load_split

    out = tmp_path / "w"
    assert main(["shapes", "generate", "--out", str(out), "--train", "6", "--eval", "20", "--size", "48",
                 "--types", "count,position", "--max-objects", "2"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["question_types"] == ["count", "position"] and meta["max_objects"] == 2
    bench = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()]
    assert {row["type"] for row in bench} == {"count", "position"}
    assert all(1 <= len(objects) <= 2 for objects in load_split(out, "eval").objects)
    capsys.readouterr()
    assert main(["shapes", "generate", "--out", str(tmp_path / "x"), "--train", "2", "--eval", "2",
                 "--types", "count,where"]) == 2
    assert "where" in capsys.readouterr().err
    assert main(["shapes", "generate", "--out", str(tmp_path / "y"), "--train", "2", "--eval", "2",
                 "--max-objects", "0"]) == 2
    assert "max_objects 0" in capsys.readouterr().err
