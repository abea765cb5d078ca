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


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small ShapesWorld dataset."""
    from viral.data.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes"), seed=0, n_train=48, n_eval=8, progress=False)


@pytest.fixture(scope="session")
def tiny_dinov2_path(tmp_path_factory):
    """A tiny random DINOv2 with its own image processor (input 56 px, patch 14 -> 4x4 grid)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = tmp_path_factory.mktemp("tiny_dinov2")
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, image_size=56, patch_size=14))
    model.save_pretrained(out)
    # the in-memory weights that were written, under the module's own names (the file may use legacy names)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out) + "-reference.safetensors")
    BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3]).save_pretrained(out)
    return str(out)


def train_overrides(out, data_dir, *extra):
    """Overrides for a fast tiny training run on `data_dir`."""
    return [
        f"output_dir={out}", f"data.path={data_dir}/train.json", "train.max_steps=4",
        "train.per_device_train_batch_size=4", "train.logging_steps=1", "train.save_steps=1000",
        "train.report_to=[]", "train.learning_rate=1e-3", "train.projector_lr=1e-3", "align.projector_dim=32",
        "model.hidden_size=64", "model.num_layers=4", "model.vision_hidden_size=32", "model.vision_layers=2",
        "train.lora_r=4", "train.lora_alpha=8", "train.warmup_ratio=0", *extra,
    ]
