"""`viral demo` prints the side-by-side table, the premise verdict, the chance warning and every path it wrote."""

import json

import viral.demo
from study_fixtures import fake_summary
from viral.cli import main
from viral.study.report import write_report
from viral.study.scales import SCALES


def test_demo_prints_one_seed_side_by_side_with_its_paths(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_study(out, settings, encoders, data_dir=None, encoders_dir=None, command=None, reuse_from=None):
        calls.append(settings)
        summary = fake_summary(tmp_path, seeds=settings.seeds)
        summary["outputs"] = write_report(tmp_path, summary)
        (tmp_path / "study.json").write_text(json.dumps(summary))  # as run_study writes it
        return summary

    monkeypatch.setattr(viral.demo, "run_study", fake_run_study)
    assert main(["demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    # one seed of the study at the demo's scale
    assert calls[0].seeds == [3] and calls[0].finetune_steps == SCALES["demo"]["study"]["finetune_steps"]
    lines = printed.splitlines()
    count = next(line.split() for line in lines if line.startswith("count "))
    assert count[:5] == ["count", "33.9", "87.00", "89.00", "+2.00"]
    assert "position" not in printed.split("teacher diagnostics")[0]
    left_right = next(line for line in lines if line.startswith("relation: left / right "))
    assert left_right.split()[-5:] == ["51.2", "50.00", "55.00", "+5.00", "0.04"]
    # every fake type has McNemar p = 0.04: count is 2 points ahead, the others equal
    assert "this seed (McNemar): VIRAL ahead on count (+2.0); no difference at p < 0.05 on relation" in printed
    assert "world 1.0" in printed  # each stage's wall time (minutes) and when each job ran
    assert "start-end: teacher 0.0-4.0, student 0.0-3.3, language 0 3.3-4.5" in printed
    assert "holds for count" in printed and "does not hold for position" in printed
    assert "not clearly above chance in both arms: existence, relation" in printed
    for path in (tmp_path / "seed-3" / "baseline", tmp_path / "seed-3" / "viral", tmp_path / "study.png",
                 tmp_path / "study.md", tmp_path / "encoders", tmp_path / "report.html"):
        assert str(path) in printed


def test_the_demo_is_the_demo_scale_study_with_one_seed_and_flags_override_the_scale(tmp_path, monkeypatch):
    import viral.study.pipeline

    seen = {}

    def fake_run_study(out, settings, encoders, data_dir=None, encoders_dir=None, command=None, reuse_from=None):
        seen[out] = (settings, encoders)
        summary = fake_summary(tmp_path, seeds=settings.seeds)
        summary["outputs"] = write_report(tmp_path, summary)
        (tmp_path / "study.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(viral.demo, "run_study", fake_run_study)
    monkeypatch.setattr(viral.study.pipeline, "run_study", fake_run_study)
    main(["demo", "--out", "a", "--seed", "2", "--set", "model.hidden_size=64"])
    main(["study", "--scale", "demo", "--out", "b", "--seeds", "1", "--first-seed", "2", "--set", "model.hidden_size=64"])
    main(["study", "--out", "c", "--seeds", "1", "--finetune-steps", "7"])
    main(["demo", "--out", "d", "--scale", "full", "--encoder-steps", "9"])
    demo, study = seen["a"], seen["b"]
    assert demo == study  # same StudySettings and EncoderSettings
    assert demo[0].n_train == SCALES["demo"]["study"]["n_train"] and demo[1].teacher_steps == SCALES["demo"]["encoders"]["teacher_steps"]
    # the scale's overrides first, then the user's (a later --set wins)
    assert demo[0].overrides == ["train.per_device_train_batch_size=16", "model.hidden_size=64"]
    full = seen["c"]
    assert full[0].n_train == 8000 and full[0].overrides == [] and full[0].finetune_steps == 7
    assert full[1].teacher_steps == 1500
    assert seen["d"][0].n_train == 8000 and seen["d"][1].student_steps == seen["d"][1].teacher_steps == 9


def test_an_unknown_scale_or_study_field_is_a_config_error(monkeypatch):
    import pytest

    from viral.config import ConfigError
    from viral.study.scales import scaled_settings

    with pytest.raises(ConfigError, match="choose among"):
        scaled_settings("huge")
    monkeypatch.setitem(SCALES, "bad", {"study": {"n_images": 3}, "encoders": {}})
    with pytest.raises(ConfigError, match="n_images"):
        scaled_settings("bad")
