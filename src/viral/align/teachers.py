"""Registry of frozen alignment targets (teachers): the MLLM's own encoder, or a vision foundation model.

A teacher sees the raw image normalised with its *own* mean and std at its *own* input size (never
the student's pixels), runs frozen, in eval mode, under no_grad, and its patch grid is resampled
(bilinear) to the student's image-token grid so any pair of resolutions works. Teachers are plain
objects, never `nn.Module` children of the trained model: they stay out of the optimizer and the
checkpoint. `build_teacher` is the single entry point; the families live in `teachers_hf` (transformers
models) and `teachers_remote` (`trust_remote_code` models), the shared parts in `teachers_base`.

Ids (`align.vra_target`):
- `encoder` (alias `clip`, as in the official configs): the MLLM's own vision features z;
- `dinov2-vit-s|b|l|g`, `dinov2-small|base|large|giant`, `dinov2-with-registers-*`;
- `clip-vit-l-336|l|b-16|b-32`, `siglip-so400m|base|large`, `siglip2-so400m|base|large|giant[-naflex]`,
  optionally with `@L` to take encoder layer L (`clip-vit-l-336@-2`);
- `sam-vit-b|l|h` (official `sam_vit_b_01ec64`, `sam_vit_l_0b3195`, `sam_vit_h_4b8939`);
- `depth-anything-v2-small|base|large` (official `depth_anything_v2_vits|vitb|vitl`);
- `radio_v2.5-b|l|h|g`, `c-radio_v2-b|l|h|g`, `c-radio_v3-b|l|h|g` (official RADIO version names; remote code);
- `remote:<hub id or folder>[?adapter options]`: any `trust_remote_code` model (see `teachers_remote`);
- any hub id whose name says its family (`facebook/dinov2-base`, `openai/clip-vit-base-patch16`,
  `google/siglip2-base-patch16-naflex`, `facebook/sam-vit-base`, `depth-anything/...`, `nvidia/C-RADIOv3-B`),
  or a local folder of a transformers model of one of those families (found by its config's `model_type`).
Adding a family is one entry in `TEACHER_FAMILIES` (and, for short names, in `ALIASES`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from viral.align.teachers_base import (  # noqa: F401  (re-exported: the registry is the public face)
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderTeacher,
    HFVisionTeacher,
    Preprocessing,
    Teacher,
    TeacherLoadError,
    resample_grid,
    resample_region,
    weights_sha256,
)
from viral.align.teachers_hf import (
    ClipTeacher,
    DepthAnythingTeacher,
    Dinov2Teacher,
    SamTeacher,
    SiglipTeacher,
)
from viral.align.teachers_remote import RemoteTeacher
from viral.config import ConfigError

RADIO_ADAPTER = "?output=1&pixels=unit"  # RADIO and C-RADIO return (summary, features) and take [0, 1] pixels

ALIASES = {
    "clip": ("encoder", None),
    "encoder": ("encoder", None),
    "dinov2-vit-s": ("dinov2", "facebook/dinov2-small"),
    "dinov2-vit-b": ("dinov2", "facebook/dinov2-base"),
    "dinov2-vit-l": ("dinov2", "facebook/dinov2-large"),
    "dinov2-vit-g": ("dinov2", "facebook/dinov2-giant"),
    "clip-vit-l-336": ("clip", "openai/clip-vit-large-patch14-336"),
    "clip-vit-l": ("clip", "openai/clip-vit-large-patch14"),
    "clip-vit-b-16": ("clip", "openai/clip-vit-base-patch16"),
    "clip-vit-b-32": ("clip", "openai/clip-vit-base-patch32"),
    "siglip-so400m": ("siglip", "google/siglip-so400m-patch14-384"),
    "siglip-base": ("siglip", "google/siglip-base-patch16-224"),
    "siglip-large": ("siglip", "google/siglip-large-patch16-384"),
    "siglip2-so400m": ("siglip2", "google/siglip2-so400m-patch14-384"),
    "siglip2-base": ("siglip2", "google/siglip2-base-patch16-224"),
    "siglip2-large": ("siglip2", "google/siglip2-large-patch16-384"),
    "siglip2-giant": ("siglip2", "google/siglip2-giant-opt-patch16-384"),
    "siglip2-so400m-naflex": ("siglip2", "google/siglip2-so400m-patch16-naflex"),
    "siglip2-base-naflex": ("siglip2", "google/siglip2-base-patch16-naflex"),
    "sam-vit-b": ("sam", "facebook/sam-vit-base"),
    "sam-vit-l": ("sam", "facebook/sam-vit-large"),
    "sam-vit-h": ("sam", "facebook/sam-vit-huge"),
    "sam_vit_b_01ec64": ("sam", "facebook/sam-vit-base"),
    "sam_vit_l_0b3195": ("sam", "facebook/sam-vit-large"),
    "sam_vit_h_4b8939": ("sam", "facebook/sam-vit-huge"),
    "depth-anything-v2-small": ("depth-anything", "depth-anything/Depth-Anything-V2-Small-hf"),
    "depth-anything-v2-base": ("depth-anything", "depth-anything/Depth-Anything-V2-Base-hf"),
    "depth-anything-v2-large": ("depth-anything", "depth-anything/Depth-Anything-V2-Large-hf"),
    "depth_anything_v2_vits": ("depth-anything", "depth-anything/Depth-Anything-V2-Small-hf"),
    "depth_anything_v2_vitb": ("depth-anything", "depth-anything/Depth-Anything-V2-Base-hf"),
    "depth_anything_v2_vitl": ("depth-anything", "depth-anything/Depth-Anything-V2-Large-hf"),
}
for _size, _suffix in (("b", "B"), ("l", "L"), ("h", "H"), ("g", "g")):
    ALIASES[f"radio_v2.5-{_size}"] = ("remote", f"nvidia/RADIO-{_suffix}{RADIO_ADAPTER}")
    ALIASES[f"c-radio_v2-{_size}"] = ("remote", f"nvidia/C-RADIOv2-{_suffix}{RADIO_ADAPTER}")
    ALIASES[f"c-radio_v3-{_size}"] = ("remote", f"nvidia/C-RADIOv3-{_suffix}{RADIO_ADAPTER}")

TEACHER_FAMILIES = {
    "encoder": EncoderTeacher,
    "dinov2": Dinov2Teacher,
    "clip": ClipTeacher,
    "siglip": SiglipTeacher,
    "siglip2": SiglipTeacher,
    "sam": SamTeacher,
    "depth-anything": DepthAnythingTeacher,
    "remote": RemoteTeacher,
}
MODEL_TYPE_FAMILIES = {
    "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
    "clip": "clip", "clip_vision_model": "clip",
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "siglip2": "siglip2", "siglip2_vision_model": "siglip2",
    "sam": "sam", "sam_vision_model": "sam",
    "depth_anything": "depth-anything",
}
LAYERED_FAMILIES = ("clip", "siglip", "siglip2")  # families that take an `@L` layer suffix
# hub-id name fragments -> family, checked in order (siglip before clip: "siglip" contains "clip")
NAME_FAMILIES = (("dinov2", "dinov2"), ("depth-anything", "depth-anything"), ("sam-vit", "sam"),
                 ("siglip2", "siglip2"), ("siglip", "siglip"), ("clip", "clip"), ("radio", "remote"))


def split_layer(spec: str) -> tuple[str, int | None]:
    """`name@L` -> (name, L); specs without an integer suffix are returned unchanged."""
    base, sep, suffix = spec.rpartition("@")
    if sep and suffix.lstrip("-").isdigit() and not spec.startswith("remote:"):
        return base, int(suffix)
    return spec, None


def known_ids() -> list[str]:
    return sorted(ALIASES) + ["dinov2-small|base|large|giant", "dinov2-with-registers-*", "<name>@L",
                              "remote:<hub id or folder>[?output=..&pixels=unit|normalized]", "<hub id or folder>"]


def resolve_teacher_spec(spec: str) -> tuple[str, str | None]:
    """(family, source) of a teacher id, alias, hub id or local folder; unknown ids list the known ones."""
    base, _ = split_layer(spec)
    if base in ALIASES:
        return ALIASES[base]
    if base.startswith("remote:"):
        return "remote", base[len("remote:"):]
    path = Path(base)
    if path.is_dir():
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        model_type = config.get("model_type")
        if model_type in MODEL_TYPE_FAMILIES:
            return MODEL_TYPE_FAMILIES[model_type], str(path)
        hint = f"; it has its own code (auto_map): use 'remote:{spec}'" if config.get("auto_map") else ""
        raise ConfigError(
            f"align.vra_target {spec!r} is a folder whose config.json has model_type {model_type!r}; "
            f"teacher folders must hold one of {sorted(MODEL_TYPE_FAMILIES)}{hint}"
        )
    if base.startswith("dinov2-") and "/" not in base:
        return "dinov2", f"facebook/{base}"
    if "/" in base:
        name = base.split("/")[-1].lower()
        for fragment, family in NAME_FAMILIES:
            if fragment in name:
                return family, base + (RADIO_ADAPTER if family == "remote" else "")
    raise ConfigError(f"unknown teacher id {spec!r} in align.vra_target; known: {known_ids()}")


def teacher_feature_dim(spec: str, vision_hidden_size: int) -> int | None:
    """The teacher's feature width from its config alone (no weights loaded); None when only running the
    model tells (remote code; `build_teacher` then probes it). Errors name the teacher."""
    family, source = resolve_teacher_spec(spec)
    if family == "encoder":
        return int(vision_hidden_size)
    if family == "remote":
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"align.vra_target {spec!r}: cannot read its config ({err})") from err
    return TEACHER_FAMILIES[family].config_feature_dim(config)


def build_teacher(spec: str, student_grid: tuple[int, int], vision_hidden_size: int | None = None,
                  device=None, dtype=torch.float32) -> Teacher:
    """A frozen teacher for `spec` whose features land on `student_grid`."""
    family, source = resolve_teacher_spec(spec)
    if family == "encoder":
        if vision_hidden_size is None:
            raise ValueError("the encoder teacher needs the vision tower's hidden size")
        return EncoderTeacher(spec, student_grid, vision_hidden_size)
    _, layer = split_layer(spec)
    kwargs = {}
    if layer is not None:
        if family not in LAYERED_FAMILIES:
            raise ConfigError(f"align.vra_target {spec!r}: a layer suffix @{layer} works for {LAYERED_FAMILIES} "
                              f"teachers, not {family!r}")
        kwargs["layer"] = layer
    return TEACHER_FAMILIES[family](spec, source, student_grid, device=device, dtype=dtype, **kwargs)
