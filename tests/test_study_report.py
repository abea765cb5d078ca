"""The study's report: tables of the world's own question types, the premise verdict, the plot."""

from viral.study.report import format_p, premise_sentence, write_report
from study_fixtures import PROBES, fake_summary


def test_premise_verdict_compares_the_patch_probes_per_task():
    sentence = premise_sentence(PROBES)
    assert "holds for count (teacher 80.6 vs student 57.7, chance 46.8)" in sentence
    assert "does not hold for position (teacher 43.0 vs student 73.7, chance 16.0)" in sentence
    swapped = {"student": PROBES["teacher"], "teacher": PROBES["student"]}
    assert "does not hold for count" in premise_sentence(swapped) and "holds for position" in premise_sentence(swapped)


def test_markdown_lists_only_the_worlds_types_and_warns_about_chance(tmp_path):
    summary = fake_summary(tmp_path)
    outputs = write_report(tmp_path, summary)
    text = (tmp_path / "study.md").read_text()
    assert "nan" not in text and "position |" not in text.split("## Per seed")[1].split("## Stage 0")[0]
    per_seed = [line for line in text.splitlines() if line.startswith("| 2 | VIRAL")]
    assert per_seed and per_seed[0].startswith("| 2 | VIRAL | 64.55 | 88.00 | 50.20 | 51.00 | 69.00 |")
    count_row = next(line for line in text.splitlines() if line.startswith("| count |"))
    assert "| 33.9 | 85.00 ± 1.00 | 87.00 ± 1.00 | +2.00 |" in count_row and "3+/0-" in count_row
    # relation and existence sit at chance in both arms: the report says a difference there means nothing
    warning = next(line for line in text.splitlines() if line.startswith("**Warning:**"))
    assert "baseline: relation" in warning and "VIRAL: existence" in warning and "count" not in warning
    assert "Premise (" in text and "does not hold for position" in text
    assert outputs["plot"].endswith("study.png") and (tmp_path / "study.png").stat().st_size > 10_000


def test_p_values_print_with_three_digits_and_a_floor():
    assert [format_p(None), format_p(0.0281234), format_p(1.0), format_p(0.0)] == ["-", "0.0281", "1", "<1e-4"]
