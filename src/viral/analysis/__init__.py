"""Analyses of a trained MLLM from the VIRAL paper: CKNNA, attention maps, PCA maps, patch shuffling."""

from viral.analysis.cknna import cknna

__all__ = ["cknna"]
