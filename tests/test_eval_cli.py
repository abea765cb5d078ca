"""`viral eval` end to end with a real tiny checkpoint on every fixture layout, reproducibility,
and `viral eval compare`."""

import json

import pytest

from eval_fixtures import (
    FakeModel,
    answer_by_tag,
    write_cvbench_jsonl,
    write_cvbench_parquet,
    write_cvbench_saved_dataset,
    write_mme_folder,
    write_mme_parquet,
    write_mmstar,
    write_mmvp,
    write_pope_files,
    write_pope_parquet,
    write_shapes,
    write_whatsup,
)
from viral.cli import main
from viral.evaluate import evaluate

CVBENCH = [{"task": "Count", "source": "ADE20K", "answer": "B"}, {"task": "Relation", "source": "COCO", "answer": "A"},
           {"task": "Count", "source": "COCO", "answer": "C"}]
MME = [{"subtask": "existence", "image": "1.jpg", "answer": "Yes"}, {"subtask": "existence", "image": "1.jpg", "answer": "No"},
       {"subtask": "scene", "image": "2.jpg", "answer": "No"}, {"subtask": "scene", "image": "2.jpg", "answer": "Yes"}]
POPE = {"random": ["yes", "no"], "popular": ["no", "yes"], "adversarial": ["yes", "no"]}
SHAPES = [{"type": "count", "answer": "2"}, {"type": "relation", "answer": "yes"},
          {"type": "existence", "answer": "no"}, {"type": "colour", "answer": "red"}, {"type": "count", "answer": "0"}]
MMSTAR = [{"answer": "A", "category": "coarse perception", "l2_category": "image scene and topic"},
          {"answer": "D", "category": "math", "l2_category": "numeric commonsense and calculation"}]

# (benchmark, fixture writer, number of questions it holds)
LAYOUTS = {
    "cvbench-jsonl": ("cvbench", lambda d: write_cvbench_jsonl(d, CVBENCH), 3),
    "cvbench-parquet": ("cvbench", lambda d: write_cvbench_parquet(d, CVBENCH), 3),
    "cvbench-saved-dataset": ("cvbench", lambda d: write_cvbench_saved_dataset(d, CVBENCH), 3),
    "whatsup": ("whatsup", lambda d: write_whatsup(d, {"one": ["Left", "Top"], "two": ["Below"]}), 3),
    "mmvp": ("mmvp", lambda d: write_mmvp(d, ["a", "b", "b", "a"]), 4),
    "pope-files": ("pope", lambda d: write_pope_files(d, POPE), 6),
    "pope-parquet": ("pope", lambda d: write_pope_parquet(d, POPE), 6),
    "mme-parquet": ("mme", lambda d: write_mme_parquet(d, MME), 4),
    "mme-folder": ("mme", lambda d: write_mme_folder(d, MME), 4),
    "mmstar": ("mmstar", lambda d: write_mmstar(d, MMSTAR), 2),
    "shapes": ("shapes", lambda d: write_shapes(d, SHAPES), 5),
}


def viral_eval(*argv) -> int:
    return main(["eval", *map(str, argv)])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_viral_eval_runs_on_every_fixture_layout(tmp_path, tiny_llava_path, layout, capsys):
    benchmark, write, questions = LAYOUTS[layout]
    data = write(tmp_path / "data")
    output = tmp_path / "run" / "results.json"
    code = viral_eval("--model-path", tiny_llava_path, "--benchmark", benchmark, "--data", data,
                      "--output", output, "--batch-size", 8, "--max-new-tokens", 2, "--no-progress")
    assert code == 0
    summary = json.loads(output.read_text())
    assert summary["benchmark"] == benchmark
    assert summary["counts"]["evaluated"] == questions
    assert summary["settings"]["decoding"] == "greedy"
    assert isinstance(summary["headline"]["value"], float)
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == questions
    assert all(isinstance(p["output"], str) and p["prompt"] for p in predictions)
    assert sum(p["correct"] for p in predictions) == summary["counts"]["correct"]
    assert f"{benchmark}: {summary['headline']['metric']} = " in capsys.readouterr().out


