"""Data-parallel training on the CPU (gloo) under torchrun matches a single process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    """Runs with ddp_find_unused_parameters=False (training_arguments) on data where 8 of 32 records are
    text-only; that every trainable parameter gets a gradient even from a micro-batch without an image is
    checked below, for each kind of run."""
    data = mixed_data(tmp_path, shapes_dir)
    single = tmp_path / "single"
    run([sys.executable, "-m", "viral.cli", "train", "--set",
         *train_overrides(single, shapes_dir, *COMMON, *data, "train.per_device_train_batch_size=4")], tmp_path)
    ddp = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "viral.cli", "train", "--set",
         *train_overrides(ddp, shapes_dir, *COMMON, *data, "train.per_device_train_batch_size=2")], tmp_path)
    one, two = metrics(single), metrics(ddp)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["loss_lm"] == pytest.approx(b["loss_lm"], rel=1e-4)
        assert a["loss_vra"] == pytest.approx(b["loss_vra"], rel=1e-4, abs=1e-5)
    assert len(list(ddp.glob("checkpoint-*"))) == 1 and (ddp / "config.json").is_file()


def mixed_data(tmp_path, shapes_dir) -> list[str]:
    """Overrides pointing at 24 ShapesWorld records with 8 text-only records spread unevenly among them."""
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
    return [f"data.path={tmp_path / 'mixed.json'}", "model.tokenizer_corpus=" + str(shapes_dir / "train.json")]


def test_gradient_accumulation_matches_one_big_batch_with_text_only_samples(tmp_path, shapes_dir):
    """L_LM and L_VRA are exact step means: text-only samples neither dilute L_VRA nor skew it across micro-batches."""
    from viral.config import load_config
    from viral.train import train

    base = [*COMMON, *mixed_data(tmp_path, shapes_dir), "train.max_steps=2"]
    train(load_config(None, train_overrides(tmp_path / "big", shapes_dir, *base, "train.per_device_train_batch_size=8")))
    train(load_config(None, train_overrides(tmp_path / "accum", shapes_dir, *base, "train.per_device_train_batch_size=2",
                                            "train.gradient_accumulation_steps=4")))
    big, accum = metrics(tmp_path / "big"), metrics(tmp_path / "accum")
    for a, b in zip(big, accum):
        assert a["loss_lm"] == pytest.approx(b["loss_lm"], rel=1e-4)
        assert a["loss_vra"] == pytest.approx(b["loss_vra"], rel=1e-4, abs=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("extra", [
    ["align.vra_loss=true", "align.vra_target=encoder", "align.target_layers=[1,4]"],  # LoRA finetune + VIRAL
    ["align.vra_loss=true", "align.vra_target=encoder", "train.stage=pretrain",
     "align.target_layers=[2]"],  # projector + head only
    ["train.finetune_mode=full", "align.residual=pre_projection", "align.target_layers=[2]"],
    ["model.connector=vlora", "vlora_rank=4", "vlora_hidden_size=32", "vlora_depth=1", "vlora_num_heads=2",
     "vlora_skip_layers=2"],
])
def test_every_trainable_parameter_gets_a_gradient_even_from_a_text_only_batch(tmp_path, shapes_dir, extra):
    """What DDP with `ddp_find_unused_parameters=False` needs: no trainable parameter is left out of a step."""
    from viral.config import load_config
    from viral.train import build_trainer

    trainer, parts = build_trainer(load_config(None, train_overrides(tmp_path / "run", shapes_dir, *extra)))
    assert trainer.args.ddp_find_unused_parameters is False
    model = trainer.model.train()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    image_batch = next(iter(trainer.get_train_dataloader()))
    text = parts["processor"].tokenizer(["is there a red circle ? yes"], return_tensors="pt")
    text_batch = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                  "labels": text["input_ids"].clone()}
    if "has_image" in image_batch:
        text_batch["has_image"] = torch.tensor([False])
    for batch in (image_batch, text_batch):
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, batch).backward()
        missing = [name for name, p in trainable.items() if p.grad is None]
        assert not missing, f"no gradient for {missing[:5]} from a {'text-only' if batch is text_batch else 'image'} batch"
