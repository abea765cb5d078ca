"""ShapesWorld: every question type's answer agrees with the drawn objects."""

import json

import numpy as np
import pytest

from viral.data.shapes import (ARRAYS, DEFAULT_TYPES, QUESTION_TYPES, RELATION_PAIRS, SHAPES, draw_scene, generate,
                               scene_words)
from viral.study.world import load_split


def _records(folder):
    train = json.loads((folder / "train.json").read_text())
    bench = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines() if line.strip()]
    return train, bench


def test_position_answers_the_half_that_holds_the_object(tmp_path):
    folder = generate(tmp_path / "w", seed=3, n_train=40, n_eval=60, size=64, turns=4, progress=False,
                      max_objects=3, type_weights={"position": 1.0}, types=["position", "existence"])
    train, bench = _records(folder)
    asked = []
    for i, record in enumerate(train):
        turns = record["conversations"]
        asked += [("train", i, q["value"].removeprefix("<image>\n"), a["value"]) for q, a in zip(turns[0::2], turns[1::2])]
    asked += [("eval", int(r["question_id"].split("-")[1]), r["question"], r["answer"]) for r in bench
              if r["type"] == "position"]
    checked = 0
    for split, index, question, answer in asked:
        if not question.startswith("Is the "):
            assert question.startswith("Is there")  # no object clear of a midline: the existence fallback
            continue
        _, objects, _, _ = draw_scene(3, split, index, 64, 3)
        words = question.split()  # Is the <colour> object in the <a> or the <b> half? ...
        matches = [o for o in objects if o.colour == words[2]]
        assert len(matches) == 1, (split, index, question, objects)
        (obj,) = matches
        if words[6] == "left":
            assert answer == ("left" if obj.cx < 32 else "right") and abs(obj.cx - 32) > obj.half
        else:
            assert answer == ("top" if obj.cy < 32 else "bottom") and abs(obj.cy - 32) > obj.half
        checked += 1
    assert checked > 100
    assert {r["type"] for r in bench} == {"position", "existence"}


def test_a_default_world_asks_the_four_default_types(tmp_path):
    _, bench = _records(generate(tmp_path / "w", n_train=2, n_eval=30, size=64, progress=False))
    assert {r["type"] for r in bench} == set(DEFAULT_TYPES) == {"count", "relation", "existence", "colour"}


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
        elif row["type"] == "existence":
            shape = row["question"].split("Is there a ")[1].split("?")[0]
            assert row["answer"] == ("yes" if any(SHAPES[o.shape - 1] == shape for o in objects) else "no")
        checked[row["type"]] += 1
    assert all(checked[t] > 0 for t in ("count", "existence", "colour"))


def test_unknown_types_or_weights_name_the_known_ones(tmp_path):
    for weights in ({"where": 1.0}, {"position": 1.0}, {"count": -1.0, "relation": 2.0}, {"count": 0.0}):
        with pytest.raises(ValueError, match="count.*colour"):
            generate(tmp_path / "w", n_train=2, n_eval=2, size=32, progress=False, type_weights=weights)
    with pytest.raises(ValueError, match="position"):
        generate(tmp_path / "w", n_train=2, n_eval=2, size=32, progress=False, types=["count", "where"])


