"""Checks of the study's premise on the frozen stage-0 encoders: patch-level probes and alignment diagnostics.

Features are taken exactly as training uses them: the student's are the tiny LLaVA's vision features z
(layer -2 of the CLIP tower, CLS dropped, the image through the tower's own processor); the teacher's
come through the teacher registry (`build_teacher` on the teacher's folder: its own preprocessing, its
grid resampled to the student's), i.e. the VRA targets y.

Probes (fitted on training images, scored on eval images, chance = the training majority class):
- `count`: "how many objects of shape s" (7 classes, 0..6), queried by s;
- `position`: "which 3x3 cell holds the (shape, colour) object", for objects unique in their image;
- on request (`probe_tasks`), the other ShapesBench types' content: `existence` ("is there a (shape, colour)
  object": every pair present and as many absent pairs, drawn per image, so chance is about 50%) and
  `colour` ("what colour is the s", for shapes once in their image);
- each with a patch-level probe - a query-conditioned gated-sum attention probe over the patch tokens
  (token MLP, one self-attention block, sigmoid weights so it can count; no position embedding of its
  own, so it reads only where the features themselves say a patch is - the question is what the
  features carry, and the LLM sees the tokens' order through its own positions in both arms alike) -
  and, for reference, a pooled linear probe (mean-pooled tokens, one linear map per query).

Diagnostics of how much the teacher can add (mean cosine with the teacher's patch features on eval
images): `constant_target_cosine` - the best single vector for every patch; `student_linear_map_cosine`
- a ridge-regression linear map from the student's own patch features. When either is close to 1, the
alignment loss is nearly satisfied without learning anything from the teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from viral.data.shapes import COLOURS, MAX_OBJECTS, SHAPES
from viral.study.world import WorldSplit

logger = logging.getLogger(__name__)
POSITION_CELLS = 3


@torch.no_grad()
def student_features(student_dir: str | Path, split: WorldSplit, feature_layer: int = -2,
                     batch_size: int = 256) -> torch.Tensor:
    """`[n, N, D]` vision features z of the tiny LLaVA built on this tower (CLS dropped)."""
    from transformers import AutoImageProcessor, CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(str(student_dir)).eval()
    processor = AutoImageProcessor.from_pretrained(str(student_dir))
    out = []
    for start in range(0, len(split), batch_size):
        images = [Image.fromarray(im) for im in split.images[start:start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer]
        out.append(hidden[:, 1:])
    return torch.cat(out)


@torch.no_grad()
def teacher_features(teacher_dir: str | Path, split: WorldSplit, student_grid: tuple[int, int],
                     batch_size: int = 256) -> torch.Tensor:
    """`[n, N_student, D]` VRA targets through the teacher registry."""
    from viral.align.teachers import build_teacher

    teacher = build_teacher(str(teacher_dir), student_grid)
    out = []
    for start in range(0, len(split), batch_size):
        images = [Image.fromarray(im) for im in split.images[start:start + batch_size]]
        out.append(teacher(teacher.preprocess(images)))
    return torch.cat(out)


def count_task(split: WorldSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, query = shape index, target = number of such objects) for every image and shape."""
    rows = [(i, s, min(sum(o.shape == s + 1 for o in objects), MAX_OBJECTS))
            for i, objects in enumerate(split.objects) for s in range(len(SHAPES))]
    return tuple(torch.tensor(column) for column in zip(*rows))


def position_task(split: WorldSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, query = (shape, colour) id, target = 3x3 cell of its centre) for unique objects."""
    rows = []
    cell = split.size / POSITION_CELLS
    for i, objects in enumerate(split.objects):
        kinds = [(o.shape, o.colour) for o in objects]
        for o in objects:
            if kinds.count((o.shape, o.colour)) != 1:
                continue
            row, col = min(int(o.cy // cell), POSITION_CELLS - 1), min(int(o.cx // cell), POSITION_CELLS - 1)
            rows.append((i, (o.shape - 1) * len(COLOURS) + (o.colour - 1), row * POSITION_CELLS + col))
    return tuple(torch.tensor(column) for column in zip(*rows))


def existence_task(split: WorldSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, query = (shape, colour) id, target = 1 if the image holds such an object else 0): every
    pair present in an image and as many absent ones, drawn with the image's index as seed (deterministic)."""
    pairs = len(SHAPES) * len(COLOURS)
    rows = []
    for i, objects in enumerate(split.objects):
        present = sorted({(o.shape - 1) * len(COLOURS) + (o.colour - 1) for o in objects})
        absent = [q for q in range(pairs) if q not in present]
        drawn = np.random.default_rng(i).choice(absent, size=min(len(present), len(absent)), replace=False)
        rows += [(i, q, 1) for q in present] + [(i, int(q), 0) for q in sorted(drawn)]
    return tuple(torch.tensor(column) for column in zip(*rows))


