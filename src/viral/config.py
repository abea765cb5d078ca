"""Typed experiment configuration: model, alignment, data and training sections.

A config is a YAML or JSON file with the sections `model`, `align`, `data`, `train`
(plus a few top-level keys), overridden from the command line with dotted keys
(`--set align.vra_weight=0.25 train.max_steps=10`). Top-level keys that belong to a
section may be given bare (`--set max_steps=10 output_dir=runs/x`) when the name is unique.

The `align` section uses the official VIRAL `config.json` key names unchanged
(`vra_loss`, `target_layers`, `vra_target`, `vra_weight`, `projector_dim`, `z_dim`,
`use_multiple_projectors`), so an official file loads as-is, either as the `align`
section or by pointing `align` at the file: `align: path/to/config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from viral.errors import UserError, closest


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or inconsistent; the message says what to change."""


def _did_you_mean(unknown: list[str], known: set[str], prefix: str = "") -> str | None:
    """`did you mean 'align.vra_weight'?` for the first unknown key that is close to a known one."""
    for key in unknown:
        match = closest(key, known)
        if match:
            return f"did you mean {prefix + match!r} instead of {prefix + key!r}?"
    return None


@dataclass
class ModelConfig:
    """Which MLLM to build or load."""

    # `tiny` builds every part locally; `llava` loads an existing llava-hf checkpoint from `model_path`;
    # `compose` builds from `llm` + `vision_tower` + `projector_type`; `qwen2_vl` | `qwen2_5_vl` load a
    # Qwen2-VL / Qwen2.5-VL checkpoint from `model_path` (viral.families).
    preset: str = "tiny"
    model_path: str | None = None  # checkpoint (llava, qwen2_vl, qwen2_5_vl) or a folder written by `viral train`
    llm: str | None = None  # hub id or path of a causal LM (preset: compose)
    vision_tower: str | None = None  # hub id or path of a CLIP/SigLIP vision model (preset: compose)
    # a folder with a trained CLIP/SigLIP vision model + its image processor. tiny preset: the vision tower
    # (image and patch size then come from that folder; None builds a random tower); llava preset: replaces
    # the checkpoint's tower (same kind, width and patch grid)
    vision_tower_path: str | None = None
    projector_type: str = "mlp2x_gelu"  # mlp2x_gelu | linear
    vision_feature_layer: int = -2
    # which vision tokens become image tokens (tiny and compose presets; a checkpoint keeps its own): "default"
    # drops CLIP's CLS token as LLaVA-1.5 does, "full" keeps it as the first image token (the image's global
    # summary beside its patches; VIRAL aligns the patch tokens only)
    vision_feature_select_strategy: str = "default"
    tokenizer_corpus: str | None = None  # text file / LLaVA JSON the tiny word-level tokenizer is trained on
    tiny_dir: str | None = None  # where the tiny preset is saved before it is loaded back
    image_size: int = 64  # tiny preset only
    patch_size: int = 8  # tiny preset only
    hidden_size: int = 128  # tiny preset only
    num_layers: int = 4  # tiny preset only
    vision_hidden_size: int = 64  # tiny preset only
    vision_layers: int = 4  # tiny preset only
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    min_pixels: int | None = None  # qwen2_vl / qwen2_5_vl: pixel budget of an image (None: the processor's own)
    max_pixels: int | None = None
    seed: int = 0  # initialisation seed of the tiny preset
    # How the image reaches the LLM: `llava` (projected image tokens in the input) or `vlora`
    # (per-sample low-rank weights of the LLM, arXiv 2405.20339; see viral.vlora). vlora_* fields: vlora only.
    connector: str = "llava"
    vlora_rank: int = 64  # r of the perceptual weights
    vlora_alpha: float = 64.0  # scale = alpha / r
    vlora_hidden_size: int = 512  # D, width of the generator
    vlora_depth: int = 8  # decoder blocks per weight type
    vlora_num_heads: int = 8  # attention heads of the generator
    vlora_skip_layers: int = 4  # one update every n-th LLM layer, the first at 0-based n-1
    vlora_types: str = "qkvom"  # weight types updated: q, k, v, o projections and m (the MLP)


