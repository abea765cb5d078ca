"""Exact metrics from a fake model whose answers are known, on fixtures in the publishers' layouts."""

import json

import pytest

from eval_fixtures import (
    FakeModel,
    answer_by_tag,
    write_cvbench_jsonl,
    write_mme_parquet,
    write_mmstar,
    write_mmvp,
    write_pope_files,
    write_shapes,
    write_whatsup,
)
from viral.evaluate import BENCHMARKS, evaluate, get_benchmark


def run(benchmark, data, answers, **kwargs):
    return evaluate(FakeModel(answer_by_tag(answers)), benchmark, data, progress=False, **kwargs)


def test_mmvp_pair_accuracy_is_half_when_one_of_two_pairs_is_fully_right(tmp_path):
    write_mmvp(tmp_path, ["a", "b", "a", "b"])
    # pair 1-2 both right; pair 3-4: question 3 right, question 4 wrong
    summary = run("mmvp", tmp_path, {"[q1]": "A", "[q2]": "(B)", "[q3]": "A.", "[q4]": "A"})
    assert summary["metrics"]["pair_accuracy"] == 50.0
    assert summary["metrics"]["question_accuracy"] == 75.0
    assert summary["headline"] == {"metric": "pair_accuracy", "value": 50.0}
    assert summary["counts"]["pairs"] == 2


def test_mmvp_pairs_are_consecutive_indices_not_equal_questions(tmp_path):
    write_mmvp(tmp_path, ["a", "b", "a", "b"])
    # questions 2 and 3 right only: each pair has one wrong member
    summary = run("mmvp", tmp_path, {"[q1]": "B", "[q2]": "B", "[q3]": "A", "[q4]": "A"})
    assert summary["metrics"]["pair_accuracy"] == 0.0
    assert summary["metrics"]["question_accuracy"] == 50.0


def test_mmvp_limit_leaving_half_a_pair_counts_it_as_incomplete(tmp_path):
    write_mmvp(tmp_path, ["a", "b", "a", "b"])
    summary = run("mmvp", tmp_path, {"[q1]": "A", "[q2]": "B", "[q3]": "A"}, limit=3)
    assert summary["metrics"]["pair_accuracy"] == 100.0
    assert summary["counts"]["incomplete_pairs"] == 1


def test_pope_precision_recall_f1_yes_ratio_from_a_known_confusion_matrix(tmp_path):
    write_pope_files(tmp_path, {
        "random": ["yes", "yes", "yes", "yes", "no", "no", "no", "no"],
        "popular": ["yes", "no"],
        "adversarial": ["yes", "no"],
    })
    answers = {
        # label yes: TP, TP, FN, FN
        "[random0]": "Yes", "[random1]": "Yes, there is a dog.", "[random2]": "No", "[random3]": "No.",
        # label no: FP, TN, TN, unparsed (wrong, but not a "yes")
        "[random4]": "yes", "[random5]": "No, there is none.", "[random6]": "no", "[random7]": "I cannot tell.",
        "[popular0]": "yes", "[popular1]": "no",
        "[adversarial0]": "no", "[adversarial1]": "yes",
    }
    summary = run("pope", tmp_path, answers)
    random = summary["metrics"]["random"]
    # TP=2, FN=2, FP=1, TN=2, unparsed=1; precision 2/3, recall 2/4, F1 = 4/7
    assert random["accuracy"] == 50.0
    assert random["precision"] == pytest.approx(200 / 3, abs=1e-3)
    assert random["recall"] == 50.0
    assert random["f1"] == pytest.approx(400 / 7, abs=1e-3)
    assert random["yes_ratio"] == 37.5
    assert random["false_positive_rate"] == 25.0  # one "yes" among four label-no questions
    assert summary["metrics"]["popular"]["accuracy"] == 100.0
    assert summary["metrics"]["adversarial"]["accuracy"] == 0.0
    # the paper's number: mean accuracy of random and popular (adversarial left out)
    assert summary["metrics"]["paper_accuracy"] == 75.0
    assert summary["counts"]["unparsed"] == 1


def test_mme_acc_plus_needs_both_questions_of_an_image_right(tmp_path):
    questions = [
        {"subtask": "existence", "image": "000000001.jpg", "answer": "Yes"},
        {"subtask": "existence", "image": "000000001.jpg", "answer": "No"},
        {"subtask": "existence", "image": "000000002.jpg", "answer": "Yes"},
        {"subtask": "existence", "image": "000000002.jpg", "answer": "No"},
        {"subtask": "code_reasoning", "image": "0020.png", "answer": "Yes"},
        {"subtask": "code_reasoning", "image": "0020.png", "answer": "No"},
    ]
    write_mme_parquet(tmp_path, questions)
    answers = {"[q0]": "Yes", "[q1]": "No", "[q2]": "Yes", "[q3]": "Yes", "[q4]": "No", "[q5]": "Yes"}
    summary = run("mme", tmp_path, answers)
    existence = summary["metrics"]["subtasks"]["existence"]
    assert existence == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert summary["metrics"]["subtasks"]["code_reasoning"] == {"acc": 0.0, "acc_plus": 0.0, "score": 0.0}
    assert summary["metrics"]["perception"] == 125.0
    assert summary["metrics"]["cognition"] == 0.0
    assert summary["headline"]["value"] == 125.0


