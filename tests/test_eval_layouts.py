"""Every publisher layout loads into the same records, and bad data fails loudly and precisely."""

import json

import numpy as np
import pytest

from eval_fixtures import (
    FakeModel,
    write_cvbench_jsonl,
    write_cvbench_parquet,
    write_cvbench_saved_dataset,
    write_jsonl,
    write_mme_folder,
    write_mme_parquet,
    write_mmvp,
    write_pope_files,
    write_pope_parquet,
    write_shapes,
    write_whatsup,
)
from viral.evaluate import DataError, MissingImageError, evaluate, get_benchmark

CVBENCH_SPECS = [
    {"task": "Count", "source": "ADE20K", "answer": "B"},
    {"task": "Relation", "source": "COCO", "answer": "A"},
    {"task": "Count", "source": "COCO", "answer": "D"},
]
MME_QUESTIONS = [
    {"subtask": "existence", "image": "000000001.jpg", "answer": "Yes"},
    {"subtask": "existence", "image": "000000001.jpg", "answer": "No"},
    {"subtask": "artwork", "image": "10002.jpg", "answer": "No"},
    {"subtask": "artwork", "image": "10002.jpg", "answer": "Yes"},
    {"subtask": "code_reasoning", "image": "0020.png", "answer": "Yes"},
    {"subtask": "code_reasoning", "image": "0020.png", "answer": "No"},
]
POPE_LABELS = {"random": ["yes", "no"], "popular": ["no", "yes"], "adversarial": ["yes", "no"]}


def described(benchmark: str, data) -> list[tuple]:
    """What a benchmark makes of a local copy: (id, prompt, answer, groups, image pixels) per record."""
    bench = get_benchmark(benchmark)
    return [
        (r.question_id, bench.build_prompt(r), r.answer, r.groups, np.asarray(r.image.open()).tobytes())
        for r in bench.load_records(data)
    ]


def test_cvbench_jsonl_parquet_and_saved_dataset_layouts_give_the_same_records(tmp_path):
    from_jsonl = described("cvbench", write_cvbench_jsonl(tmp_path / "jsonl", CVBENCH_SPECS))
    from_parquet = described("cvbench", write_cvbench_parquet(tmp_path / "parquet", CVBENCH_SPECS))
    from_saved = described("cvbench", write_cvbench_saved_dataset(tmp_path / "saved", CVBENCH_SPECS))
    assert len(from_jsonl) == 3  # the 3D record in test_2d.jsonl is left out
    assert from_jsonl == from_parquet == from_saved
    assert from_jsonl[0][1] == (
        "[q0] How many chairs are in the image? Select from the following choices.\n"
        "(A) 3\n(B) 2\n(C) 1\n(D) 0\n"
        "Base your answer on reasoning. Your final answer must be only the single capital letter "
        "corresponding to the correct choice."
    )
    assert from_jsonl[0][2:4] == ("B", {"task": "Count", "source": "ADE20K"})
    # --data may also name the file itself
    assert described("cvbench", tmp_path / "jsonl" / "test_2d.jsonl") == from_jsonl


def test_pope_question_files_and_lmms_lab_parquet_give_the_same_records(tmp_path):
    from_files = described("pope", write_pope_files(tmp_path / "files", POPE_LABELS))
    from_parquet = described("pope", write_pope_parquet(tmp_path / "parquet", POPE_LABELS))
    key = lambda item: item[0]  # noqa: E731
    strip_pixels = lambda items: [item[:4] for item in sorted(items, key=key)]  # noqa: E731 (JPEG vs PNG)
    assert strip_pixels(from_files) == strip_pixels(from_parquet)
    assert len(from_files) == 6
    assert ("random-1", "[random0] Is there a dog in the image? Answer with only 'yes' or 'no'.", "yes",
            {"split": "random"}) in strip_pixels(from_files)


def test_mme_parquet_and_release_folder_give_the_same_records(tmp_path):
    from_parquet = described("mme", write_mme_parquet(tmp_path / "parquet", MME_QUESTIONS))
    from_folder = described("mme", write_mme_folder(tmp_path / "folder", MME_QUESTIONS))
    by_id = lambda items: {item[0]: item[1:4] for item in items}  # noqa: E731
    assert by_id(from_parquet) == by_id(from_folder)
    assert by_id(from_folder)["artwork/10002.jpg#1"] == (
        "[q3] Is there a red object in this image? Please answer yes or no.", "yes",
        {"subtask": "artwork", "image_id": "artwork/10002.jpg"},
    )


def test_whatsup_prompts_follow_the_viral_protocol(tmp_path):
    records = described("whatsup", write_whatsup(tmp_path, {"one": ["Left"], "two": ["Below"]}))
    assert [(r[0], r[1], r[2]) for r in records] == [
        ("coco_one-0", "Where is the oneobj0 in the photo? Answer with a single word from left, right, top, or bottom.", "left"),
        ("coco_two-0", "Where is the twoobj0 in relation to the table? Answer with a single word from left, right, above, or below.", "below"),
    ]


def test_whatsup_with_only_one_subset_present(tmp_path):
    records = get_benchmark("whatsup").load_records(write_whatsup(tmp_path, {"two": ["Left", "Above"]}))
    assert {r.groups["subset"] for r in records} == {"coco_two"}


@pytest.mark.parametrize("index_column", ["Index", "lndex"])
def test_mmvp_reads_either_spelling_of_the_index_column(tmp_path, index_column):
    records = get_benchmark("mmvp").load_records(write_mmvp(tmp_path, ["a", "b"], index_column=index_column))
    assert [(r.question_id, r.answer, r.groups["pair"], r.image.path.name) for r in records] == [
        ("1", "A", 0, "1.jpg"), ("2", "B", 0, "2.jpg"),
    ]


