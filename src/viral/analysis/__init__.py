"""Analyses of a trained MLLM from the VIRAL paper: layer-wise CKNNA, text-to-image attention maps and
their spatial entropy, PCA maps of image-token states, and patch-shuffle accuracy."""

from viral.analysis.cknna import cknna

__all__ = ["cknna"]