def test_cvbench_overall_task_and_per_source_average(tmp_path):
    specs = [
        {"task": "Count", "source": "ADE20K", "answer": "B"},
        {"task": "Relation", "source": "ADE20K", "answer": "A"},
        {"task": "Count", "source": "COCO", "answer": "C"},
        {"task": "Count", "source": "COCO", "answer": "D"},
        {"task": "Relation", "source": "COCO", "answer": "B"},
        {"task": "Relation", "source": "COCO", "answer": "A"},
    ]
    write_cvbench_jsonl(tmp_path, specs)
    answers = {"[q0]": "B", "[q1]": "A cat", "[q2]": "(C)", "[q3]": "D", "[q4]": "B.", "[q5]": "The answer is A"}
    summary = run("cvbench", tmp_path, answers)
    metrics = summary["metrics"]
    assert metrics["accuracy"] == pytest.approx(500 / 6, abs=1e-3)  # 5 of 6, the 3D record left out
    assert metrics["sources"] == {"ADE20K": 50.0, "COCO": 100.0}
    assert metrics["source_average"] == 75.0  # official: mean of the per-source accuracies
    assert metrics["count"] == 100.0
    assert metrics["relation"] == pytest.approx(200 / 3, abs=1e-3)
    assert summary["counts"]["records"] == 6


def test_whatsup_counts_a_hedge_as_wrong_and_reports_the_mean_of_subsets(tmp_path):
    write_whatsup(tmp_path, {"one": ["Left", "Left", "Top", "Bottom"], "two": ["Below", "Above"]})
    answers = {
        "oneobj0": "Left", "oneobj1": "left or right", "oneobj2": "top", "oneobj3": "The bottom of the photo.",
        "twoobj0": "below", "twoobj1": "It is below.",
    }
    summary = run("whatsup", tmp_path, answers)
    assert summary["metrics"]["coco_one"] == 75.0
    assert summary["metrics"]["coco_two"] == 50.0
    assert summary["metrics"]["mean"] == 62.5
    assert summary["counts"]["unparsed"] == 1


def test_mmstar_overall_and_per_category(tmp_path):
    write_mmstar(tmp_path, [
        {"answer": "A", "category": "coarse perception", "l2_category": "image scene and topic"},
        {"answer": "B", "category": "coarse perception", "l2_category": "image style & quality"},
        {"answer": "C", "category": "instance reasoning", "l2_category": "image scene and topic"},
        {"answer": "D", "category": "instance reasoning", "l2_category": "single-instance reasoning"},
    ])
    summary = run("mmstar", tmp_path, {"[q0]": "A", "[q1]": "B", "[q2]": "A", "[q3]": "a"})
    metrics = summary["metrics"]
    assert metrics["accuracy"] == 50.0
    assert metrics["category"] == {"coarse perception": 100.0, "instance reasoning": 0.0}
    assert metrics["l2_category"] == {
        "image scene and topic": 50.0, "image style & quality": 100.0, "single-instance reasoning": 0.0,
    }


def test_shapes_accuracy_per_question_type(tmp_path):
    write_shapes(tmp_path, [
        {"type": "count", "answer": "2"}, {"type": "count", "answer": "3"},
        {"type": "relation", "answer": "yes"}, {"type": "existence", "answer": "no"},
        {"type": "colour", "answer": "red"},
    ])
    answers = {"[q0]": "Two.", "[q1]": "2", "[q2]": "Yes, it is.", "[q3]": "no", "[q4]": "Green"}
    summary = run("shapes", tmp_path, answers)
    assert {k: v for k, v in summary["metrics"].items() if not k.startswith("existence_")} == {
        "accuracy": 60.0, "count": 50.0, "relation": 100.0, "existence": 100.0, "colour": 0.0,
    }


def test_shapes_scores_relation_and_position_per_axis_of_the_image(tmp_path):
    # position: left/right answered right twice of two, top/bottom once of two; relation: above/below 0 of 1
    write_shapes(tmp_path, [{"type": "position", "answer": a} for a in ("left", "right", "top", "bottom")]
                 + [{"type": "relation", "answer": "below"}, {"type": "count", "answer": "1"}])
    said = {"[q0]": "Left.", "[q1]": "right", "[q2]": "top", "[q3]": "top", "[q4]": "above", "[q5]": "1"}
    summary = run("shapes", tmp_path, said, output=tmp_path / "out" / "shapes.json")
    metrics, counts = summary["metrics"], summary["counts"]
    assert metrics["position"] == 75.0 and metrics["position_horizontal"] == 100.0
    assert metrics["position_vertical"] == 50.0 and metrics["relation_vertical"] == 0.0
    assert "relation_horizontal" not in metrics and "count_horizontal" not in metrics
    assert counts["position_horizontal"] == counts["position_vertical"] == 2 and counts["relation_vertical"] == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / summary["predictions_file"]).read_text().splitlines()]
    assert [row["axis"] for row in rows] == ["position_horizontal"] * 2 + ["position_vertical"] * 2 + \
        ["relation_vertical", None]


