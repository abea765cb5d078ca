"""Shared fixtures: tiny models and data built locally, never downloaded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

TINY_CORPUS = [
    "How many red circles are there ? Answer with a number .",
    "Is the blue square left of the green triangle ? Answer yes or no .",
    "Is there a yellow circle ? What colour is the triangle ? Answer with one word .",
    "yes no 0 1 2 3 4 5 6 red green blue yellow purple orange circle square triangle above below right",
    "The image shows a red circle and two blue squares .",
]


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    """A folder holding a tiny random LlavaForConditionalGeneration and its processor."""
    from viral.config import ModelConfig
    from viral.model import build_tiny

    out = tmp_path_factory.mktemp("tiny_llava")
    return str(build_tiny(TINY_CORPUS, ModelConfig(), out))
