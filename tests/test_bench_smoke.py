"""The step-overhead benchmark runs every arm (two steps, tiny preset) and writes its table as JSON."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "step_overhead.py"


def test_step_overhead_smoke_runs_each_arm_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("step_overhead", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--json", str(out), "--work", str(tmp_path / "work")])
    table = capsys.readouterr().out
    assert "4 reference approach" in table and "FLOP lower bound" in table
    result = json.loads(out.read_text())["presets"]["tiny"]
    arms = result["arms"]
    assert list(arms) == ["baseline", "live_teacher", "teacher_cache", "reference"]
    for row in arms.values():
        assert row["step_s_median"] > 0 and row["peak_mem_bytes"] > 0
        assert set(row) >= {"step_s_median", "peak_mem_bytes", "step_ratio_to_baseline", "mem_ratio_to_baseline",
                            "step_ratio_paired_median"}
    assert arms["baseline"]["step_ratio_to_baseline"] == 1.0 and arms["baseline"]["mem_ratio_to_baseline"] == 1.0
    assert arms["live_teacher"]["peak_mem_bytes"] > arms["teacher_cache"]["peak_mem_bytes"]  # no teacher held
    assert 1.0 < result["flop_lower_bound_ratio"] < 1.5 and result["head_flops"] > 0
