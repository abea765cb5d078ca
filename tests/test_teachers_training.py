"""Each teacher family inside a training run: loaded exactly as saved (no re-initialisation), frozen, outside
the optimizer and the checkpoint, and its inputs (e.g. SAM's image sizes) travel through the data pipeline."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_overrides
from test_teachers_families import FAMILIES
from viral.config import load_config
from viral.train import build_trainer


def one_step(trainer):
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return batch, float(loss.detach())


@pytest.fixture(scope="module")
def shared_tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_student") / "model"


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_in_training_is_exact_frozen_and_never_saved(tmp_path, shapes_dir, tiny_teachers, family,
                                                             shared_tiny_dir):
    info = tiny_teachers[family]
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.vra_loss=true",
                                               f"align.vra_target={info['spec']}", "align.target_layers=[2]",
                                               f"model.tiny_dir={shared_tiny_dir}"))
    trainer, parts = build_trainer(config)
    teacher = parts["teacher"]
    reference = load_file(info["reference"])  # the in-memory weights save_pretrained wrote
    assert reference.keys() == teacher.model.state_dict().keys()
    assert all(torch.equal(reference[k], v) for k, v in teacher.model.state_dict().items())
    assert parts["head"].config["z_dim"] == info["z_dim"] and not teacher.model.training

    batch, loss = one_step(trainer)
    assert torch.isfinite(torch.tensor(loss))
    assert batch["teacher_pixel_values"].shape[-1] == teacher.input_size
    assert ("teacher_image_sizes" in batch) == (family == "sam")
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(reference[k], v) for k, v in teacher.model.state_dict().items())

    trainer._save(str(tmp_path / "ckpt"))
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    for value in saved.values():  # no saved tensor is a teacher tensor
        assert not any(t.shape == value.shape and torch.equal(t, value) for t in reference.values() if t.numel() > 8)
    assert any(k.startswith("alignment_head.") for k in saved)
    assert sum(v.numel() for v in saved.values()) == sum(
        p.numel() for p in trainer.model.parameters() if p.requires_grad)
