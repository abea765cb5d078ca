"""Teachers: own preprocessing, grid resampling to the student's grid, registry errors."""

import pytest
import torch
from PIL import Image

from viral.align.teachers import build_teacher, resample_grid, resolve_teacher_spec
from viral.config import ConfigError


@pytest.mark.parametrize("student_grid", [(8, 8), (4, 4), (24, 24), (3, 3)])
def test_dinov2_features_land_on_the_student_grid(tiny_dinov2_path, student_grid):
    teacher = build_teacher(tiny_dinov2_path, student_grid)
    pixels = teacher.preprocess([Image.new("RGB", (50, 50), "red"), Image.new("RGB", (90, 90), "blue")])
    assert pixels.shape == (2, 3, 56, 56)
    features = teacher(pixels)
    assert features.shape == (2, student_grid[0] * student_grid[1], 48)
    assert not features.requires_grad


def test_teacher_receives_its_own_normalisation(tiny_dinov2_path):
    teacher = build_teacher(tiny_dinov2_path, (4, 4))
    seen = {}
    hook = teacher.model.embeddings.patch_embeddings.register_forward_pre_hook(
        lambda module, args: seen.setdefault("pixels", args[0].clone()))
    colour = (51, 102, 204)
    teacher(teacher.preprocess([Image.new("RGB", (30, 20), colour)]))
    hook.remove()
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.25, 0.3])  # the fixture's processor
    expected = (torch.tensor(colour) / 255.0 - mean) / std
    assert seen["pixels"].shape == (1, 3, 56, 56)
    torch.testing.assert_close(seen["pixels"][0, :, 10, 10], expected, atol=1e-5, rtol=0)


def test_resample_grid_is_identity_on_equal_grids_and_bilinear_otherwise():
    x = torch.randn(2, 16, 5)
    assert resample_grid(x, (4, 4), (4, 4)) is x
    constant = torch.ones(1, 4, 3)
    torch.testing.assert_close(resample_grid(constant, (2, 2), (5, 5)), torch.ones(1, 25, 3))
    ramp = torch.arange(4.0).repeat(4).view(1, 16, 1)  # columns 0..3
    up = resample_grid(ramp, (4, 4), (8, 8)).view(8, 8)
    assert torch.all(up[:, 1:] >= up[:, :-1]) and torch.allclose(up[0], up[7])


def test_registry_resolves_aliases_and_rejects_unknown_ids():
    assert resolve_teacher_spec("dinov2-vit-b") == ("dinov2", "facebook/dinov2-base")
    assert resolve_teacher_spec("encoder") == ("encoder", None)
    assert resolve_teacher_spec("facebook/dinov2-with-registers-small")[0] == "dinov2"
    with pytest.raises(ConfigError) as info:
        resolve_teacher_spec("no-such-teacher")
    assert "known" in str(info.value) and "dinov2-vit-b" in str(info.value)


def test_encoder_teacher_takes_dimension_from_the_vision_tower():
    teacher = build_teacher("encoder", (8, 8), vision_hidden_size=64)
    assert teacher.z_dim == 64 and not teacher.needs_pixels
