"""Registry of MLLM families other than LLaVA, the one place the core dispatches family-specific work through.

LLaVA (`LlavaForConditionalGeneration`, presets tiny | compose | llava) is the core's own family and has no
entry here. Every other family lives in its own module and is imported only when a model of that family is
built or loaded, so the core never imports an alternative directly (no import cycle: the family modules
import `viral.model`, which imports only this registry).

- `qwen2_vl`: `Qwen2VLForConditionalGeneration` (`viral.families.qwen_vl`);
- `qwen2_5_vl`: `Qwen2_5_VLForConditionalGeneration` (`viral.families.qwen_vl`).

A family is found by its preset name (`model.preset`) or by a checkpoint's `config.model_type`
(the two are the same string).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from viral.config import ConfigError

# family name (= model.preset = config.model_type) -> (module, attribute)
FAMILIES = {
    "qwen2_vl": ("viral.families.qwen_vl", "QWEN2_VL"),
    "qwen2_5_vl": ("viral.families.qwen_vl", "QWEN2_5_VL"),
}


def get_family(name: str):
    """The family object registered under `name`; an unknown name lists the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(FAMILIES)} (LLaVA is the core's own)")
    module, attribute = FAMILIES[name]
    return getattr(importlib.import_module(module), attribute)


def family_of_model(model):
    """The family of a loaded model (or its peft / training wrapper), None for LLaVA."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return get_family(model_type) if model_type in FAMILIES else None


def checkpoint_model_type(path: str | Path) -> str | None:
    """A checkpoint folder's or hub id's `config.json` model_type; None when it cannot be read (the loader then
    raises its own error about the path)."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path)).model_type
    except (OSError, ValueError):
        return None
