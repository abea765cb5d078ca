"""Stage 0 of the study: the student's vision tower and the teacher VFM, trained once on ShapesWorld.

- The **student** (CLIP vision architecture) is trained with a *global* objective only: from its pooled
  output, predict which (shape, colour) pairs are present (multi-label, binary cross-entropy) -
  nothing about counts or positions, the analogue of CLIP's image-level supervision. Its position
  embeddings start as CLIP's own (random, 0.02 std) and nothing asks it to keep them, so its patch
  features say little about where they are; the LLM still sees the image tokens in raster order.
- The **teacher** (DINOv2 architecture) is trained with a *dense* objective: from every patch token,
  predict the fraction of the patch covered by each shape and by each colour (soft cross-entropy
  against the label maps pooled to the patch grid) and where in the image the patch's object is (its
  centre, regressed from every patch the object covers), the analogue of a dense foundation model whose
  patch features carry spatial structure that a global objective leaves out. Its saved features are
  standardised per dimension (folded into its final layer norm): raw, one shared direction dominated
  them (a constant vector reached cosine 0.84 with every patch), so a cosine alignment loss was nearly
  satisfied without learning anything about the image.

Both are saved in transformers format with their own image processors: `OUT/student` (a
`CLIPVisionModel`, usable as `model.vision_tower_path`) and `OUT/teacher` (a `Dinov2Model`, usable as
`align.vra_target`, loaded through the teacher registry like any DINOv2). `OUT/report.json` holds the
training curves, each encoder's own objective on the eval split, the patch-level probes and the
alignment diagnostics (`viral.study.probes`). A folder whose report has the same training settings is
reused (other probe settings re-run the probes only).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from viral.align.teachers import IMAGENET_MEAN, IMAGENET_STD
from viral.data.shapes import COLOURS, SHAPES, object_ids
from viral.model import make_image_processor
from viral.study.probes import DEFAULT_PROBE_TASKS
from viral.study.world import WorldSplit, load_split

logger = logging.getLogger(__name__)

STUDENT_DIR = "student"
TEACHER_DIR = "teacher"
REPORT_NAME = "report.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_SHAPE_CLASSES = len(SHAPES) + 1  # 0 = background
NUM_COLOUR_CLASSES = len(COLOURS) + 1


@dataclass
class EncoderSettings:
    """Sizes and optimisation of the two stage-0 encoders (both small ViTs)."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 12
    teacher_image_size: int = 96  # the teacher's own input size; its grid is resampled to the student's
    # 1000 steps cost the teacher its counting (count probe 61.7 after 1000 steps, 84.2 after 1500)
    student_steps: int = 1500
    teacher_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    n_train: int | None = 8000  # training images used (None: all; every image is held in memory)
    probe_train: int = 2000  # images the probes and the linear map are fitted on
    probe_test: int = 1000  # eval images they are scored on
    # the teacher's position probe is still rising at 500 (43.8 at 600 steps, 66.3 at 1500; the student's stays
    # at chance): enough for the verdict at a third of the cost, which sits on make demo's critical path
    probe_steps: int = 500
    # what the probes ask (viral.study.probes.TASKS): count and position read the premise; existence and colour
    # tell whether the student's tokens carry what those ShapesBench types need
    probe_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_PROBE_TASKS))
    # weight of the teacher's object-centre regression (0: shape and colour only); 10 drowned the shape
    # objective (object-patch shape accuracy 29%)
    teacher_centre_weight: float = 1.0
    # the student's initial positions: "random" (CLIP's own init; a global objective leaves its patch features
    # with little position) or "sincos" (fixed 2-D sine-cosine start, kept by every patch)
    student_positions: str = "random"
    # fold per-dimension standardisation of the teacher's patch features into its final layer norm
    teacher_standardise: bool = True
    seed: int = 0


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """`[n, S, S, 3]` uint8 -> `[n, 3, S, S]` float, normalised with `mean`/`std`."""
    pixels = torch.from_numpy(images).float().div_(255.0).permute(0, 3, 1, 2)
    return (pixels - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize every image as the teacher registry does (PIL bicubic); unchanged when already `size`."""
    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


def presence_targets(split: WorldSplit) -> torch.Tensor:
    """`[n, shapes * colours]` multi-hot: which (shape, colour) pairs the image holds."""
    n_colours = len(COLOURS)
    targets = torch.zeros(len(split), len(SHAPES) * n_colours)
    for i, objects in enumerate(split.objects):
        for o in objects:
            targets[i, (o.shape - 1) * n_colours + (o.colour - 1)] = 1.0
    return targets


def dense_targets(split: WorldSplit, grid: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction of each patch covered by each shape id and each colour id: `[n, g*g, 4]`, `[n, g*g, 5]`.

    Computed `chunk` images at a time: one-hot maps of the whole split at once are gigabytes and slow."""
    shapes, colours = [], []
    for start in range(0, len(split), chunk):
        labels = torch.from_numpy(split.labels[start:start + chunk].astype(np.int64))  # [c, S, S, 2]
        for channel, classes, out in ((0, NUM_SHAPE_CLASSES, shapes), (1, NUM_COLOUR_CLASSES, colours)):
            one_hot = F.one_hot(labels[..., channel], classes).permute(0, 3, 1, 2).float()  # [c, C, S, S]
            pooled = F.adaptive_avg_pool2d(one_hot, grid)  # [c, C, g, g]
            out.append(pooled.flatten(2).transpose(1, 2))  # [c, g*g, C]
    return torch.cat(shapes), torch.cat(colours)


def centre_targets(split: WorldSplit, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each patch's object is: `[n, g*g, 2]` (x, y) of the covering object's centre in [0, 1] of the
    image, and `[n, g*g]` the fraction of the patch that objects cover (the weight of that target).

    A patch covered by parts of two objects gets the coverage-weighted mean of their centres.
    """
    from scipy import ndimage

    size = split.size
    maps = np.zeros((len(split), 3, size, size), dtype=np.float32)  # (x * covered, y * covered, covered)
    for i, labels in enumerate(split.labels):
        ids = object_ids(labels)  # [S, S] one id per (shape, colour)
        for value in np.unique(ids[labels[..., 0] > 0]):
            regions, count = ndimage.label(ids == value)
            for region in range(1, count + 1):
                ys, xs = np.nonzero(regions == region)
                maps[i, 0, ys, xs] = (xs.mean() + 0.5) / size
                maps[i, 1, ys, xs] = (ys.mean() + 0.5) / size
                maps[i, 2, ys, xs] = 1.0
    maps[:, :2] *= maps[:, 2:]
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(maps), grid).flatten(2).transpose(1, 2)  # [n, g*g, 3]
    covered = pooled[..., 2]
    return pooled[..., :2] / covered.clamp_min(1e-6)[..., None], covered


def _flip(pixels: torch.Tensor, dense: list[torch.Tensor], grid: int | None, generator: torch.Generator,
          centres: torch.Tensor | None = None):
    """Random horizontal / vertical flips of a batch, applied to the dense targets too; object centres
    `[B, g*g, 2]` (x, y in [0, 1]) move with the image (x -> 1 - x on a horizontal flip)."""
    for dim in (3, 2):
        if torch.rand((), generator=generator) < 0.5:
            pixels = pixels.flip(dim)
            if grid is not None:
                dense = [d.reshape(d.shape[0], grid, grid, -1).flip(dim - 1).flatten(1, 2) for d in dense]
            if centres is not None:
                centres = centres.reshape(centres.shape[0], grid, grid, 2).flip(dim - 1).flatten(1, 2).clone()
                axis = 0 if dim == 3 else 1
                centres[..., axis] = 1.0 - centres[..., axis]
    return (pixels, dense) if centres is None else (pixels, dense, centres)


def _schedule(optimizer, steps: int):
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )


def _log_every(steps: int) -> int:
    return max(1, steps // 5)


PROGRESS_NAME = "metrics.jsonl"  # in each encoder's folder: `{"step": k}` every PROGRESS_EVERY steps
PROGRESS_EVERY = 50


class StepLog:
    """An encoder's training steps: the loss curve (also logged, at debug level when `quiet`) and the step
    reached, appended to `progress_file` for a progress bar drawn by another process."""

    def __init__(self, name: str, steps: int, progress_file: Path | None = None, quiet: bool = False):
        self.name, self.steps, self.file, self.quiet = name, steps, progress_file, quiet
        self.curve: list[dict[str, float]] = []
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text("")

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        last = step == self.steps - 1
        if step % _log_every(self.steps) == 0 or last:
            self.curve.append({"step": step, "loss": round(loss.item(), 5)})
            logger.log(logging.DEBUG if self.quiet else logging.INFO, "%s step %d loss %.4f", self.name, step,
                       loss.item())
        if self.file is not None and ((step + 1) % PROGRESS_EVERY == 0 or last):
            with self.file.open("a") as handle:
                handle.write(json.dumps({"step": step + 1}) + "\n")


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings `[1 + grid*grid, dim]` (MAE style; a zero row for CLS).

    The teacher starts from these (and the student with `student_positions="sincos"`) instead of the
    default 0.02-std random positions: with those, a small ViT trained from scratch on an objective that
    never needs position keeps almost none (its patch features do not even predict their own row or
    column).
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [D/4]
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None] * omega[None]  # [N, D/4]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, 1)  # [N, 4 * (D/4)]
    table = F.pad(table, (0, dim - table.shape[1]))
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def student_config(settings: EncoderSettings, image_size: int):
    """The student's `CLIPVisionConfig`: known before the student is trained."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=settings.hidden_size, intermediate_size=settings.hidden_size * 2,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        image_size=image_size, patch_size=settings.patch_size, projection_dim=settings.hidden_size,
    )


def tower_shape(vision) -> list[str]:
    """`model.*` overrides giving the tiny preset a random vision tower of `vision`'s shape (a CLIP vision
    config, e.g. `student_config`): what the language stage builds its LLaVA on, so that it need not wait for
    the student (it reads no image; stage 1 swaps the trained student in). The LLM's initialisation is the
    same as on the trained tower: the random one draws as many numbers."""
    if vision.intermediate_size != 2 * vision.hidden_size:
        raise ValueError(f"the tiny preset's tower has an MLP twice its width; this one: {vision.intermediate_size} "
                         f"for {vision.hidden_size}")
    return [f"model.image_size={vision.image_size}", f"model.patch_size={vision.patch_size}",
            f"model.vision_hidden_size={vision.hidden_size}", f"model.vision_layers={vision.num_hidden_layers}"]


def build_student(settings: EncoderSettings, image_size: int):
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(student_config(settings, image_size))
    if settings.student_positions == "sincos":
        with torch.no_grad():
            model.embeddings.position_embedding.weight.copy_(
                sincos_positions(image_size // settings.patch_size, settings.hidden_size))
    elif settings.student_positions != "random":
        raise ValueError(f"student_positions {settings.student_positions!r}: choose random or sincos")
    return model


def build_teacher_model(settings: EncoderSettings):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=settings.hidden_size, num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads, mlp_ratio=2, image_size=settings.teacher_image_size,
        patch_size=settings.patch_size,
    )
    model = Dinov2Model(config)
    with torch.no_grad():
        model.embeddings.position_embeddings.copy_(
            sincos_positions(settings.teacher_image_size // settings.patch_size, settings.hidden_size)[None])
    return model


def train_student(train: WorldSplit, settings: EncoderSettings, log: StepLog | None = None):
    """The CLIP-architecture tower trained on presence of (shape, colour) pairs; returns (model, head, curve)."""
    log = log or StepLog("student", settings.student_steps)
    torch.manual_seed(settings.seed)
    model = build_student(settings, train.size)
    head = nn.Linear(settings.hidden_size, len(SHAPES) * len(COLOURS))
    pixels = normalise(train.images, CLIP_MEAN, CLIP_STD)  # [n, 3, S, S]
    targets = presence_targets(train)  # [n, 12]
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    scheduler = _schedule(optimizer, settings.student_steps)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    for step in range(settings.student_steps):
        index = torch.randint(len(pixels), (settings.batch_size,), generator=generator)
        batch, _ = _flip(pixels[index], [], None, generator)
        logits = head(model(pixel_values=batch).pooler_output)  # [B, 12]
        loss = F.binary_cross_entropy_with_logits(logits, targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        log(step, loss)
    model.eval()
    return model, head, log.curve


def train_teacher(train: WorldSplit, settings: EncoderSettings, log: StepLog | None = None):
    """The DINOv2-architecture model trained on per-patch shape and colour; returns (model, heads, curve)."""
    log = log or StepLog("teacher", settings.teacher_steps)
    torch.manual_seed(settings.seed + 1)
    model = build_teacher_model(settings)
    grid = settings.teacher_image_size // settings.patch_size
    shape_head = nn.Linear(settings.hidden_size, NUM_SHAPE_CLASSES)
    colour_head = nn.Linear(settings.hidden_size, NUM_COLOUR_CLASSES)
    centre_head = nn.Linear(settings.hidden_size, 2)
    pixels = normalise(resize_images(train.images, settings.teacher_image_size), IMAGENET_MEAN, IMAGENET_STD)
    shape_frac, colour_frac = dense_targets(train, grid)  # [n, g*g, 4], [n, g*g, 5]
    centres, covered = centre_targets(train, grid)  # [n, g*g, 2], [n, g*g]
    params = [p for module in (model, shape_head, colour_head, centre_head) for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    scheduler = _schedule(optimizer, settings.teacher_steps)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    model.train()
    for step in range(settings.teacher_steps):
        index = torch.randint(len(pixels), (settings.batch_size,), generator=generator)
        batch, (shapes, colours, weight), centre = _flip(
            pixels[index], [shape_frac[index], colour_frac[index], covered[index, :, None]], grid, generator,
            centres[index])
        tokens = model(pixel_values=batch).last_hidden_state[:, 1:]  # [B, g*g, D]
        loss = soft_cross_entropy(shape_head(tokens), shapes) + soft_cross_entropy(colour_head(tokens), colours)
        if settings.teacher_centre_weight:
            # where the patch's object is, in the image: a target that needs position, unlike the others
            squared = ((centre_head(tokens) - centre) ** 2).sum(-1, keepdim=True)  # [B, g*g, 1]
            loss = loss + settings.teacher_centre_weight * (weight * squared).sum() / weight.sum().clamp_min(1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        log(step, loss)
    model.eval()
    return model, (shape_head, colour_head, centre_head), log.curve


@torch.no_grad()
def standardise_teacher(model, heads, pixels: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Make the teacher's patch features zero-mean, unit-variance per dimension on `pixels` `[n, 3, S, S]`,
    by folding the affine map into its final layer norm (and the inverse into the objective's heads, so
    they read the new features as they read the old). Returns the features' constant-target cosine
    before and after (the mean cosine of every patch with the best single vector)."""
    tokens = torch.cat([model(pixel_values=p).last_hidden_state[:, 1:] for p in pixels.split(batch_size)])
    tokens = tokens.flatten(0, 1)  # [n*N, D]
    mean, std = tokens.mean(0), tokens.std(0).clamp_min(1e-6)  # [D]
    norm = model.layernorm
    norm.weight.div_(std)
    norm.bias.sub_(mean).div_(std)
    for head in heads:  # head(x) = W x + b with x = std * x' + mean
        head.bias.add_(head.weight @ mean)
        head.weight.mul_(std[None])
    from viral.study.probes import constant_target_cosine

    return {"constant_target_cosine_raw": round(constant_target_cosine(tokens), 4),
            "constant_target_cosine": round(constant_target_cosine((tokens - mean) / std), 4)}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution over classes, `[..., C]`, averaged over all leading dims."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@torch.no_grad()
def student_objective(model, head, split: WorldSplit) -> dict[str, float]:
    """Presence prediction on `split`: exact-set accuracy and per-label accuracy (the student's own task)."""
    logits = torch.cat([head(model(pixel_values=p).pooler_output)
                        for p in normalise(split.images, CLIP_MEAN, CLIP_STD).split(256)])
    predicted = (logits > 0).float()
    targets = presence_targets(split)
    return {"presence_exact_set": round(float((predicted == targets).all(1).float().mean()) * 100, 2),
            "presence_label_accuracy": round(float((predicted == targets).float().mean()) * 100, 2)}


@torch.no_grad()
def teacher_objective(model, heads, split: WorldSplit, settings: EncoderSettings) -> dict[str, float]:
    """Per-patch majority shape and colour on `split`, over all patches and over patches with an object."""
    grid = settings.teacher_image_size // settings.patch_size
    pixels = normalise(resize_images(split.images, settings.teacher_image_size), IMAGENET_MEAN, IMAGENET_STD)
    tokens = torch.cat([model(pixel_values=p).last_hidden_state[:, 1:] for p in pixels.split(256)])
    shape_frac, colour_frac = dense_targets(split, grid)
    occupied = shape_frac[..., 0] < 0.5
    result = {}
    for name, head, frac in (("shape", heads[0], shape_frac), ("colour", heads[1], colour_frac)):
        correct = head(tokens).argmax(-1) == frac.argmax(-1)
        result[f"patch_{name}_accuracy"] = round(float(correct.float().mean()) * 100, 2)
        result[f"object_patch_{name}_accuracy"] = round(float(correct[occupied].float().mean()) * 100, 2)
    if settings.teacher_centre_weight:
        centres, _ = centre_targets(split, grid)
        error = (heads[2](tokens) - centres)[occupied].norm(dim=-1) * split.size  # [patches with an object]
        result["object_patch_centre_error_px"] = round(float(error.mean()), 2)
    return result


def save_student(model, out: Path, image_size: int) -> Path:
    model.save_pretrained(out)
    make_image_processor("CLIPImageProcessor", size={"shortest_edge": image_size},
                         crop_size={"height": image_size, "width": image_size},
                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
    return out


def save_teacher(model, out: Path, image_size: int) -> Path:
    model.save_pretrained(out)
    make_image_processor("BitImageProcessor", size={"shortest_edge": image_size},
                         crop_size={"height": image_size, "width": image_size},
                         image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(out)
    return out


OBJECTIVE_HEAD_NAME = "objective_head.safetensors"
STANDARDISE_IMAGES = 2000  # training images whose patch features set the teacher's standardisation
PROBE_FIELDS = ("probe_train", "probe_test", "probe_steps", "probe_tasks")  # the probes', not the encoders'



def _save_heads(heads: dict[str, nn.Module], folder: Path) -> None:
    """The objective's linear heads beside the encoder (not part of the transformers model)."""
    from safetensors.torch import save_file

    save_file({f"{name}.{k}": v.detach().contiguous() for name, head in heads.items()
               for k, v in head.state_dict().items()}, str(folder / OBJECTIVE_HEAD_NAME))


def stage0_encoder(kind: str, data_dir: str, out: str, settings_dict: dict[str, Any], quiet: bool = False,
                   threads: int | None = None) -> dict[str, Any]:
    """Train one encoder ("student" or "teacher"), save it, score its own objective on eval images.

    Its steps reach OUT/KIND/metrics.jsonl (for a progress bar); `quiet` logs the loss at debug level."""
    if kind not in (STUDENT_DIR, TEACHER_DIR):
        raise ValueError(f"unknown stage-0 encoder {kind!r}; choose student or teacher")
    if threads:
        torch.set_num_threads(threads)
    settings = EncoderSettings(**settings_dict)
    start, cpu = time.time(), time.process_time()
    train = load_split(data_dir, "train", settings.n_train)
    evaluation = load_split(data_dir, "eval", settings.probe_test)
    folder = Path(out) / kind
    steps = settings.student_steps if kind == STUDENT_DIR else settings.teacher_steps
    log = StepLog(kind, steps, folder / PROGRESS_NAME, quiet)
    if kind == STUDENT_DIR:
        model, head, curve = train_student(train, settings, log)
        save_student(model, folder, train.size)
        _save_heads({"presence": head}, folder)
        section = {"architecture": "CLIPVisionModel", "image_size": train.size,
                   "objective": "global: multi-label presence of (shape, colour) pairs from the pooled output",
                   "eval": student_objective(model, head, evaluation)}
    else:
        model, heads, curve = train_teacher(train, settings, log)
        standardised = None
        if settings.teacher_standardise:
            sample = train.images[:STANDARDISE_IMAGES]
            standardised = standardise_teacher(model, heads, normalise(
                resize_images(sample, settings.teacher_image_size), IMAGENET_MEAN, IMAGENET_STD))
        save_teacher(model, folder, settings.teacher_image_size)
        _save_heads({"shape": heads[0], "colour": heads[1], "centre": heads[2]}, folder)
        section = {"architecture": "Dinov2Model", "image_size": settings.teacher_image_size,
                   "objective": ("dense: per-patch shape and colour fractions from the label maps"
                                 + (", and the centre of the patch's object" if settings.teacher_centre_weight
                                    else "")),
                   "eval": teacher_objective(model, heads, evaluation, settings)}
        if standardised:
            section["standardised"] = standardised
    section.update({"path": str(folder), "curve": curve, "seconds": round(time.time() - start, 1),
                    "cpu_seconds": round(time.process_time() - cpu, 1)})
    return section


def _training_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in PROBE_FIELDS}


def saved_settings(report: dict[str, Any]) -> dict[str, Any]:
    """A report's settings, with today's defaults for fields added after it was written."""
    return {**asdict(EncoderSettings()), **report.get("settings", {})}


def encoders_ready(out: str | Path, settings: EncoderSettings | None = None) -> bool:
    """True when `out` holds both encoders trained with `settings` (any, when None; the probe settings
    do not count: other probe settings re-run only the probes)."""
    out = Path(out)
    report = out / REPORT_NAME
    if not (report.is_file() and (out / STUDENT_DIR / "config.json").is_file()
            and (out / TEACHER_DIR / "config.json").is_file()):
        return False
    return settings is None or (_training_settings(saved_settings(json.loads(report.read_text())))
                                == _training_settings(asdict(settings)))


def encoders_to_train(out: str | Path, settings: EncoderSettings, force: bool = False) -> list[str]:
    """The encoders `out` still needs ([] or [student, teacher]). When they are there, trained with the same
    settings, they are reused; other probe settings drop the report's probes so that they run again."""
    out = Path(out)
    if force or not encoders_ready(out, settings):
        return [STUDENT_DIR, TEACHER_DIR]
    logger.info("reusing the stage-0 encoders in %s", out)
    report = json.loads((out / REPORT_NAME).read_text())
    if saved_settings(report) != asdict(settings):
        report["settings"] = asdict(settings)
        for key in ("probes", "diagnostics"):
            report.pop(key, None)
        report["seconds"].pop("probes", None)
        (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return []


def write_encoder_report(out: str | Path, data_dir: str | Path, settings: EncoderSettings, student: dict[str, Any],
                         teacher: dict[str, Any], seconds: float) -> dict[str, Any]:
    """OUT/report.json of two freshly trained encoders (their sections from `stage0_encoder`), before the probes."""
    report = {"settings": asdict(settings), "data": str(data_dir), "student": student, "teacher": teacher,
              "seconds": {"train": round(seconds, 1)}}
    (Path(out) / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report


def train_encoders(data_dir: str | Path, out: str | Path, settings: EncoderSettings | None = None,
                   force: bool = False, probes: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Stage 0: train, save and check both encoders; returns the report (reused when already written).

    With `jobs` > 1 the two encoders train side by side in two processes of one thread each.
    """
    from viral.parallel import run_parallel

    settings = settings or EncoderSettings()
    out = Path(out)
    kinds = encoders_to_train(out, settings, force)
    if kinds:
        start = time.time()
        student, teacher = run_parallel(stage0_encoder, [(kind, str(data_dir), str(out), asdict(settings))
                                                         for kind in kinds], jobs)
        write_encoder_report(out, data_dir, settings, student, teacher, time.time() - start)
    report = json.loads((out / REPORT_NAME).read_text())
    return probe_encoders(out, jobs=jobs) if probes else report


def probe_encoders(out: str | Path, jobs: int = 1, threads: int | None = None) -> dict[str, Any]:
    """The patch probes and diagnostics of the encoders in `out`, added to its report unless already there.

    Separate from the training so that a study can run them beside the LLM's first stages."""
    from viral.study.probes import encoder_probes

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    report = json.loads((out / REPORT_NAME).read_text())
    if "probes" not in report:
        settings = EncoderSettings(**saved_settings(report))
        start = time.time()
        report.update(encoder_probes(out / STUDENT_DIR, out / TEACHER_DIR, report["data"], settings.probe_train,
                                     settings.probe_test, steps=settings.probe_steps, seed=settings.seed, jobs=jobs,
                                     tasks=settings.probe_tasks))
        report["seconds"]["probes"] = round(time.time() - start, 1)
        (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report
