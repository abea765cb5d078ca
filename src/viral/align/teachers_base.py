"""What every teacher shares: the `Teacher` interface, loading a frozen transformers model, own preprocessing,
resampling of a teacher's patch grid onto the student's image-token grid, and the weights fingerprint.

A teacher turns images into targets in two steps, so that the slow part can run in data-loader workers
and the features can be precomputed once (`viral.align.cache`):
- `inputs(images)` -> `{"teacher_pixel_values": [B, 3, S, S], ...}`: the image at the teacher's *own*
  size with its *own* mean/std (plus whatever else the teacher needs, e.g. SAM's unpadded image sizes);
- `__call__(pixel_values, **extra)` -> `[B, N_student, z_dim]`, frozen, in eval mode, under no_grad.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from viral.config import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherLoadError(ConfigError):
    """A teacher cannot be loaded as asked (missing weights, unexpected outputs); the message says which."""


def resample_grid(features: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """`[B, h*w, D]` on grid (h, w) -> `[B, H*W, D]` on grid (H, W), bilinear; identity when equal."""
    if tuple(grid) == tuple(target):
        return features
    batch, _, dim = features.shape
    h, w = grid
    maps = features.transpose(1, 2).reshape(batch, dim, h, w)  # [B, D, h, w]
    maps = F.interpolate(maps.float(), size=tuple(target), mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2).to(features.dtype)  # [B, H*W, D]


def resample_region(maps: torch.Tensor, extent: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of the top-left `extent` (fraction of height, width per sample) of `[B, D, h, w]`
    feature maps to `[B, H*W, D]` on grid (H, W): cells covering padding are never sampled.

    With extent (1, 1) this equals `resample_grid` of the whole map (same sample positions, borders clamped).
    """
    batch, dim = maps.shape[:2]
    rows, cols = target
    extent = extent.to(device=maps.device, dtype=torch.float32).view(batch, 2)  # [B, 2] (height, width)
    # centres of the target cells, as fractions of the image: (i + 0.5) / H
    ys = (torch.arange(rows, device=maps.device, dtype=torch.float32) + 0.5) / rows  # [H]
    xs = (torch.arange(cols, device=maps.device, dtype=torch.float32) + 0.5) / cols  # [W]
    # grid_sample coordinates in [-1, 1] over the whole map (align_corners=False: -1 is the map's outer edge)
    gy = ys[None, :, None] * extent[:, 0, None, None] * 2 - 1  # [B, H, 1]
    gx = xs[None, None, :] * extent[:, 1, None, None] * 2 - 1  # [B, 1, W]
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # [B, H, W, 2] as (x, y)
    out = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.flatten(2).transpose(1, 2).to(maps.dtype)  # [B, H*W, D]