def test_shapes_existence_answer_rates_show_answers_that_ignore_the_truth(tmp_path):
    # truth yes: yes, yes, no, no; truth no: yes, yes, no, unparsed
    labels = ["yes"] * 4 + ["no"] * 4
    write_shapes(tmp_path, [{"type": "existence", "answer": label} for label in labels] + [{"type": "count", "answer": "1"}])
    said = ["Yes.", "yes", "no", "No", "yes", "Yes, there is.", "no", "I cannot tell."]
    summary = run("shapes", tmp_path, {f"[q{i}]": text for i, text in enumerate(said)} | {"[q8]": "1"})
    metrics = summary["metrics"]
    assert metrics["existence"] == 37.5 and metrics["count"] == 100.0
    # the same yes rate whatever the truth: these answers do not read the image
    assert metrics["existence_recall"] == 50.0 and metrics["existence_false_positive_rate"] == 50.0
    assert metrics["existence_yes_ratio"] == 50.0 and metrics["existence_precision"] == 50.0
    # no existence question: no existence rates
    write_shapes(tmp_path / "count-only", [{"type": "count", "answer": "1"}])
    assert not any(k.startswith("existence") for k in run("shapes", tmp_path / "count-only", {"[q0]": "1"})["metrics"])


def test_predictions_file_lets_a_user_audit_every_score(tmp_path):
    data = write_mmvp(tmp_path / "mmvp", ["a", "b"])
    output = tmp_path / "run" / "results.json"
    run("mmvp", data, {"[q1]": "A", "[q2]": "Neither"}, output=output)
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [(p["question_id"], p["output"], p["parsed"], p["answer"], p["correct"]) for p in lines] == [
        ("1", "A", "A", "A", True), ("2", "Neither", None, "B", False),
    ]
    assert lines[0]["prompt"] == (
        "[q1] Is the door of pair 0 open or closed?\nA. Open\nB. Closed\n"
        "Answer with the option's letter from the given choices directly."
    )
    saved = json.loads(output.read_text())
    assert saved["metrics"]["question_accuracy"] == 50.0
    assert saved["predictions_file"] == "predictions.jsonl"


def test_batches_and_seeds_reach_the_model(tmp_path):
    write_shapes(tmp_path, [{"type": "count", "answer": str(i)} for i in range(5)])
    model = FakeModel(lambda prompt: "1")
    evaluate(model, "shapes", tmp_path, batch_size=2, temperature=0.7, seed=10, progress=False)
    assert [len(call["prompts"]) for call in model.calls] == [2, 2, 1]
    assert [call["seed"] for call in model.calls] == [10, 11, 12]
    assert all(call["temperature"] == 0.7 for call in model.calls)
    assert all(image.mode == "RGB" for call in model.calls for image in call["images"])


def test_unknown_benchmark_error_lists_the_known_names():
    with pytest.raises(KeyError) as error:
        get_benchmark("mmbench")
    message = str(error.value)
    assert "mmbench" in message
    assert all(name in message for name in BENCHMARKS)
    assert set(BENCHMARKS) == {"cvbench", "whatsup", "mmvp", "pope", "mme", "mmstar", "shapes"}


def test_shapesbench_reads_what_viral_shapes_generate_writes(tmp_path):
    from viral.data.shapes import generate

    data = generate(tmp_path / "shapes", seed=0, n_train=1, n_eval=3, progress=False)
    rows = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    gold = {row["question"]: row["answer"] for row in rows}
    # a model that gives the gold answer of the question text, in the chatty way a real model might
    # (the same question about two images can have two answers; only the last one is its reply)
    summary = evaluate(FakeModel(lambda prompt: f"{gold[prompt].capitalize()}."), "shapes", data, progress=False)
    expected_right = sum(gold[row["question"]] == row["answer"] for row in rows)
    assert summary["counts"]["evaluated"] == len(rows)
    assert summary["counts"]["correct"] == expected_right > 0
    from viral.evaluate.shapes import axis_group

    axes = {axis_group(row["type"], row["answer"]) for row in rows} - {None}
    # the answer counts as ShapesBench normalises it; other types have no axis
    assert axis_group("position", "Left.") == "position_horizontal" == axis_group("position", "right")
    assert axis_group("relation", "Above") == "relation_vertical" and axis_group("count", "left") is None
    assert {k for k in summary["metrics"] if not k.startswith("existence_")} == \
        {"accuracy"} | {row["type"] for row in rows} | axes