@pytest.mark.parametrize("pairs", ["apart", "across"])
def test_relation_answers_the_offered_direction(tmp_path, pairs):
    folder = generate(tmp_path / "w", seed=2, n_train=2, n_eval=80, size=64, progress=False, max_objects=4,
                      relation_pairs=pairs)
    _, bench = _records(folder)
    checked = 0
    for row in bench:
        if row["type"] != "relation":
            continue
        _, objects, _, _ = draw_scene(2, "eval", int(row["question_id"].split("-")[1]), 64, 4)
        words = row["question"].split()  # Is the <colour> object <a> or <b> of the <colour> object? ...
        a, b = ([o for o in objects if o.colour == words[2]], [o for o in objects if o.colour == words[-6]])
        assert len(a) == len(b) == 1
        (a,), (b,) = a, b
        options = (words[4], words[6])
        assert row["answer"] in options
        horizontal = options == ("left", "right")
        if horizontal:
            assert row["answer"] == ("left" if a.cx < b.cx else "right")
        else:
            assert row["answer"] == ("above" if a.cy < b.cy else "below")
        ca, cb = (a.cx, b.cx) if horizontal else (a.cy, b.cy)
        assert abs(ca - cb) > a.half + b.half  # never overlapping along the asked axis
        if pairs == "across":  # and across the midline: each object wholly in its own half
            first, second = (a, b) if ca < cb else (b, a)
            assert min(ca, cb) + first.half < 32 < max(ca, cb) - second.half
        checked += 1
    assert checked > 10


def test_across_pairs_keep_the_images_and_only_drop_relations_that_the_midline_does_not_split(tmp_path):
    apart, across = (_records(generate(tmp_path / pairs, seed=2, n_train=2, n_eval=120, size=64, progress=False,
                                       max_objects=4, relation_pairs=pairs))[1] for pairs in ("apart", "across"))
    relations = [{r["question_id"] for r in bench if r["type"] == "relation"} for bench in (apart, across)]
    assert relations[1] < relations[0]  # fewer images have a pair split by the midline
    image = "images/eval_000007.png"
    assert (tmp_path / "apart" / image).read_bytes() == (tmp_path / "across" / image).read_bytes()
    assert json.loads((tmp_path / "across/meta.json").read_text())["relation_pairs"] == "across"
    with pytest.raises(ValueError, match="apart"):
        generate(tmp_path / "w", n_train=2, n_eval=2, size=32, progress=False, relation_pairs="near")


@pytest.mark.parametrize("argv", [["shapes", "generate", "--out", "w"], ["study"], ["demo"]])
def test_every_command_offers_the_worlds_relation_pairs(argv, capsys):
    from viral.cli import build_parser

    parser = build_parser()
    for pairs in RELATION_PAIRS:
        assert parser.parse_args([*argv, "--relation-pairs", pairs]).relation_pairs == pairs
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--relation-pairs", "near"])
    assert "invalid choice: 'near'" in capsys.readouterr().err


def test_chance_is_the_best_answer_per_question_form(tmp_path):
    from viral.study.pipeline import chance_levels

    rows = [("relation", "Is the red object left or right of the blue object?", "left"),
            ("relation", "Is the green object left or right of the red object?", "left"),
            ("relation", "Is the red object above or below the blue object?", "below"),
            ("relation", "Is the blue object above or below the green object?", "above"),
            ("count", "How many objects are there?", "2"),
            ("count", "How many objects are there?", "2"),
            ("count", "How many objects are there?", "3")]
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"question_id": str(i), "image": "x.png", "type": t, "question": q, "answer": a}) + "\n"
        for i, (t, q, a) in enumerate(rows)))
    (tmp_path / "meta.json").write_text(json.dumps({"shapes": ["circle"], "colours": ["red", "green", "blue"]}))
    # left/right form: "left" 2 of 2; above/below form: 1 of 2; count: 2 of 3; and relation per axis
    assert chance_levels(tmp_path) == {"relation": 75.0, "count": round(200 / 3, 2), "relation_horizontal": 100.0,
                                       "relation_vertical": 50.0}


