"""VLoRA (arXiv 2405.20339): images as per-sample low-rank weights of the LLM instead of input tokens."""

from .generator import PerceptualWeightsGenerator
from .injection import VLORA_TYPES, LowRankInjector, low_rank_delta, updated_layers, weight_dims
from .model import VLoRAConfig, VLoRAModel

__all__ = [
    "VLORA_TYPES",
    "LowRankInjector",
    "PerceptualWeightsGenerator",
    "VLoRAConfig",
    "VLoRAModel",
    "low_rank_delta",
    "updated_layers",
    "weight_dims",
]