# --- missing images ------------------------------------------------------------------------------

def test_a_missing_image_is_an_error_naming_the_file(tmp_path):
    write_pope_files(tmp_path, {"random": ["yes", "no", "yes"]})
    missing = tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    missing.unlink()
    with pytest.raises(MissingImageError, match="COCO_val2014_000000000001.jpg"):
        evaluate(FakeModel(lambda p: "yes"), "pope", tmp_path, progress=False)


def test_skip_missing_skips_and_counts_in_the_summary(tmp_path):
    write_pope_files(tmp_path, {"random": ["yes", "no", "yes"]})
    (tmp_path / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    summary = evaluate(FakeModel(lambda p: "yes"), "pope", tmp_path, skip_missing=True,
                       output=tmp_path / "out" / "results.json", progress=False)
    assert summary["counts"]["skipped_missing_image"] == 1
    assert summary["skipped_missing_image"] == ["random-2"]
    assert summary["counts"]["evaluated"] == 2
    assert summary["metrics"]["random"]["accuracy"] == 100.0
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 2


def test_missing_bytes_in_a_parquet_image_cell_is_a_missing_image(tmp_path):
    write_mme_parquet(tmp_path, MME_QUESTIONS[:2])
    import pyarrow.parquet as pq

    file = tmp_path / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(file).to_pylist()
    table[1]["image"] = {"bytes": None, "path": "existence/000000001.jpg"}
    from eval_fixtures import write_parquet

    write_parquet(file, table)
    with pytest.raises(MissingImageError, match=r"record 1 field 'image'"):
        evaluate(FakeModel(lambda p: "yes"), "mme", tmp_path, progress=False)


def test_an_unreadable_image_is_an_error_naming_the_file(tmp_path):
    write_shapes(tmp_path, [{"type": "count", "answer": "1"}])
    (tmp_path / "images" / "eval_0000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="eval_0000.png"):
        evaluate(FakeModel(lambda p: "1"), "shapes", tmp_path, progress=False)


# --- malformed records ---------------------------------------------------------------------------

def test_a_record_without_a_required_field_names_file_index_and_field(tmp_path):
    write_cvbench_jsonl(tmp_path, CVBENCH_SPECS, with_3d=False)
    rows = [json.loads(line) for line in (tmp_path / "test_2d.jsonl").read_text().splitlines()]
    del rows[1]["prompt"]
    write_jsonl(tmp_path / "test_2d.jsonl", rows)
    with pytest.raises(DataError, match=r"test_2d\.jsonl: record 1: field 'prompt': missing"):
        get_benchmark("cvbench").load_records(tmp_path)


@pytest.mark.parametrize(
    "benchmark, writer, file_name, edit, expected",
    [
        ("cvbench", lambda d: write_cvbench_jsonl(d, CVBENCH_SPECS, with_3d=False), "test_2d.jsonl",
         lambda rows: rows[2].update(answer="C?"), r"record 2: field 'answer'"),
        ("pope", lambda d: write_pope_files(d, {"random": ["yes", "no"]}), "coco_pope_random.json",
         lambda rows: rows[1].update(label="maybe"), r"coco_pope_random\.json: record 1: field 'label'"),
        ("shapes", lambda d: write_shapes(d, [{"type": "count", "answer": "1"}] * 2), "eval.jsonl",
         lambda rows: rows[1].update(type="size"), r"eval\.jsonl: record 1: field 'type'"),
    ],
)
def test_a_malformed_value_names_file_index_and_field(tmp_path, benchmark, writer, file_name, edit, expected):
    writer(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / file_name).read_text().splitlines()]
    edit(rows)
    write_jsonl(tmp_path / file_name, rows)
    with pytest.raises(DataError, match=expected):
        get_benchmark(benchmark).load_records(tmp_path)


def test_a_bad_json_line_names_its_index(tmp_path):
    write_shapes(tmp_path, [{"type": "count", "answer": "1"}] * 3)
    lines = (tmp_path / "eval.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (tmp_path / "eval.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"eval\.jsonl: record 2: not valid JSON"):
        get_benchmark("shapes").load_records(tmp_path)


def test_mmvp_bad_correct_answer_names_the_row(tmp_path):
    write_mmvp(tmp_path, ["a", "b"])
    csv_file = tmp_path / "Questions.csv"
    csv_file.write_text(csv_file.read_text().replace("(b)\r\n", "(c)\r\n").replace("(b)\n", "(c)\n"))
    with pytest.raises(DataError, match=r"Questions\.csv: record 1: field 'Correct Answer'"):
        get_benchmark("mmvp").load_records(tmp_path)


def test_whatsup_qa_and_prompt_files_must_pair_up(tmp_path):
    write_whatsup(tmp_path, {"one": ["Left", "Top"]})
    prompt_file = tmp_path / "prompts" / "COCO_QA_one_obj_with_answer_four_options.jsonl"
    prompt_file.write_text(prompt_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="2 entries but .* has 1 lines"):
        get_benchmark("whatsup").load_records(tmp_path)


@pytest.mark.parametrize("benchmark", ["cvbench", "whatsup", "mmvp", "pope", "mme", "mmstar", "shapes"])
def test_an_empty_folder_says_what_was_expected(tmp_path, benchmark):
    with pytest.raises(DataError, match=str(tmp_path)):
        get_benchmark(benchmark).load_records(tmp_path)
