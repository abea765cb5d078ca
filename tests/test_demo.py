"""`viral demo` prints the side-by-side table, the premise verdict, the chance warning and every path it wrote."""

import json

import viral.demo
from study_fixtures import fake_summary
from viral.cli import main
from viral.study.report import write_report


def test_demo_prints_one_seed_side_by_side_with_its_paths(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_study(out, settings, encoders, data_dir=None, encoders_dir=None, command=None):
        calls.append(settings)
        summary = fake_summary(tmp_path, seeds=settings.seeds)
        summary["outputs"] = write_report(tmp_path, summary)
        (tmp_path / "study.json").write_text(json.dumps(summary))  # as run_study writes it
        return summary

    monkeypatch.setattr(viral.demo, "run_study", fake_run_study)
    assert main(["demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    # one seed of the study, with the study's steps and world
    assert calls[0].seeds == [3] and calls[0].finetune_steps is None
    lines = printed.splitlines()
    count = next(line.split() for line in lines if line.startswith("count "))
    assert count[:5] == ["count", "33.9", "87.00", "89.00", "+2.00"]
    assert "position" not in printed.split("teacher diagnostics")[0]
    # every fake type has McNemar p = 0.04: count is 2 points ahead, the others equal
    assert "this seed (McNemar): VIRAL ahead on count (+2.0); no difference at p < 0.05 on relation" in printed
    assert "world 1.0" in printed  # each stage's wall time (minutes) and when each job ran
    assert "start-end: teacher 0.0-4.0, student 0.0-3.3, language 0 3.3-4.5" in printed
    assert "holds for count" in printed and "does not hold for position" in printed
    assert "not clearly above chance in both arms: existence, relation" in printed
    for path in (tmp_path / "seed-3" / "baseline", tmp_path / "seed-3" / "viral", tmp_path / "study.png",
                 tmp_path / "study.md", tmp_path / "encoders", tmp_path / "report.html"):
        assert str(path) in printed
