"""Data-parallel training on the CPU (gloo) under torchrun matches a single process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import train_overrides

COMMON = ["align.vra_loss=true", "align.vra_target=encoder", "align.target_layers=[2]", "train.max_steps=3",
          "train.lora_dropout=0", "train.save_steps=3"]


def run(command, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path("src").resolve()), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path.cwd(), timeout=420)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")
def test_ddp_two_processes_match_one_process(tmp_path, shapes_dir):
    single = tmp_path / "single"
    run([sys.executable, "-m", "viral.cli", "train", "--set",
         *train_overrides(single, shapes_dir, *COMMON, "train.per_device_train_batch_size=4")], tmp_path)
    ddp = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "viral.cli", "train", "--set",
         *train_overrides(ddp, shapes_dir, *COMMON, "train.per_device_train_batch_size=2")], tmp_path)
    one, two = metrics(single), metrics(ddp)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["loss_lm"] == pytest.approx(b["loss_lm"], rel=1e-4)
        assert a["loss_vra"] == pytest.approx(b["loss_vra"], rel=1e-4, abs=1e-5)
    assert len(list(ddp.glob("checkpoint-*"))) == 1 and (ddp / "config.json").is_file()


def test_gradient_accumulation_matches_one_big_batch_with_text_only_samples(tmp_path, shapes_dir):
    """L_LM and L_VRA are exact step means: text-only samples neither dilute L_VRA nor skew it across micro-batches."""
    from viral.config import load_config
    from viral.train import train

    records = json.loads((shapes_dir / "train.json").read_text())
    mixed = []
    for i, record in enumerate(records[:24]):
        mixed.append(record)
        if i % 3 == 0:  # text-only records with short answers, unevenly spread over micro-batches
            mixed.append({"id": f"text-{i}", "conversations": [
                {"from": "human", "value": "Is there a circle ? Answer yes or no ."},
                {"from": "gpt", "value": "yes"}]})
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    (tmp_path / "images").symlink_to(shapes_dir / "images")
    base = [*COMMON, f"data.path={tmp_path / 'mixed.json'}", "train.max_steps=2", "model.tokenizer_corpus="
            + str(shapes_dir / "train.json")]
    train(load_config(None, train_overrides(tmp_path / "big", shapes_dir, *base, "train.per_device_train_batch_size=8")))
    train(load_config(None, train_overrides(tmp_path / "accum", shapes_dir, *base, "train.per_device_train_batch_size=2",
                                            "train.gradient_accumulation_steps=4")))
    big, accum = metrics(tmp_path / "big"), metrics(tmp_path / "accum")
    for a, b in zip(big, accum):
        assert a["loss_lm"] == pytest.approx(b["loss_lm"], rel=1e-4)
        assert a["loss_vra"] == pytest.approx(b["loss_vra"], rel=1e-4, abs=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