def test_limit_evaluates_only_the_first_questions(tmp_path, tiny_llava_path):
    data = write_shapes(tmp_path / "data", SHAPES)
    output = tmp_path / "results.json"
    assert viral_eval("--model-path", tiny_llava_path, "--benchmark", "shapes", "--data", data,
                      "--output", output, "--limit", 2, "--max-new-tokens", 2, "--no-progress") == 0
    summary = json.loads(output.read_text())
    assert summary["counts"]["records"] == summary["counts"]["evaluated"] == 2
    assert [json.loads(line)["question_id"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()] == [
        "eval-0", "eval-1"]


def test_greedy_evaluation_of_the_same_checkpoint_twice_is_identical(tmp_path, tiny_llava_path):
    from viral.infer import Predictor

    data = write_shapes(tmp_path / "data", SHAPES)
    runs = []
    for run in ("first", "second"):
        output = tmp_path / run / "results.json"
        evaluate(Predictor.from_pretrained(tiny_llava_path), "shapes", data, output=output, batch_size=2,
                 max_new_tokens=4, progress=False)
        runs.append((output.read_text(), (tmp_path / run / "predictions.jsonl").read_text()))
    assert runs[0] == runs[1]


def test_sampled_evaluation_with_a_seed_repeats_exactly(tmp_path, tiny_llava_path):
    from viral.infer import Predictor

    data = write_shapes(tmp_path / "data", SHAPES)
    predictor = Predictor.from_pretrained(tiny_llava_path)
    outputs = []
    for _ in range(2):
        summary = evaluate(predictor, "shapes", data, output=tmp_path / "results.json", temperature=1.0, seed=7,
                           batch_size=2, max_new_tokens=4, progress=False)
        assert summary["settings"]["decoding"] == "sampled"
        outputs.append((tmp_path / "predictions.jsonl").read_text())
    assert outputs[0] == outputs[1]


def _results(tmp_path, name, answers):
    data = write_mmvp(tmp_path / "mmvp", ["a", "b", "a", "b"])
    output = tmp_path / name / "mmvp.json"
    evaluate(FakeModel(answer_by_tag(answers)), "mmvp", data, output=output, progress=False)
    return output


def test_compare_prints_every_metric_with_the_difference(tmp_path, capsys):
    a = _results(tmp_path, "base", {"[q1]": "A", "[q2]": "B", "[q3]": "B", "[q4]": "B"})  # 1 pair, 3 questions
    b = _results(tmp_path, "viral", {"[q1]": "A", "[q2]": "B", "[q3]": "A", "[q4]": "B"})  # 2 pairs, 4 questions
    assert viral_eval("compare", a, b) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"A: {a}" in lines and f"B: {b}" in lines
    header = next(line for line in lines if line.startswith("benchmark"))
    assert header.split() == ["benchmark", "metric", "A", "B", "B", "-", "A"]
    pair_row = next(line for line in lines if "pair_accuracy" in line)
    assert pair_row.split() == ["mmvp", "pair_accuracy", "*", "50.00", "100.00", "+50.00"]
    question_row = next(line for line in lines if "question_accuracy" in line)
    assert question_row.split() == ["mmvp", "question_accuracy", "75.00", "100.00", "+25.00"]


def test_compare_pairs_up_benchmarks_across_two_folders(tmp_path, capsys):
    a = _results(tmp_path, "base", {"[q1]": "A", "[q2]": "B", "[q3]": "A", "[q4]": "B"})
    b = _results(tmp_path, "viral", {"[q1]": "B", "[q2]": "B", "[q3]": "A", "[q4]": "B"})
    shapes = write_shapes(tmp_path / "shapes_data", SHAPES[:2])
    evaluate(FakeModel(lambda prompt: "2"), "shapes", shapes, output=b.parent / "shapes.json", progress=False)
    assert viral_eval("compare", a.parent, b.parent) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["mmvp", "pair_accuracy", "*", "100.00", "50.00", "-50.00"] in rows
    assert ["shapes", "accuracy", "*", "-", "50.00", "-"] in rows


def test_compare_rejects_a_file_that_is_not_a_results_file(tmp_path, capsys):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    assert viral_eval("compare", bogus, bogus) == 2
    assert "not a `viral eval` results file" in capsys.readouterr().err


def test_bad_data_is_reported_without_a_traceback(tmp_path, tiny_llava_path, capsys):
    data = write_shapes(tmp_path / "data", SHAPES)
    (data / "images" / "eval_0003.png").unlink()
    code = viral_eval("--model-path", tiny_llava_path, "--benchmark", "shapes", "--data", data,
                      "--output", tmp_path / "results.json", "--no-progress")
    assert code == 2
    err = capsys.readouterr().err
    assert "image not found" in err and "eval_0003.png" in err and "--skip-missing" in err


def test_missing_required_options_are_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        viral_eval("--benchmark", "mmvp")
    assert exit_info.value.code == 2
    assert "--model-path, --data, --output" in capsys.readouterr().err


def test_help_documents_compare_and_the_benchmarks(capsys):
    with pytest.raises(SystemExit):
        viral_eval("--help")
    out = capsys.readouterr().out
    assert "viral eval compare A.json B.json" in out
    assert all(name in out for name in ("cvbench", "whatsup", "mmvp", "pope", "mme", "mmstar", "shapes"))
