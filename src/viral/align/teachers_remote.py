"""Teachers whose code ships with the checkpoint (`trust_remote_code=True`), e.g. RADIO and C-RADIO.

Spec: `remote:<hub id or folder>[?key=value&...]`; the query is the adapter config that says how to use the
model's output:
- `output`: which output holds the spatial features: an index into a tuple (RADIO and C-RADIO return
  `(summary, features)`: `output=1`), an attribute or key name (`output=last_hidden_state`), or `auto`
  (default: `last_hidden_state` when present, else the last 3-D/4-D tensor of a tuple);
- `pixels`: `unit` (default; RGB in [0, 1], the model conditions its input itself, as RADIO does) or
  `normalized` (normalised with `mean`/`std`, default those of the checkpoint's image processor);
- `size`: square input side (default: the image processor's size, else `model.preferred_resolution`,
  else `config.image_size`); `patch`: patch size (default `model.patch_size` / `config.patch_size`);
- `prefix`: leading tokens to drop (default: whatever exceeds the (size/patch)^2 patch tokens);
- `mean`, `std`: comma-separated, for `pixels=normalized`.
Features may be tokens `[B, N, D]` or maps `[B, D, h, w]`; one probe forward at load time finds which, and
the width and grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from urllib.parse import parse_qsl

import torch

from viral.align.teachers_base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    Teacher,
    TeacherLoadError,
    load_frozen,
    processor_input_size,
    read_processor_config,
    resample_grid,
    weights_sha256,
)


@dataclass(frozen=True)
class RemoteAdapter:
    """How to feed a remote-code model and which of its outputs are the spatial features."""

    output: str = "auto"
    pixels: str = "unit"
    size: int | None = None
    patch: int | None = None
    prefix: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, query: str, spec: str) -> "RemoteAdapter":
        known = {f.name for f in fields(cls)}
        values: dict = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in known:
                raise TeacherLoadError(f"teacher {spec!r}: unknown adapter option {key!r}; known: {sorted(known)}")
            try:
                if key in ("size", "patch", "prefix"):
                    values[key] = int(value)
                elif key in ("mean", "std"):
                    values[key] = tuple(float(v) for v in value.split(","))
                else:
                    values[key] = value
            except ValueError as err:
                raise TeacherLoadError(f"teacher {spec!r}: adapter option {key}={value!r} is not valid: {err}") from err
        if values.get("pixels", "unit") not in ("unit", "normalized"):
            raise TeacherLoadError(f"teacher {spec!r}: pixels={values['pixels']!r}; choose unit or normalized")
        return cls(**values)


def split_remote_source(source: str, spec: str) -> tuple[str, RemoteAdapter]:
    """`id-or-path?options` -> (id-or-path, adapter)."""
    path, _, query = source.partition("?")
    if not path:
        raise TeacherLoadError(f"teacher {spec!r}: give a hub id or folder after 'remote:'")
    return path, RemoteAdapter.parse(query, spec)


def select_output(out, output: str, spec: str) -> torch.Tensor:
    """The spatial-feature tensor of a model's output, as the adapter's `output` says."""
    if output == "auto":
        if torch.is_tensor(out):
            return out
        if hasattr(out, "keys") and "last_hidden_state" in out.keys():
            return out["last_hidden_state"]
        items = list(out.values()) if hasattr(out, "values") and not isinstance(out, tuple) else list(out)
        spatial = [item for item in items if torch.is_tensor(item) and item.dim() in (3, 4)]
        if not spatial:
            raise TeacherLoadError(f"teacher {spec!r}: the model returns no 3-D or 4-D tensor; set output=")
        return spatial[-1]
    if output.lstrip("-").isdigit():
        value = out[int(output)] if not hasattr(out, "to_tuple") else out.to_tuple()[int(output)]
    elif hasattr(out, "keys") and output in out.keys():
        value = out[output]
    else:
        value = getattr(out, output, None)
    if not torch.is_tensor(value) or value.dim() not in (3, 4):
        raise TeacherLoadError(f"teacher {spec!r}: output {output!r} is not a [B, N, D] or [B, D, h, w] tensor")
    return value


class RemoteTeacher(Teacher):
    """A frozen `trust_remote_code` model returning spatial features, used as the adapter config says."""

    family = "remote"

    def __init__(self, spec: str, source: str, student_grid: tuple[int, int], device=None, dtype=torch.float32):
        from transformers import AutoModel

        self.spec, self.source = spec, source
        self.student_grid = tuple(student_grid)
        self.path, self.adapter = split_remote_source(source, spec)
        self.model = load_frozen(AutoModel, self.path, spec, trust_remote_code=True)
        self.weights_sha256 = weights_sha256(self.model)
        self.model.to(device=device or "cpu", dtype=dtype)
        self.preprocessing = self.load_preprocessing()
        self.mean, self.std, self.input_size = self.preprocessing.mean, self.preprocessing.std, self.preprocessing.size
        self.patch_size = self.adapter.patch or getattr(self.model, "patch_size", None) or \
            getattr(self.model.config, "patch_size", None)
        self.probe()

    def load_preprocessing(self) -> Preprocessing:
        data = read_processor_config(self.path) or {}
        size = self.adapter.size or processor_input_size(data)
        if size is None:
            preferred = getattr(self.model, "preferred_resolution", None)
            size = preferred[0] if isinstance(preferred, (tuple, list)) else preferred
        size = size or getattr(self.model.config, "image_size", None)
        if not size:
            raise TeacherLoadError(f"teacher {self.spec!r}: cannot tell its input size; add size= to the spec, "
                                   f"e.g. remote:{self.path}?size=432")
        return Preprocessing.from_processor(
            data, int(size), size=int(size), normalize=self.adapter.pixels == "normalized",
            mean=self.adapter.mean or tuple(data.get("image_mean") or IMAGENET_MEAN),
            std=self.adapter.std or tuple(data.get("image_std") or IMAGENET_STD),
        )

    def spatial(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The adapter's output of the model: `[B, N, D]` tokens or `[B, D, h, w]` maps."""
        return select_output(self.model(pixel_values), self.adapter.output, self.spec)

    @torch.no_grad()
    def probe(self) -> None:
        """One forward on a blank image: the output's layout, width, grid and leading non-patch tokens."""
        parameter = next(self.model.parameters())
        blank = torch.zeros(1, 3, self.input_size, self.input_size, device=parameter.device, dtype=parameter.dtype)
        value = self.spatial(blank)
        if value.dim() == 4:
            self.layout, self.prefix = "maps", 0
            self.z_dim, self.grid = int(value.shape[1]), (int(value.shape[2]), int(value.shape[3]))
            return
        tokens = int(value.shape[1])
        if self.patch_size:
            side = self.input_size // int(self.patch_size)
        else:
            side = math.isqrt(tokens - (self.adapter.prefix or 0))
        prefix = self.adapter.prefix if self.adapter.prefix is not None else tokens - side * side
        if prefix < 0 or tokens - prefix != side * side:
            raise TeacherLoadError(
                f"teacher {self.spec!r}: {tokens} output tokens do not hold a {side}x{side} patch grid at input "
                f"{self.input_size}; set patch= or prefix= in the spec")
        self.layout, self.prefix = "tokens", prefix
        self.z_dim, self.grid = int(value.shape[2]), (side, side)

    def preprocess(self, images):
        return self.preprocessing.square(images)  # [B, 3, S, S], [0, 1] or normalised

    def describe(self) -> dict:
        return {**super().describe(), "adapter": {k: v for k, v in vars(self.adapter).items() if v is not None}}

    def parameters(self):
        return self.model.parameters()

    def to(self, device=None, dtype=None) -> "RemoteTeacher":
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, **extra) -> torch.Tensor:
        parameter = next(self.model.parameters())
        value = self.spatial(pixel_values.to(parameter.device, parameter.dtype))
        if self.layout == "maps":
            tokens = value.flatten(2).transpose(1, 2)  # [B, h*w, D]
        else:
            tokens = value[:, self.prefix:]  # [B, h*w, D]
        return resample_grid(tokens, self.grid, self.student_grid)  # [B, N_student, D]
