"""ShapesWorld: answers agree with the drawn objects; grounding turns are training-only."""

import json

import pytest

from viral.data.shapes import QUESTION_TYPES, draw_scene, generate
from viral.study.world import load_split


def _records(folder):
    train = json.loads((folder / "train.json").read_text())
    bench = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines() if line.strip()]
    return train, bench


def test_grounding_turns_answer_the_quadrant_and_never_reach_the_benchmark(tmp_path):
    folder = generate(tmp_path / "w", seed=3, n_train=40, n_eval=30, size=64, turns=4, progress=False,
                      max_objects=3, type_weights={"position": 1.0})
    train, bench = _records(folder)
    asked = 0
    for i, record in enumerate(train):
        _, objects, _, _ = draw_scene(3, "train", i, 64, 3)
        turns = record["conversations"]
        for question, answer in zip(turns[0::2], turns[1::2]):
            text = question["value"].removeprefix("<image>\n")
            if not text.startswith("Where is the"):
                continue  # fell back to existence: no object clear of the midlines
            asked += 1
            colour = text.split()[3]
            (obj,) = [o for o in objects if o.colour == colour]
            vertical, horizontal = answer["value"].split()
            assert vertical == ("top" if obj.cy < 32 else "bottom")
            assert horizontal == ("left" if obj.cx < 32 else "right")
            assert abs(obj.cx - 32) > obj.half and abs(obj.cy - 32) > obj.half
    assert asked > 60
    assert {r["type"] for r in bench} <= set(QUESTION_TYPES)
    assert not any(r["question"].startswith("Where is") for r in bench)


def test_benchmark_answers_match_the_label_maps(tmp_path):
    folder = generate(tmp_path / "w", seed=1, n_train=4, n_eval=40, size=64, progress=False, max_objects=4)
    _, bench = _records(folder)
    split = load_split(folder, "eval")
    by_name = {f"images/{name}": objects for name, objects in zip(split.names, split.objects)}
    checked = {t: 0 for t in QUESTION_TYPES}
    for row in bench:
        objects = by_name[row["image"]]
        if row["type"] == "count":
            assert row["answer"] == str(len(objects))
        elif row["type"] == "colour":
            assert row["answer"] in {"red", "green", "blue", "yellow"}
        checked[row["type"]] += 1
    assert all(checked[t] > 0 for t in ("count", "existence", "colour"))


def test_unknown_or_negative_type_weights_name_the_training_types(tmp_path):
    for weights in ({"where": 1.0}, {"count": -1.0, "relation": 2.0}, {"count": 0.0}):
        with pytest.raises(ValueError, match="position"):
            generate(tmp_path / "w", n_train=2, n_eval=2, size=32, progress=False, type_weights=weights)