def weights_sha256(module: torch.nn.Module) -> str:
    """Fingerprint of a module's weights: independent of parameter names (transformers renames keys between
    versions), of the order of tensors, and of the dtype they were loaded in (hashed as float32, a lossless
    widening of fp16/bf16 checkpoints). Take it before casting to a lower precision."""
    digests = []
    for tensor in module.state_dict().values():
        data = tensor.detach().to("cpu")
        if data.is_floating_point():
            data = data.float()
        data = data.contiguous()
        digest = hashlib.sha256(str(tuple(data.shape)).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        digests.append(digest.hexdigest())
    total = hashlib.sha256()
    for digest in sorted(digests):
        total.update(digest.encode())
    return total.hexdigest()


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def quiet_load_report():
    """Drop transformers' load report (a vision tower read from a full CLIP checkpoint lists the text tower's
    keys as unexpected); missing keys are checked by `load_frozen` instead. A filter, not a log level: raising
    that logger's level makes transformers log its tensor-parallel plan check."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_frozen(model_class, source: str, what: str, **kwargs) -> torch.nn.Module:
    """`model_class.from_pretrained(source)`, refusing any weight the checkpoint does not hold (it would be
    randomly initialised and silently become the target), frozen and in eval mode."""
    with quiet_load_report():
        model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    missing = sorted(set(info.get("missing_keys") or ()) | {key[0] if isinstance(key, tuple) else key
                                                            for key in info.get("mismatched_keys") or ()})
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise TeacherLoadError(f"teacher {what!r}: {source} does not hold the weights {shown}; they would be "
                               f"randomly initialised. Point align.vra_target at a complete checkpoint.")
    restore_non_persistent_buffers(model)
    bad = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise TeacherLoadError(f"teacher {what!r}: {source} gives non-finite values in {', '.join(bad[:8])}")
    model.requires_grad_(False)
    model.eval()
    return model


def restore_non_persistent_buffers(model: torch.nn.Module) -> None:
    """Fill a remote-code model's non-persistent buffers as its `__init__` does.

    transformers 5 materialises non-persistent buffers empty and leaves filling them to `_init_weights`;
    remote code written for earlier versions (RADIO-style input conditioners, position ids) fills them in
    `__init__` only, so they would hold whatever memory held. The library's own models are left alone.
    """
    if not type(model).__module__.startswith("transformers_modules"):
        return
    names = [name for name, _ in model.named_non_persistent_buffers()] \
        if hasattr(model, "named_non_persistent_buffers") else []
    if not names:
        return
    fresh = dict(type(model)(model.config).named_buffers())  # runs __init__ once on the CPU
    with torch.no_grad():
        for name in names:
            module_name, _, buffer_name = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            current = getattr(module, buffer_name)
            setattr(module, buffer_name, fresh[name].to(device=current.device, dtype=current.dtype))


def read_processor_config(source: str) -> dict | None:
    """The teacher's `preprocessor_config.json` (local folder or the hub cache), or None when it has none."""
    path = Path(source)
    if path.is_dir():
        file = path / "preprocessor_config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    try:
        from transformers.utils import cached_file

        file = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return json.loads(Path(file).read_text()) if file else None


def processor_input_size(data: dict | None) -> int | None:
    """The square side an image processor config feeds its model (crop when it crops, else the resize)."""
    if not data:
        return None
    crop = data.get("crop_size") if data.get("do_center_crop", True) else None
    if isinstance(crop, dict) and crop.get("height"):
        return int(crop["height"])
    if isinstance(crop, int):
        return crop
    size = data.get("size")
    if isinstance(size, dict):
        for key in ("height", "shortest_edge", "longest_edge"):
            if size.get(key):
                return int(size[key])
    if isinstance(size, int):
        return size
    return None


@dataclass(frozen=True)
class Preprocessing:
    """How a teacher wants its pixels: a square `size`, PIL `resample`, then [0, 1] or normalised with mean/std."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    size: int = 224
    resample: int = Image.BICUBIC
    normalize: bool = True

    @classmethod
    def from_processor(cls, data: dict | None, default_size: int, **overrides) -> "Preprocessing":
        data = data or {}
        values = {
            "mean": tuple(float(v) for v in (data.get("image_mean") or IMAGENET_MEAN)),
            "std": tuple(float(v) for v in (data.get("image_std") or IMAGENET_STD)),
            "size": processor_input_size(data) or int(default_size),
            "resample": int(data["resample"]) if data.get("resample") is not None else Image.BICUBIC,
            "normalize": bool(data.get("do_normalize", True)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images already at their final size -> `[B, 3, H, W]` in [0, 1] or normalised."""
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
        if not self.normalize:
            return pixels
        mean = torch.tensor(self.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[None, :, None, None]
        return (pixels - mean) / std

    def square(self, images: list[Image.Image]) -> torch.Tensor:
        """The whole image resized to `size` x `size` (no crop: every student cell keeps its teacher cell)."""
        resample = Image.Resampling(self.resample)
        return self.to_tensor([image.convert("RGB").resize((self.size, self.size), resample) for image in images])


class Teacher:
    """Base class: `inputs(images)` -> batched tensors, `__call__(pixel_values, ...)` -> `[B, N_student, z_dim]`."""

    spec: str = ""
    family: str = ""
    source: str | None = None
    z_dim: int = 0
    needs_pixels: bool = True  # False: targets come from the student's own forward pass
    weights_sha256: str = ""
    input_size: int = 0
    grid: tuple[int, int] = (0, 0)  # the teacher's own patch grid
    student_grid: tuple[int, int] = (0, 0)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """`[B, 3, S, S]` pixels as the teacher expects them."""
        raise NotImplementedError

    def inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Batched teacher inputs, keys prefixed `teacher_` (they travel through the collator to `__call__`)."""
        return {"teacher_pixel_values": self.preprocess(images)}

    def __call__(self, pixel_values: torch.Tensor, **extra) -> torch.Tensor:
        raise NotImplementedError

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """`[B, N_student, z_dim]` targets of PIL images: `inputs` then `__call__`."""
        batch = self.inputs(images)
        return self(**{key.removeprefix("teacher_"): value for key, value in batch.items()})

    def describe(self) -> dict:
        """What determines this teacher's features (the teacher-feature cache's manifest checks it)."""
        return {"teacher": self.spec, "family": self.family, "source": self.source,
                "weights_sha256": self.weights_sha256, "input_size": self.input_size,
                "teacher_grid": list(self.grid), "grid": list(self.student_grid), "z_dim": self.z_dim}

    def parameters(self):
        return iter(())

    def to(self, device=None, dtype=None) -> "Teacher":
        return self


class EncoderTeacher(Teacher):
    """The MLLM's own vision features z (layer -2, CLS dropped): captured at the projector's input."""

    family = "encoder"
    needs_pixels = False

    def __init__(self, spec: str, student_grid: tuple[int, int], vision_hidden_size: int):
        self.spec = spec
        self.student_grid = tuple(student_grid)
        self.grid = self.student_grid
        self.z_dim = int(vision_hidden_size)


class HFVisionTeacher(Teacher):
    """A frozen transformers vision model whose patch tokens are the targets.

    Subclasses say how to load the model (`load_model`), which config holds its patch size and width
    (`vision_config`), and how pixels become `[B, h*w, D]` patch tokens (`patch_tokens`).
    """

    family = "hf"

    def __init__(self, spec: str, source: str, student_grid: tuple[int, int], device=None, dtype=torch.float32,
                 layer: int | None = None):
        self.spec, self.source = spec, source
        self.student_grid = tuple(student_grid)
        self.layer = layer
        self.model = self.load_model(source)
        self.weights_sha256 = weights_sha256(self.model)  # before any cast
        self.model.to(device=device or "cpu", dtype=dtype)
        self.preprocessing = self.load_preprocessing(source)
        self.mean, self.std, self.input_size = self.preprocessing.mean, self.preprocessing.std, self.preprocessing.size
        self.grid = self.feature_grid()
        self.z_dim = self.feature_dim()

    # what subclasses provide
    def load_model(self, source: str) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def vision_config(self):
        return self.model.config

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` -> `[B, h*w, D]` on `self.grid`."""
        raise NotImplementedError

    # shared behaviour
    def load_preprocessing(self, source: str) -> Preprocessing:
        """Mean, std, square input size and resampling from the model's own image processor (or its config)."""
        return Preprocessing.from_processor(read_processor_config(source), int(self.vision_config.image_size))

    def feature_grid(self) -> tuple[int, int]:
        side = self.input_size // int(self.vision_config.patch_size)
        return side, side

    def feature_dim(self) -> int:
        return self.config_feature_dim(self.vision_config)

    @classmethod
    def config_feature_dim(cls, config) -> int:
        """Feature width from a full or vision-only config (no weights needed)."""
        return int((getattr(config, "vision_config", None) or config).hidden_size)

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.layer}

    def parameters(self):
        return self.model.parameters()

    def to(self, device=None, dtype=None) -> "HFVisionTeacher":
        self.model.to(device=device, dtype=dtype)
        return self

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize the whole image to the teacher's size; normalise with its mean/std."""
        return self.preprocessing.square(images)  # [B, 3, S, S]

    def _model_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        return pixel_values.to(parameter.device, parameter.dtype)

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, **extra) -> torch.Tensor:
        tokens = self.patch_tokens(self._model_input(pixel_values))  # [B, h*w, D]
        return resample_grid(tokens, self.grid, self.student_grid)  # [B, N_student, D]


class LayerOutput:
    """Forward hook keeping one module's output (the chosen layer of a vision encoder)."""

    def __init__(self, module: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.value = output if torch.is_tensor(output) else output[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("the hooked teacher layer did not run")
        return value