def test_drawing_in_two_processes_writes_the_same_world(tmp_path):
    one = generate(tmp_path / "one", seed=4, n_train=7, n_eval=5, size=48, progress=False)
    two = generate(tmp_path / "two", seed=4, n_train=7, n_eval=5, size=48, progress=False, jobs=2)
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    # train, captions, text, eval, meta, the two split archives + images and label maps
    assert len(files) == 5 + 2 + 2 * (7 + 5)
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    for name in files:
        if name.endswith(".npz"):  # zip members carry timestamps: compare what they hold
            with np.load(one / name) as a, np.load(two / name) as b:
                assert sorted(a.files) == sorted(b.files) == ["images", "labels", "names"], name
                for key in a.files:
                    assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
        else:
            assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_the_split_arrays_hold_the_same_images_and_labels_as_the_pngs(tmp_path):
    folder = generate(tmp_path / "w", seed=5, n_train=6, n_eval=9, size=48, progress=False, max_objects=3)
    for split, count in (("train", 6), ("eval", 9)):
        archive = folder / ARRAYS.format(split=split)
        with np.load(archive) as arrays:
            assert arrays["names"].tolist() == [f"{split}_{i:06d}.png" for i in range(count)]
            assert arrays["images"].shape == (count, 48, 48, 3) and arrays["images"].dtype == np.uint8
            assert arrays["labels"].shape == (count, 48, 48, 2) and arrays["labels"].dtype == np.uint8
        for limit in (None, 4):
            from_arrays = load_split(folder, split, limit)
            archive.rename(archive.with_suffix(".off"))
            try:
                from_pngs = load_split(folder, split, limit)
            finally:
                archive.with_suffix(".off").rename(archive)
            assert from_arrays.names == from_pngs.names and len(from_pngs) == (limit or count)
            assert from_arrays.images.dtype == from_pngs.images.dtype == np.uint8
            assert from_arrays.labels.dtype == from_pngs.labels.dtype == np.uint8
            assert np.array_equal(from_arrays.images, from_pngs.images)
            assert np.array_equal(from_arrays.labels, from_pngs.labels)
            assert from_arrays.objects == from_pngs.objects
    # a stale archive (its names differ from the PNGs') is ignored: the PNGs are read
    truth = load_split(folder, "eval")
    with np.load(folder / ARRAYS.format(split="eval")) as arrays:
        names, images, labels = arrays["names"], arrays["images"], arrays["labels"]
    np.savez(folder / ARRAYS.format(split="eval"), names=names[:-1], images=np.zeros_like(images[:-1]),
             labels=np.zeros_like(labels[:-1]))
    stale = load_split(folder, "eval")
    assert np.array_equal(stale.images, truth.images) and np.array_equal(stale.labels, truth.labels)
    assert stale.objects == truth.objects
    np.savez(folder / ARRAYS.format(split="eval"), names=names, images=np.zeros_like(images),
             labels=np.zeros_like(labels))
    for limit in (None, 3):  # names that match: the archive is what is read
        assert not load_split(folder, "eval", limit).images.any()
    (folder / ARRAYS.format(split="eval")).write_bytes(b"not a zip")
    assert np.array_equal(load_split(folder, "eval").images, truth.images)


def test_scene_words_name_the_object_covering_each_cell_in_raster_order():
    labels = np.zeros((24, 24, 2), np.uint8)  # 2 x 2 cells of 12 px
    labels[:12, 12:] = (1, 1)  # top right: a red circle covering the whole cell
    labels[12:18, :12] = (3, 3)  # bottom left: a blue triangle covering half of it
    labels[12:14, 12:14] = (2, 2)  # bottom right: a green square covering 4 / 144, under min_cover
    assert scene_words(labels, 2) == "blank redcircle bluetriangle blank"
    assert scene_words(labels, 2, row_end="row") == "blank redcircle row bluetriangle blank row"
    assert scene_words(labels, 2, cell_names=True) == "r0c0 blank r0c1 redcircle r1c0 bluetriangle r1c1 blank"
    labels[12:24, :6] = (2, 4)  # the bottom-left cell now half yellow square, 3/8 blue triangle
    assert scene_words(labels, 2).split()[2] == "yellowsquare"
    assert scene_words(labels, 2, min_cover=0.6).split() == ["blank", "redcircle", "blank", "blank"]


