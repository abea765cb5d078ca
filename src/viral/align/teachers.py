"""Registry of frozen alignment targets (teachers): the MLLM's own encoder, or a vision foundation model.

A teacher sees the raw image normalised with its *own* mean and std at its *own* input size (never
the student's pixels), runs frozen, in eval mode, under no_grad, and its patch grid is resampled
(bilinear) to the student's image-token grid so any pair of resolutions works. Teachers are plain
objects, never `nn.Module` children of the trained model: they stay out of the optimizer and the
checkpoint.

Ids (`align.vra_target`):
- `encoder` (alias `clip`): the MLLM's own vision features z (the paper's encoder alignment);
- `dinov2-vit-s|b|l|g`, `dinov2-small|base|large|giant`, `dinov2-with-registers-*`, any hub id whose
  name holds `dinov2`, or a local folder of a transformers DINOv2 model.
Adding a family is one entry in `TEACHER_FAMILIES` (and, for short names, in `ALIASES`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from viral.config import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ALIASES = {
    "clip": ("encoder", None),
    "encoder": ("encoder", None),
    "dinov2-vit-s": ("dinov2", "facebook/dinov2-small"),
    "dinov2-vit-b": ("dinov2", "facebook/dinov2-base"),
    "dinov2-vit-l": ("dinov2", "facebook/dinov2-large"),
    "dinov2-vit-g": ("dinov2", "facebook/dinov2-giant"),
}


def resample_grid(features: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """`[B, h*w, D]` on grid (h, w) -> `[B, H*W, D]` on grid (H, W), bilinear; identity when equal."""
    if tuple(grid) == tuple(target):
        return features
    batch, _, dim = features.shape
    h, w = grid
    maps = features.transpose(1, 2).reshape(batch, dim, h, w)  # [B, D, h, w]
    maps = F.interpolate(maps.float(), size=tuple(target), mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2).to(features.dtype)  # [B, H*W, D]


class Teacher:
    """Base class: `preprocess(images)` -> pixels, `__call__(pixels)` -> `[B, N_student, z_dim]`."""

    spec: str = ""
    z_dim: int = 0
    needs_pixels: bool = True  # False: targets come from the student's own forward pass

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self):
        return iter(())

    def to(self, device=None, dtype=None) -> "Teacher":
        return self


class EncoderTeacher(Teacher):
    """The MLLM's own vision features z (layer -2, CLS dropped): captured at the projector's input."""

    needs_pixels = False

    def __init__(self, spec: str, student_grid: tuple[int, int], vision_hidden_size: int):
        self.spec = spec
        self.student_grid = tuple(student_grid)
        self.z_dim = int(vision_hidden_size)


class HFVisionTeacher(Teacher):
    """A frozen transformers vision model whose patch tokens are the targets."""

    def __init__(self, spec: str, source: str, student_grid: tuple[int, int], device=None, dtype=torch.float32):
        self.spec, self.source = spec, source
        self.student_grid = tuple(student_grid)
        self.model = self.load_model(source).to(device=device or "cpu", dtype=dtype)
        self.model.requires_grad_(False)
        self.model.eval()
        self.mean, self.std, self.input_size = self.load_preprocessing(source)
        self.patch_size = int(self.model.config.patch_size)
        side = self.input_size // self.patch_size
        self.grid = (side, side)
        self.z_dim = int(self.model.config.hidden_size)

    def load_model(self, source: str):
        raise NotImplementedError

    def load_preprocessing(self, source: str) -> tuple[tuple, tuple, int]:
        """Mean, std and square input size from the model's own image processor (or its config)."""
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, int(self.model.config.image_size)
        config_path = Path(source) / "preprocessor_config.json"
        data = None
        if config_path.is_file():
            data = json.loads(config_path.read_text())
        else:
            try:
                from transformers import AutoImageProcessor

                data = AutoImageProcessor.from_pretrained(source).to_dict()
            except (OSError, ValueError):
                data = None
        if data:
            mean = tuple(data.get("image_mean") or mean)
            std = tuple(data.get("image_std") or std)
            crop = data.get("crop_size") if data.get("do_center_crop", True) else None
            resize = data.get("size") or {}
            if isinstance(crop, dict) and crop.get("height"):
                size = int(crop["height"])
            elif isinstance(resize, dict) and (resize.get("height") or resize.get("shortest_edge")):
                size = int(resize.get("height") or resize.get("shortest_edge"))
        return mean, std, size

    def parameters(self):
        return self.model.parameters()

    def to(self, device=None, dtype=None) -> "HFVisionTeacher":
        self.model.to(device=device, dtype=dtype)
        return self

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize the whole (already squared) image to the teacher's size; normalise with its mean/std."""
        arrays = []
        for image in images:
            resized = image.convert("RGB").resize((self.input_size, self.input_size), Image.BICUBIC)
            arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, S, S]
        mean = torch.tensor(self.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[None, :, None, None]
        return (pixels - mean) / std

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        tokens = self.patch_tokens(pixel_values.to(parameter.device, parameter.dtype))  # [B, h*w, D]
        return resample_grid(tokens, self.grid, self.student_grid)  # [B, N_student, D]


class Dinov2Teacher(HFVisionTeacher):
    """DINOv2 (with or without registers): patch tokens after the final layer norm; CLS and registers dropped."""

    def load_model(self, source: str):
        from transformers import AutoModel

        return AutoModel.from_pretrained(source)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # [B, 1 + R + h*w, D]
        registers = int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        return hidden[:, 1 + registers:]


TEACHER_FAMILIES = {"encoder": EncoderTeacher, "dinov2": Dinov2Teacher}
MODEL_TYPE_FAMILIES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2"}


def resolve_teacher_spec(spec: str) -> tuple[str, str | None]:
    """(family, source) of a teacher id, alias, hub id or local folder; unknown ids list the known ones."""
    if spec in ALIASES:
        return ALIASES[spec]
    path = Path(spec)
    if path.is_dir():
        config_file = path / "config.json"
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
        if model_type in MODEL_TYPE_FAMILIES:
            return MODEL_TYPE_FAMILIES[model_type], str(path)
        raise ConfigError(
            f"align.vra_target {spec!r} is a folder whose config.json has model_type {model_type!r}; "
            f"teacher folders must hold one of {sorted(MODEL_TYPE_FAMILIES)}"
        )
    name = spec.split("/")[-1]
    if spec.startswith("dinov2-") and "/" not in spec:
        return "dinov2", f"facebook/{spec}"
    if "/" in spec and "dinov2" in name:
        return "dinov2", spec
    known = sorted(ALIASES) + ["dinov2-small|base|large|giant", "dinov2-with-registers-*", "<hub id or folder>"]
    raise ConfigError(f"unknown teacher id {spec!r} in align.vra_target; known: {known}")


def teacher_feature_dim(spec: str, vision_hidden_size: int) -> int:
    """The teacher's feature width from its config alone (no weights loaded); errors name the teacher."""
    family, source = resolve_teacher_spec(spec)
    if family == "encoder":
        return int(vision_hidden_size)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"align.vra_target {spec!r}: cannot read its config ({err})") from err
    return int(config.hidden_size)


def build_teacher(spec: str, student_grid: tuple[int, int], vision_hidden_size: int | None = None,
                  device=None, dtype=torch.float32) -> Teacher:
    """A frozen teacher for `spec` whose features land on `student_grid`."""
    family, source = resolve_teacher_spec(spec)
    if family == "encoder":
        if vision_hidden_size is None:
            raise ValueError("the encoder teacher needs the vision tower's hidden size")
        return EncoderTeacher(spec, student_grid, vision_hidden_size)
    return TEACHER_FAMILIES[family](spec, source, student_grid, device=device, dtype=dtype)
