"""Build a `VLoRAModel` from the project's model config: the same LLM and vision tower as the llava
connector (any preset of `viral.model.build_model`), with the generator in place of the projector."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoProcessor

from viral.config import ModelConfig

from .model import VLoRAConfig, VLoRAModel


def vlora_config(cfg: ModelConfig) -> VLoRAConfig:
    """The generator hyper-parameters of a `model` config section (its vlora_* fields)."""
    return VLoRAConfig(
        rank=cfg.vlora_rank,
        alpha=cfg.vlora_alpha,
        hidden_size=cfg.vlora_hidden_size,
        depth=cfg.vlora_depth,
        num_heads=cfg.vlora_num_heads,
        skip_layers=cfg.vlora_skip_layers,
        types=cfg.vlora_types,
        vision_feature_layer=cfg.vision_feature_layer,
    )


def causal_lm_from_llava(llava: nn.Module) -> nn.Module:
    """The llava-hf model's language model and lm_head as a causal LM (modules moved, not copied)."""
    text_config = llava.config.text_config
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    setattr(llm, llm.base_model_prefix, llava.model.language_model)
    llm.lm_head = llava.lm_head
    llm.generation_config = llava.generation_config
    return llm


def vlora_from_llava(llava: nn.Module, config: VLoRAConfig) -> VLoRAModel:
    """A VLoRA model on the LLM and vision tower of a llava-hf model (its projector is dropped)."""
    strategy = getattr(llava.config, "vision_feature_select_strategy", "default")
    layer = llava.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vlora reads one vision layer; the llava model uses several ({layer})")
    config = VLoRAConfig(**{**config.__dict__, "vision_feature_layer": layer, "drop_cls": strategy == "default"})
    return VLoRAModel(causal_lm_from_llava(llava), llava.model.vision_tower, config)


def build_vlora(cfg: ModelConfig, output_dir: str | Path, data_path: str | None = None, dtype=torch.float32):
    """(VLoRAModel, processor) for `cfg`: a VLoRA checkpoint at model.model_path loads as is; otherwise the
    llava connector's builder provides the LLM, vision tower and processor and a fresh generator is added."""
    if cfg.model_path and VLoRAModel.is_checkpoint(cfg.model_path):
        model = VLoRAModel.from_pretrained(cfg.model_path, torch_dtype=dtype)
        return model, AutoProcessor.from_pretrained(cfg.model_path)
    from viral.model import build_model

    llava, processor = build_model(cfg, output_dir, data_path=data_path, dtype=dtype)
    torch.manual_seed(cfg.seed)
    return vlora_from_llava(llava, vlora_config(cfg)).to(dtype), processor
