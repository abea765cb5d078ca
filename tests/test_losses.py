"""The alignment objectives: values at known points, masking, invariances, gradient flow."""

import torch

from viral.align.losses import cosine_alignment_loss, relation_alignment_loss
from viral.align.projector import AlignmentHead, AlignmentProjector


def test_cosine_is_minus_one_for_identical_features():
    x = torch.randn(3, 16, 32)
    assert torch.isclose(cosine_alignment_loss(x, x.clone()), torch.tensor(-1.0), atol=1e-6)


def test_cosine_is_near_zero_for_independent_features():
    torch.manual_seed(0)
    loss = cosine_alignment_loss(torch.randn(8, 64, 256), torch.randn(8, 64, 256))
    assert abs(float(loss)) < 0.02


def test_cosine_sample_mask_excludes_samples():
    student = torch.randn(2, 5, 8)
    teacher = torch.cat([student[:1], -student[1:]])  # sample 0 aligned (-1), sample 1 anti-aligned (+1)
    assert torch.isclose(cosine_alignment_loss(student, teacher), torch.tensor(0.0), atol=1e-6)
    only_first = cosine_alignment_loss(student, teacher, mask=torch.tensor([True, False]))
    assert torch.isclose(only_first, torch.tensor(-1.0), atol=1e-6)
    nothing = cosine_alignment_loss(student, teacher, mask=torch.tensor([False, False]))
    assert float(nothing) == 0.0


def test_cosine_token_mask_averages_counted_tokens():
    student = torch.randn(1, 4, 8)
    teacher = torch.cat([student[:, :2], -student[:, 2:]], dim=1)
    mask = torch.tensor([[True, True, False, False]])
    assert torch.isclose(cosine_alignment_loss(student, teacher, mask), torch.tensor(-1.0), atol=1e-6)


def test_gradients_reach_projector_and_student_never_teacher():
    projector = AlignmentProjector(16, 32, 8)
    states = torch.randn(2, 5, 16, requires_grad=True)  # stands for the LLM's image states
    teacher = torch.randn(2, 5, 8, requires_grad=True)
    cosine_alignment_loss(projector(states), teacher).backward()
    assert states.grad is not None and states.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert teacher.grad is None


def test_relation_is_zero_for_identical_and_rotation_invariant():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 16)
    assert float(relation_alignment_loss(x, x.clone())) < 1e-10
    y = torch.randn(2, 10, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    before = relation_alignment_loss(x, y)
    after = relation_alignment_loss(x @ rotation, y @ rotation)
    assert torch.isclose(before, after, atol=1e-5)
    assert float(before) > 0.01


def test_relation_accepts_different_widths_and_student_gets_gradient():
    student = torch.randn(2, 6, 12, requires_grad=True)
    teacher = torch.randn(2, 6, 20, requires_grad=True)
    relation_alignment_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_projector_architecture_and_shared_or_separate_heads():
    projector = AlignmentProjector(16, 32, 8)
    kinds = [type(m).__name__ for m in projector]
    assert kinds == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    shared = AlignmentHead([1, 2], 16, 32, 8, use_multiple_projectors=False)
    separate = AlignmentHead([1, 2], 16, 32, 8, use_multiple_projectors=True)
    assert len(shared.projectors) == 1 and len(separate.projectors) == 2
    out = separate({1: torch.randn(2, 5, 16), 2: torch.randn(2, 5, 16)})
    assert out[1].shape == (2, 5, 8) and not torch.allclose(out[1], out[2])
