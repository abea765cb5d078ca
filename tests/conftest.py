"""Shared fixtures: tiny models and data built locally, never downloaded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # tiny ops: a second thread only spins (measured 5x the CPU time on a shared 2-core box)

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


def save_reference(module, out) -> str:
    """The in-memory weights that were saved, under the module's own names (files may use legacy names)."""
    from safetensors.torch import save_file

    path = str(out) + "-reference.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}, path)
    return path


TOY_VFM_CODE = '''
"""A toy remote-code vision model shaped like RADIO: takes [0, 1] pixels, conditions them itself,
returns (summary, patch features)."""
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class ToyVFMConfig(PretrainedConfig):
    model_type = "toyvfm"

    def __init__(self, hidden_size=24, patch_size=8, image_size=32, **kwargs):
        self.hidden_size, self.patch_size, self.image_size = hidden_size, patch_size, image_size
        super().__init__(**kwargs)


class ToyVFMModel(PreTrainedModel):
    config_class = ToyVFMConfig

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("input_mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), persistent=False)
        self.patch_embed = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        self.block = nn.Linear(config.hidden_size, config.hidden_size)
        self.summary_head = nn.Linear(config.hidden_size, 7)
        self.post_init()

    @property
    def patch_size(self):
        return self.config.patch_size

    def forward(self, x):
        tokens = self.patch_embed(x - self.input_mean).flatten(2).transpose(1, 2)
        tokens = tokens + self.block(tokens)
        return self.summary_head(tokens.mean(1)), tokens
'''

TEACHER_MEAN, TEACHER_STD = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory):
    """One tiny random model per teacher family, saved with its own image processor (mean/std 0.1,0.2,0.3 /
    0.3,0.2,0.1). Maps family -> dict(spec, reference weights file, first_layer(teacher), grid)."""
    import importlib.util
    import json

    from transformers import (
        CLIPConfig, CLIPImageProcessor, CLIPModel, DepthAnythingConfig, DepthAnythingForDepthEstimation,
        Dinov2Config, DPTImageProcessor, SamConfig, SamImageProcessor, SamModel, Siglip2Config,
        Siglip2ImageProcessor, Siglip2Model, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel,
    )

    root = tmp_path_factory.mktemp("teachers")
    norm = {"image_mean": TEACHER_MEAN, "image_std": TEACHER_STD}
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    out: dict[str, dict] = {}
    torch.manual_seed(0)

    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))  # a full checkpoint
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **norm).save_pretrained(
        root / "clip")
    out["clip"] = {"spec": str(root / "clip"), "reference": save_reference(clip.vision_model, root / "clip"),
                   "first_layer": lambda t: t.model.embeddings.patch_embedding, "grid": (4, 4), "z_dim": 32}

    siglip = SiglipVisionModel(SiglipVisionConfig(**vision))  # a vision-only checkpoint
    siglip.save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}, **norm).save_pretrained(root / "siglip")
    out["siglip"] = {"spec": str(root / "siglip"), "reference": save_reference(siglip, root / "siglip"),
                     "first_layer": lambda t: t.model.embeddings.patch_embedding, "grid": (4, 4), "z_dim": 32}

    siglip2 = Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=16)))
    siglip2.save_pretrained(root / "siglip2")
    Siglip2ImageProcessor(patch_size=8, max_num_patches=9, **norm).save_pretrained(root / "siglip2")  # 3x3 patches
    out["siglip2"] = {"spec": str(root / "siglip2"), "reference": save_reference(siglip2.vision_model, root / "siglip2"),
                      "first_layer": lambda t: t.model.embeddings.patch_embedding, "grid": (3, 3), "z_dim": 32}

    sam = SamModel(SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                           num_pos_feats=8, initializer_range=0.02),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16)))
    sam.save_pretrained(root / "sam")
    SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, **norm).save_pretrained(
        root / "sam")
    out["sam"] = {"spec": str(root / "sam"), "reference": save_reference(sam.vision_encoder, root / "sam"),
                  "first_layer": lambda t: t.model.patch_embed.projection, "grid": (8, 8), "z_dim": 16}

    depth = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     image_size=42, patch_size=14, out_indices=[1, 2], reshape_hidden_states=False,
                                     apply_layernorm=True),
        reassemble_hidden_size=32, reassemble_factors=[2, 1], neck_hidden_sizes=[8, 16], fusion_hidden_size=8,
        head_hidden_size=8))
    depth.save_pretrained(root / "depth")
    DPTImageProcessor(size={"height": 42, "width": 42}, **norm).save_pretrained(root / "depth")
    out["depth-anything"] = {"spec": str(root / "depth"), "reference": save_reference(depth.backbone, root / "depth"),
                             "first_layer": lambda t: t.model.embeddings.patch_embeddings.projection,
                             "grid": (3, 3), "z_dim": 32}

    remote = root / "toyvfm"
    remote.mkdir()
    (remote / "modeling_toyvfm.py").write_text(TOY_VFM_CODE)
    spec = importlib.util.spec_from_file_location("toyvfm_for_fixture", remote / "modeling_toyvfm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    toy = module.ToyVFMModel(module.ToyVFMConfig(hidden_size=24, patch_size=8, image_size=48))
    toy.save_pretrained(remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_toyvfm.ToyVFMConfig", "AutoModel": "modeling_toyvfm.ToyVFMModel"}
    config["model_type"] = "toyvfm"
    (remote / "config.json").write_text(json.dumps(config))
    out["remote"] = {"spec": f"remote:{remote}", "reference": save_reference(toy, remote),
                     "first_layer": lambda t: t.model, "grid": (6, 6), "z_dim": 24}
    return out