def test_text_records_remove_or_replace_the_image_and_keep_the_asked_types():
    from viral.data.shapes import text_records

    records = [{"id": "train-0", "image": "images/train_000000.png", "conversations": [
        {"from": "human", "value": "<image>\nHow many objects are there? Answer with a number."},
        {"from": "gpt", "value": "2"},
        {"from": "human", "value": "What colour is the square? Answer with one word."},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Is the red object left or right of the blue object? Answer with one word."},
        {"from": "gpt", "value": "left"}]},
        {"id": "caption-0", "image": "images/train_000000.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "one red square."}]}]
    scenes = {"train_000000.png": "blank redsquare blank bluecircle"}
    [text, caption] = text_records(records)  # the image removed, every turn kept
    assert text["id"] == "text-train-0" and len(text["conversations"]) == 6
    assert text["conversations"][0]["value"] == "How many objects are there? Answer with a number."
    assert caption["conversations"][0]["value"] == "Describe the image."
    [scene, scene_caption] = text_records(records, scenes)  # the scene where the image stood, nowhere else
    assert scene["conversations"][0]["value"] == "blank redsquare blank bluecircle\nHow many objects are there? " \
                                                 "Answer with a number."
    assert scene["conversations"][2] == records[0]["conversations"][2]
    assert scene_caption["conversations"][0]["value"] == "blank redsquare blank bluecircle\nDescribe the image."
    # the oracle's narrowing: only colour and relation turns, one record each with its own scene
    single = text_records(records, scenes, types=["colour", "relation"], single_turn=True)
    assert [r["id"] for r in single] == ["scene-train-0-0", "scene-train-0-1"]
    assert [r["conversations"][1]["value"] for r in single] == ["red", "left"]
    assert all(r["conversations"][0]["value"].startswith("blank redsquare") for r in single)
    # several turns kept without the one that held the image: the scene still opens the record
    [narrowed] = text_records(records[:1], scenes, types=["colour", "relation"])
    assert narrowed["conversations"][0]["value"] == "blank redsquare blank bluecircle\nWhat colour is the square? " \
                                                    "Answer with one word."
    assert "blank" not in narrowed["conversations"][2]["value"]


def test_the_study_reuses_a_world_only_with_its_relation_pairs(tmp_path):
    from viral.config import ConfigError
    from viral.study.pipeline import StudySettings, ensure_world

    settings = StudySettings(n_train=3, n_eval=6, image_size=32, turns=2, relation_pairs="across")
    folder = ensure_world(tmp_path / "w", settings)
    assert json.loads((folder / "meta.json").read_text())["relation_pairs"] == "across"
    with pytest.raises(ConfigError, match="relation_pairs.*'across', 'apart'"):
        ensure_world(folder, StudySettings(n_train=3, n_eval=6, image_size=32, turns=2))
    meta = json.loads((folder / "meta.json").read_text())
    del meta["relation_pairs"]  # a world written before the option: its relations were "apart"
    (folder / "meta.json").write_text(json.dumps(meta))
    assert ensure_world(folder, StudySettings(n_train=3, n_eval=6, image_size=32, turns=2)) == folder
    with pytest.raises(ConfigError, match="type_weights"):
        ensure_world(tmp_path / "new", StudySettings(n_train=3, n_eval=6, image_size=32, type_weights={"where": 1}))


def test_without_the_fallback_a_one_type_world_asks_only_that_type(tmp_path):
    from viral.data.shapes import question_type, without_image

    kept, with_fallback = (json.loads((generate(tmp_path / name, seed=4, n_train=60, n_eval=4, size=64, turns=2,
                                                progress=False, max_objects=3, types=["relation"],
                                                relation_pairs="across", fallback=fallback) / "train.json").read_text())
                           for name, fallback in (("kept", False), ("all", True)))
    assert len(with_fallback) == 60 and 0 < len(kept) < 60  # images with no pair across the midline are dropped
    for record in kept:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in turns[1:])
        assert {question_type(without_image(t["value"])) for t in turns[0::2]} == {"relation"}
    fallback_types = {question_type(without_image(t["value"])) for r in with_fallback for t in r["conversations"][0::2]}
    assert fallback_types == {"relation", "existence"}
