"""Nothing lost: killed and terminated runs resume exactly, NaN steps are skipped, outputs are protected."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import train_overrides
from viral.config import ConfigError, load_config
from viral.resilience import NonFiniteLossError, TrainingInterrupted
from viral.train import METRICS_NAME, build_trainer, train

COMMON = ["align.vra_loss=true", "align.vra_target=encoder", "align.target_layers=[2]"]


def metrics(run):
    return [json.loads(line) for line in (Path(run) / METRICS_NAME).read_text().splitlines()]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(Path("src").resolve()), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "viral.cli", *args], env


def test_sigkill_at_a_random_step_then_resume_continues_the_same_curve(tmp_path, shapes_dir):
    steps = 8
    args = train_overrides(tmp_path / "full", shapes_dir, *COMMON, f"train.max_steps={steps}",
                           "train.save_steps=1", "train.save_total_limit=2")
    command, env = cli("train", "--set", *args)
    subprocess.run(command, env=env, check=True, capture_output=True)
    reference = metrics(tmp_path / "full")
    assert [r["step"] for r in reference] == list(range(1, steps + 1))

    killed = tmp_path / "killed"
    kill_after = int(torch.randint(2, steps - 1, (1,)))
    args = [a.replace(str(tmp_path / "full"), str(killed)) for a in args]
    command, env = cli("train", "--set", *args)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (killed / METRICS_NAME).exists() and len(metrics(killed)) >= kill_after:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = sorted(killed.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "no checkpoint before the kill"
    assert not (killed / "config.json").exists(), "the run finished before it was killed"
    last = checkpoints[-1]
    assert (last / "trainer_state.json").is_file() and (last / "optimizer.pt").is_file()
    command, env = cli("train", "--set", *args, f"train.resume_from_checkpoint={last}")
    subprocess.run(command, env=env, check=True, capture_output=True)
    resumed = metrics(killed)
    assert resumed == reference  # bit-exact: L_LM, L_VRA, lr at every step


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, shapes_dir, monkeypatch):
    from viral import train as train_module

    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, *COMMON, "train.max_steps=6"))
    original = train_module.ViralTrainer.compute_loss

    def compute_loss(self, *args, **kwargs):
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(train_module.ViralTrainer, "compute_loss", compute_loss)
    with pytest.raises(TrainingInterrupted) as info:
        train(config)
    assert info.value.step == 3
    assert (tmp_path / "run" / "checkpoint-3" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "config.json").exists()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_non_finite_loss_skips_the_update_then_stops(tmp_path, shapes_dir, monkeypatch):
    from viral import train as train_module

    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, *COMMON, "train.max_steps=8",
                                               "train.max_bad_steps=3", "train.save_steps=1"))
    trainer, parts = build_trainer(config)
    head = parts["head"]
    original_forward = train_module.ViralTrainingModel.forward
    poisoned = {"from_step": 2}
    snapshot = {}

    def forward(self, *args, **kwargs):
        out = original_forward(self, *args, **kwargs)
        if trainer.state.global_step >= poisoned["from_step"]:
            snapshot.setdefault("head", {n: p.detach().clone() for n, p in head.named_parameters()})
            out["lm_sum"] = out["lm_sum"] * float("nan")
        return out

    monkeypatch.setattr(train_module.ViralTrainingModel, "forward", forward)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        trainer.train()
    assert all(torch.equal(snapshot["head"][n], p) for n, p in head.named_parameters())
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def test_finished_run_is_not_overwritten_by_accident(tmp_path, shapes_dir):
    args = train_overrides(tmp_path / "run", shapes_dir, "train.max_steps=1")
    train(load_config(None, args))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(load_config(None, args))
    train(load_config(None, args + ["train.overwrite_output_dir=true"]))


@pytest.mark.parametrize("override,message", [
    ("align.target_layers=[9]", "out of range 0..4"),
    ("align.z_dim=999", "z_dim is 999"),
    ("align.vra_target=no-such-teacher", "unknown teacher id"),
])
def test_config_errors_are_caught_before_any_model_loads(tmp_path, shapes_dir, monkeypatch, override, message):
    from viral import train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(train_module, "build_model", no_model)
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, *COMMON, override))
    with pytest.raises(ConfigError, match=message):
        build_trainer(config)


def test_vra_loss_with_residual_is_a_config_error():
    with pytest.raises(ConfigError):
        load_config(None, ["align.vra_loss=true", "align.residual=post_projection", "align.target_layers=[2]"])
