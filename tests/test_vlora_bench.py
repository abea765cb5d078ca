"""bench/vlora_cost.py runs on tiny models, writes its JSON, and its analytic FLOPs match the counter."""

from __future__ import annotations

import importlib.util
import json
import sys

import torch
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vlora_cost.py"


def test_cost_bench_tiny(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("vlora_cost", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vlora_cost", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "cost.json"
    tiny = "--reps 1 --batch 2 --text-tokens 8 --hidden 32 --ffn 64 --layers 4 --heads 4 --kv-heads 2 --vocab 50"
    tiny += " --vision-hidden 32 --vision-layers 2 --vision-heads 2 --image-size 32 --patch-size 8"
    tiny += " --rank 4 --gen-hidden 16 --gen-depth 1 --gen-heads 2 --skip-layers 2"
    threads = torch.get_num_threads()
    try:
        bench.main([*tiny.split(), "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # the bench pins 1 thread for stable timings
    result = json.loads(out.read_text())
    for key in ("prefill_flops_ratio", "prefill_time_ratio", "train_step_ratio", "peak_mem_ratio", "flops_ratio_7b"):
        assert result[key] > 0
    for side in ("llava", "vlora"):
        assert result[side]["prefill_flops"] == result[side]["prefill_flops_analytic"]
    # The LLM reads 8 text tokens instead of 16 image + 8 text tokens.
    assert result["prefill_flops_ratio"] < 1
    assert 0.05 < result["flops_ratio_7b"] < 0.2
    assert "vlora/llava" in capsys.readouterr().out