def colour_task(split: WorldSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, query = shape index, target = colour index of that shape) for shapes once in their image."""
    rows = []
    for i, objects in enumerate(split.objects):
        shapes = [o.shape for o in objects]
        rows += [(i, o.shape - 1, o.colour - 1) for o in objects if shapes.count(o.shape) == 1]
    return tuple(torch.tensor(column) for column in zip(*rows))


TASKS = {  # name: (make the task from a split, number of queries, number of classes)
    "count": (count_task, len(SHAPES), MAX_OBJECTS + 1),
    "position": (position_task, len(SHAPES) * len(COLOURS), POSITION_CELLS * POSITION_CELLS),
    "existence": (existence_task, len(SHAPES) * len(COLOURS), 2),
    "colour": (colour_task, len(SHAPES), len(COLOURS)),
}
DEFAULT_PROBE_TASKS = ("count", "position")  # what the premise is read on; the others on request


class GatedAttentionProbe(nn.Module):
    """Patch tokens -> token MLP -> one self-attention block over the patches (no positions of its own)
    -> query-conditioned pooling sum_i sigmoid(k_i . q) v_i / N -> MLP classifier."""

    def __init__(self, dim: int, num_queries: int, num_classes: int, width: int = 32):
        super().__init__()
        self.token_mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU(), nn.Linear(width, width))
        self.block = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.key, self.value = nn.Linear(width, width), nn.Linear(width, width)
        self.query = nn.Embedding(num_queries, width)
        self.classifier = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                        nn.Linear(width, num_classes))

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        hidden = self.block(self.token_mlp(tokens))  # [B, N, W]
        q = self.query(query)  # [B, W]
        gates = torch.sigmoid((self.key(hidden) * q[:, None]).sum(-1) / hidden.shape[-1] ** 0.5)  # [B, N]
        pooled = (gates[..., None] * self.value(hidden)).mean(1)  # [B, W]
        return self.classifier(pooled)


class PooledLinearProbe(nn.Module):
    """Mean-pooled tokens, one linear classifier per query."""

    def __init__(self, dim: int, num_queries: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(dim, num_queries * num_classes)

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        logits = self.linear(tokens.mean(1)).view(len(tokens), -1, self.num_classes)  # [B, Q, C]
        return logits[torch.arange(len(tokens)), query]


def fit_probe(probe: nn.Module, features: torch.Tensor, task: tuple, test_features: torch.Tensor,
              test_task: tuple, steps: int = 800, batch_size: int = 128, lr: float = 3e-3,
              seed: int = 0) -> float:
    """Train `probe` on (features[image], query) -> target; accuracy (%) on the test task."""
    torch.manual_seed(seed)
    images, queries, targets = task
    mean, std = features.mean((0, 1)), features.std((0, 1)) + 1e-6  # standardise each feature dimension
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in range(steps):
        index = torch.randint(len(targets), (batch_size,), generator=generator)
        logits = probe((features[images[index]] - mean) / std, queries[index])
        loss = F.cross_entropy(logits, targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    probe.eval()
    test_images, test_queries, test_targets = test_task
    with torch.no_grad():
        predicted = torch.cat([
            probe((test_features[test_images[s:s + 1024]] - mean) / std, test_queries[s:s + 1024]).argmax(-1)
            for s in range(0, len(test_targets), 1024)
        ])
    return round(float((predicted == test_targets).float().mean()) * 100, 2)


def majority_accuracy(task: tuple, test_task: tuple) -> float:
    """Accuracy (%) on the test task of always answering the training majority class."""
    majority = int(torch.bincount(task[2]).argmax())
    return round(float((test_task[2] == majority).float().mean()) * 100, 2)


def probe_tasks(train: WorldSplit, test: WorldSplit, names=DEFAULT_PROBE_TASKS) -> dict[str, tuple]:
    """Per task in `names`: (train task, test task, number of queries, number of classes)."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return {name: (TASKS[name][0](train), TASKS[name][0](test), *TASKS[name][1:]) for name in names}


