"""Alignment objectives between the LLM's projected image-token states and the teacher's features.

Cosine (VIRAL eq. 7, arXiv 2509.07979):
    L_VRA = -(1/N) sum_i cos(P_pi(e_img_l,i), y_i), with y = E(I) under stop-gradient,
averaged over the samples that count.
Relation: the MSE between the token self-similarity matrices (cosine Gram matrices) of the
student and the teacher, averaged over the samples that count.

`mask` is `[B]` (which samples count) or `[B, N]` (which tokens count). A sample with no counted
token contributes nothing; with nothing counted at all the loss is 0 (still part of the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _token_mask(student: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    batch, tokens = student.shape[:2]
    if mask is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=student.device)
    mask = mask.to(device=student.device, dtype=torch.bool)
    if mask.dim() == 1:
        return mask[:, None].expand(batch, tokens)
    return mask


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be [B, N, D]")


def _average_over_samples(per_sample: torch.Tensor, counted: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    if not bool(counted.any()):
        return anchor.sum() * 0.0
    return per_sample[counted].mean()


def cosine_alignment_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative mean cosine similarity per token; -1 when student equals teacher. Inputs `[B, N, D]`."""
    _check(student, teacher)
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)  # [B, N]
    if mask is None and cos.numel():  # every token counts, each sample has N: the mean of per-sample means
        return -cos.mean()
    tokens = _token_mask(student, mask)  # [B, N]
    counts = tokens.sum(dim=1)  # [B]
    per_sample = -(cos * tokens).sum(dim=1) / counts.clamp(min=1)  # [B]
    return _average_over_samples(per_sample, counts > 0, student)


def relation_alignment_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between token self-similarity matrices of normalised student and teacher; 0 when equal."""
    _check_relation(student, teacher)
    tokens = _token_mask(student, mask)  # [B, N]
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    gram_s = s @ s.transpose(1, 2)  # [B, N, N]
    gram_t = t @ t.transpose(1, 2)  # [B, N, N]
    pair_mask = (tokens[:, :, None] & tokens[:, None, :]).float()  # [B, N, N]
    pairs = pair_mask.sum(dim=(1, 2))  # [B]
    per_sample = ((gram_s - gram_t) ** 2 * pair_mask).sum(dim=(1, 2)) / pairs.clamp(min=1)  # [B]
    return _average_over_samples(per_sample, pairs > 0, student)


def _check_relation(student: torch.Tensor, teacher: torch.Tensor) -> None:
    # the relation objective compares N x N matrices, so the feature widths may differ
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be [B, N, *]")


def packed_alignment_loss(loss_fn, student: torch.Tensor, teacher: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """`loss_fn` per sample on packed tokens (`[sum N_i, D]`, sample i holding `counts[i]` tokens), averaged over
    samples: the same value as `loss_fn` on `[B, N, D]` when every N_i is N."""
    if student.shape[0] != teacher.shape[0] or student.shape[0] != sum(counts):
        raise ValueError(f"packed student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both hold "
                         f"{sum(counts)} tokens (per sample: {counts})")
    losses = [loss_fn(s[None], t[None]) for s, t in zip(student.split(counts), teacher.split(counts))]
    return torch.stack(losses).mean() if losses else student.sum() * 0.0


ALIGNMENT_LOSSES = {"cosine": cosine_alignment_loss, "relation": relation_alignment_loss}


def get_alignment_loss(name: str):
    if name not in ALIGNMENT_LOSSES:
        raise KeyError(f"unknown alignment loss {name!r}; known: {sorted(ALIGNMENT_LOSSES)}")
    return ALIGNMENT_LOSSES[name]
