"""Expected user errors through the `viral` entry point: one line, a hint, exit 2; traceback on --debug."""

import json
import os
import subprocess
import sys

import pytest

from viral.cli import main
from viral.config import ConfigError


def run_viral(*argv: str, debug_env: bool = False) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process (what a person typing `viral ...` gets)."""
    env = {"PYTHONPATH": "src", "PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    if debug_env:
        env["VIRAL_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "viral.cli", *argv], capture_output=True, text=True, env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("viral: ")]


def test_misspelt_key_is_one_line_with_the_closest_key():
    result = run_viral("train", "--set", "align.vra_weigth=0.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error, hint = error_lines(result.stderr)
    assert error.startswith("viral: error: unknown key(s) ['vra_weigth'] in <defaults>: align")
    assert hint == "viral: hint: did you mean 'align.vra_weight' instead of 'align.vra_weigth'?"


def test_viral_debug_env_shows_the_traceback():
    result = run_viral("train", "--set", "align.vra_weigth=0.5", debug_env=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


@pytest.mark.parametrize("override,hint", [
    ("vra_weigth=0.5", "did you mean 'align.vra_weight'?"),
    ("train.max_stpes=3", "did you mean 'train.max_steps' instead of 'train.max_stpes'?"),
])
def test_bare_and_dotted_typos_get_a_hint(override, hint, capsys, monkeypatch):
    monkeypatch.delenv("VIRAL_DEBUG", raising=False)
    assert main(["train", "--set", override]) == 2
    error, hint_line = error_lines(capsys.readouterr().err)
    assert error.startswith("viral: error: ") and hint_line == f"viral: hint: {hint}"


def test_debug_flag_raises_the_error_itself():
    with pytest.raises(ConfigError, match="vra_weigth"):
        main(["--debug", "train", "--set", "align.vra_weigth=0.5"])


def test_record_without_an_answer_turn_names_file_record_and_field(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIRAL_DEBUG", raising=False)
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"id": "a", "image": "x.png",
                                 "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}]}]))
    code = main(["train", "--set", f"data.path={data}", f"output_dir={tmp_path / 'run'}", "max_steps=1"])
    assert code == 2
    assert error_lines(capsys.readouterr().err) == [
        f"viral: error: {data}, record 0, field 'conversations': must end with a gpt turn (nothing to learn otherwise)"]


def test_missing_files_are_user_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIRAL_DEBUG", raising=False)
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert error_lines(capsys.readouterr().err) == [f"viral: error: config file {tmp_path / 'nope.yaml'} does not exist"]
    assert main(["train", "--set", f"data.path={tmp_path / 'none.json'}", f"output_dir={tmp_path / 'r'}"]) == 2
    assert error_lines(capsys.readouterr().err) == [f"viral: error: data.path {tmp_path / 'none.json'} does not exist"]


def test_a_model_path_without_a_checkpoint_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIRAL_DEBUG", raising=False)
    assert main(["infer", "--model-path", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    assert error_lines(capsys.readouterr().err) == [f"viral: error: model path {tmp_path / 'missing'} does not exist"]
    assert main(["infer", "--model-path", str(tmp_path), "--prompt", "hi"]) == 2  # a folder, but no weights
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"viral: error: cannot load a model from {tmp_path}: ")


def test_command_argument_mistakes_use_the_same_one_line_form(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIRAL_DEBUG", raising=False)
    assert main(["shapes", "generate", "--out", str(tmp_path), "--train", "1", "--eval", "0",
                 "--types", "no-such-type"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("viral: error: shapes generate: ") and "no-such-type" in line
    assert main(["shapes", "generate", "--out", str(tmp_path), "--train", "1", "--eval", "0",
                 "--type-weights", "count=1,relation=lots"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("viral: error: shapes generate: ") and "'relation=lots'" in line
    assert main(["shapes", "encoders", "--data", str(tmp_path), "--out", str(tmp_path / "enc"),
                 "--probe-tasks", "count,shape"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "--probe-tasks" in line and "unknown shape" in line and "existence" in line
    assert main(["shapes", "oracle", "--data", str(tmp_path), "--encoders", str(tmp_path), "--out",
                 str(tmp_path / "oracle"), "--types", "count,shape"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "--types" in line and "unknown shape" in line and "relation" in line
    assert main(["shapes", "oracle", "--data", str(tmp_path / "none"), "--encoders", str(tmp_path), "--out",
                 str(tmp_path / "oracle")]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "--data" in line and "none" in line


def test_oracle_passes_its_set_overrides_to_the_language_stage(tmp_path, monkeypatch):
    import viral.study.oracle

    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "student").mkdir()
    seen = {}

    def fake_oracle(data, encoders, out, settings, threads=None):
        seen["settings"] = settings
        return {"scores": {}, "final_loss": None}

    monkeypatch.setattr(viral.study.oracle, "scene_oracle", fake_oracle)
    assert main(["shapes", "oracle", "--data", str(tmp_path), "--encoders", str(tmp_path), "--out",
                 str(tmp_path / "oracle"), "--set", "model.num_layers=8", "train.learning_rate=3e-4"]) == 0
    assert seen["settings"].overrides == ["model.num_layers=8", "train.learning_rate=3e-4"]