def run_probes(features: torch.Tensor, test_features: torch.Tensor, tasks: dict[str, tuple],
               steps: int = 800, seed: int = 0, threads: int | None = None) -> dict[str, dict[str, float]]:
    """Both probe kinds on every task for one encoder's features."""
    if threads:
        torch.set_num_threads(threads)
    results = {}
    for name, (task, test_task, num_queries, num_classes) in tasks.items():
        # every probe starts from weights drawn from `seed`, whatever ran before in this process (a pool
        # worker's global RNG state depends on the calls it ran before: the probes read 72-81 across runs)
        torch.manual_seed(seed)
        attention = GatedAttentionProbe(features.shape[-1], num_queries, num_classes)
        torch.manual_seed(seed)
        linear = PooledLinearProbe(features.shape[-1], num_queries, num_classes)
        results[name] = {
            "patch_attention_probe": fit_probe(attention, features, task, test_features, test_task, steps, seed=seed),
            "pooled_linear_probe": fit_probe(linear, features, task, test_features, test_task, steps, seed=seed),
            "chance": majority_accuracy(task, test_task),
            "questions": len(test_task[2]),
        }
    return results


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double(), dim=-1)


def constant_target_cosine(fit: torch.Tensor, score: torch.Tensor | None = None) -> float:
    """Mean cosine of the vectors `score` `[M, D]` (default: `fit`) with the best single vector for
    `fit` `[M', D]` (the mean of its unit vectors, normalised)."""
    fit = F.normalize(fit, dim=-1)
    score = fit if score is None else F.normalize(score, dim=-1)
    return float((score @ F.normalize(fit.mean(0), dim=0)).mean())


def alignment_diagnostics(student: torch.Tensor, teacher: torch.Tensor, test_student: torch.Tensor,
                          test_teacher: torch.Tensor, ridge: float = 1e-3) -> dict[str, float]:
    """Mean cosine with the teacher's eval patch features of the best constant and of a linear map of z."""
    targets, test_targets = _unit(teacher.flatten(0, 1)), _unit(test_teacher.flatten(0, 1))  # [n*N, D_y]
    constant_cosine = constant_target_cosine(targets, test_targets)

    def design(z):
        z = z.flatten(0, 1).double()
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)  # [n*N, D_z + 1]

    x, test_x = design(student), design(test_student)
    gram = x.T @ x
    weights = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                                 x.T @ targets)
    linear_cosine = float(F.cosine_similarity(test_x @ weights, test_targets, dim=-1).mean())
    return {"constant_target_cosine": round(constant_cosine, 4),
            "student_linear_map_cosine": round(linear_cosine, 4),
            "teacher_patches": int(test_targets.shape[0])}


def encoder_probes(student_dir: str | Path, teacher_dir: str | Path, data_dir: str | Path, n_train: int,
                   n_test: int, steps: int = 800, seed: int = 0, jobs: int = 1,
                   tasks=DEFAULT_PROBE_TASKS) -> dict[str, Any]:
    """Probes of both encoders (side by side when jobs > 1) and the alignment diagnostics, as a report section."""
    from viral.parallel import run_parallel
    from viral.study.world import load_split

    train, test = load_split(data_dir, "train", n_train), load_split(data_dir, "eval", n_test)
    z_train, z_test = student_features(student_dir, train), student_features(student_dir, test)
    side = int(round(z_train.shape[1] ** 0.5))
    y_train, y_test = teacher_features(teacher_dir, train, (side, side)), teacher_features(teacher_dir, test, (side, side))
    logger.info("probing the student %s and the teacher %s", tuple(z_train.shape), tuple(y_train.shape))
    tasks = probe_tasks(train, test, tasks)
    student, teacher = run_parallel(run_probes, [(z_train, z_test, tasks, steps, seed),
                                                 (y_train, y_test, tasks, steps, seed)], jobs)
    return {
        "probes": {"student": student, "teacher": teacher, "steps": steps, "fitted_on_images": len(train),
                   "scored_on_images": len(test),
                   "features": {"student": "vision features z (layer -2, CLS dropped)",
                                "teacher": "VRA targets through the teacher registry"}},
        "diagnostics": alignment_diagnostics(z_train, y_train, z_test, y_test),
    }