@dataclass
class AlignConfig:
    """Visual representation alignment (VIRAL), official key names."""

    vra_loss: bool = False
    target_layers: list[int] = field(default_factory=lambda: [16])  # 1-based layer outputs, 0 = LLM input
    vra_target: str = "dinov2-vit-b"  # teacher id (see viral.align.teachers): encoder | dinov2-* | clip-* | siglip-* | ...
    vra_weight: float = 0.5  # lambda
    projector_dim: int = 2048
    z_dim: int | None = None  # taken from the teacher when omitted
    use_multiple_projectors: bool = False
    alignment_loss: str = "cosine"  # cosine | relation
    # The paper's residual baselines instead of the VRA loss: add P(z) (post_projection) or a learned
    # linear adapter of z (pre_projection) to the image-token states after layer target_layers[0].
    residual: str | None = None  # null | post_projection | pre_projection
    teacher_cache: str | None = None  # folder written by `viral cache-teacher`: read targets instead of running the teacher

    def validate(self) -> None:
        if self.alignment_loss not in ("cosine", "relation"):
            raise ConfigError(
                f"align.alignment_loss is {self.alignment_loss!r}; choose 'cosine' or 'relation'"
            )
        if not self.target_layers:
            raise ConfigError("align.target_layers is empty; give at least one layer, e.g. [16]")
        if any(int(layer) < 0 for layer in self.target_layers):
            raise ConfigError(f"align.target_layers {self.target_layers} has a negative layer; use 0..num_layers")
        if self.vra_weight < 0:
            raise ConfigError(f"align.vra_weight is {self.vra_weight}; it must be >= 0")
        if self.residual is not None:
            if self.residual not in ("post_projection", "pre_projection"):
                raise ConfigError(
                    f"align.residual is {self.residual!r}; choose post_projection, pre_projection or null"
                )
            if self.vra_loss:
                raise ConfigError("align.residual and align.vra_loss are mutually exclusive: the residual "
                                  "baselines replace the alignment loss; set one of them")
            if len(self.target_layers) != 1 or self.target_layers[0] < 1:
                raise ConfigError(f"align.residual adds at one layer >= 1; align.target_layers is "
                                  f"{self.target_layers} (e.g. [16])")


@dataclass
class DataConfig:
    """LLaVA-format training data."""

    path: str | None = None  # LLaVA conversation JSON (list of records) or JSONL
    image_folder: str | None = None  # image paths in records are relative to this folder
    image_aspect: str = "pad"  # pad | square
    template: str = "auto"  # auto (chat template of the processor/tokenizer, else vicuna_v1) | vicuna_v1 | plain
    model_max_length: int = 2048
    skip_bad_records: bool = False
    num_workers: int = 0


@dataclass
class TrainConfig:
    """Optimisation; the fields map onto transformers.TrainingArguments."""

    stage: str = "finetune"  # pretrain (projector only) | finetune
    finetune_mode: str = "lora"  # lora | full
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 2e-4
    projector_lr: float | None = 2e-5  # separate learning rate of the vision projector (None: same as learning_rate)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    resume_from_checkpoint: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    deepspeed: str | None = None
    fsdp: bool = False  # PyTorch FSDP (configure with fsdp_config, e.g. configs/fsdp-full-shard.json)
    fsdp_config: str | None = None
    dataloader_num_workers: int = 0
    disable_tqdm: bool = False  # no progress bar and no printed logs (metrics.jsonl and TensorBoard still written)
    max_bad_steps: int = 5  # consecutive NaN/inf-loss steps (each skipped) before the run stops
    overwrite_output_dir: bool = False  # allow writing over a finished run or its checkpoints


@dataclass
class ExperimentConfig:
    """One experiment: everything `viral train` needs."""

    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {"model": ModelConfig, "align": AlignConfig, "data": DataConfig, "train": TrainConfig}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a parsed YAML value to the field's declared type, or raise a ConfigError naming `where`."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if value is None:
        if annotation is type(None) or type(None) in args:
            return None
        raise ConfigError(f"{where} may not be null")
    if origin is list or annotation is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as err:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from err
        if as_float != int(as_float):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where} must be a number, got {value!r}") from err
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def section_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a section dataclass from a dict; unknown keys are an error that lists the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        section = where.rsplit(": ", 1)[-1]
        prefix = f"{section}." if section in SECTIONS else ""
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}",
                          hint=_did_you_mean(unknown, known, prefix))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_official_align_json(path: str | os.PathLike) -> AlignConfig:
    """Read the official VIRAL `config.json` (flat keys) as an AlignConfig."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the alignment config {path}: {err}") from err
    return section_from_dict(AlignConfig, data, f"{path}")


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the config file {path}: {err}") from err
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} is not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {err}") from err
    return data or {}


def _section_for_bare_key(key: str) -> str | None:
    owners = [name for name, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
    return owners[0] if len(owners) == 1 else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. align.vra_weight=0.25")
        key, value_text = item.split("=", 1)
        value = yaml.safe_load(value_text) if value_text != "" else None
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] not in ("output_dir",) and parts[0] not in SECTIONS:
            section = _section_for_bare_key(parts[0])
            if section is None:
                dotted = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)}
                match = closest(parts[0], {k.split(".", 1)[1] for k in dotted})
                suggestion = [k for k in sorted(dotted) if match and k.endswith("." + match)]
                raise ConfigError(
                    f"override key {key!r} is not a known field; use section.key with a section in {list(SECTIONS)}",
                    hint=f"did you mean {suggestion[0]!r}?" if suggestion else None,
                )
            parts = [section, parts[0]]
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a raw dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping of sections")
    known_top = set(SECTIONS) | {"output_dir"}
    unknown = sorted(set(raw) - known_top)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} in {source}; known: {sorted(known_top)}",
                          hint=_did_you_mean(unknown, known_top))
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        value = raw.get(name, {})
        if name == "align" and isinstance(value, str):
            path = Path(value)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            kwargs[name] = load_official_align_json(path)
            continue
        kwargs[name] = section_from_dict(cls, value or {}, f"{source}: {name}")
    if "output_dir" in raw:
        kwargs["output_dir"] = str(raw["output_dir"])
    config = ExperimentConfig(**kwargs)
    config.align.validate()
    return validate(config)


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Checks that need no model: choices and combinations."""
    presets = ("tiny", "llava", "compose", "qwen2_vl", "qwen2_5_vl")
    if config.model.preset not in presets:
        raise ConfigError(f"model.preset is {config.model.preset!r}; choose one of {', '.join(presets)}")
    if config.model.preset in ("llava", "qwen2_vl", "qwen2_5_vl") and not config.model.model_path:
        raise ConfigError(f"model.preset is {config.model.preset!r} but model.model_path is not set")
    if config.model.vision_feature_select_strategy not in ("default", "full"):
        raise ConfigError(f"model.vision_feature_select_strategy is {config.model.vision_feature_select_strategy!r}; "
                          "choose default (CLS dropped) or full (CLS kept)")
    if config.model.vision_tower_path and config.model.preset not in ("tiny", "llava"):
        raise ConfigError(f"model.vision_tower_path applies to the tiny and llava presets, not {config.model.preset!r}"
                          + (" (compose takes model.vision_tower)" if config.model.preset == "compose" else ""))
    if config.model.preset == "compose" and not (config.model.llm and config.model.vision_tower):
        raise ConfigError("model.preset is 'compose': set both model.llm and model.vision_tower")
    if config.model.projector_type not in ("mlp2x_gelu", "linear"):
        raise ConfigError(f"model.projector_type is {config.model.projector_type!r}; choose mlp2x_gelu or linear")
    if config.model.connector not in ("llava", "vlora"):
        raise ConfigError(f"model.connector is {config.model.connector!r}; choose llava or vlora")
    if config.model.connector == "vlora":
        if config.model.preset in ("qwen2_vl", "qwen2_5_vl"):
            raise ConfigError(f"model.connector 'vlora' builds on LLaVA; model.preset {config.model.preset!r} "
                              f"needs model.connector=llava")
        if config.align.vra_loss:
            raise ConfigError("align.vra_loss needs image tokens in the LLM; model.connector 'vlora' has none: "
                              "set align.vra_loss=false or model.connector=llava")
        bad_types = sorted(set(config.model.vlora_types) - set("qkvom"))
        if bad_types or not config.model.vlora_types:
            raise ConfigError(f"model.vlora_types is {config.model.vlora_types!r}; use letters of 'qkvom'")
        if config.model.vlora_skip_layers < 1 or config.model.vlora_rank < 1:
            raise ConfigError("model.vlora_skip_layers and model.vlora_rank must be >= 1")
    if config.data.image_aspect not in ("pad", "square"):
        raise ConfigError(f"data.image_aspect is {config.data.image_aspect!r}; choose pad or square")
    if config.train.stage not in ("pretrain", "finetune"):
        raise ConfigError(f"train.stage is {config.train.stage!r}; choose pretrain or finetune")
    if config.train.finetune_mode not in ("lora", "full"):
        raise ConfigError(f"train.finetune_mode is {config.train.finetune_mode!r}; choose lora or full")
    return config


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML/JSON experiment file (or start from defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    base_dir = None
    source = "<defaults>"
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = _read_file(path)
        base_dir = Path(path).parent
        source = str(path)
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_dict(raw, source=source, base_dir=base_dir)
