"""`VLoRAModel`: a frozen vision tower, the perceptual-weights generator and a causal LM.

The LLM reads text only; each image becomes per-sample low-rank updates of the LLM's q/k/v/o
projections and MLPs (see `injection.py`). Samples without an image skip the generator and run
the unchanged LLM. Generation computes the updates once per image and reuses them at every
decoding step (prefill and cached decoding see the same weights and consistent position ids,
both left to transformers' own `generate`).

Checkpoint folder (`save_pretrained` / `from_pretrained`):
  config.json, model.safetensors, …  the LLM in plain transformers format
  vision_tower/                      the frozen vision tower in transformers format
  vlora_generator.safetensors        the generator (including the B factors)
  vlora_config.json                  generator hyper-parameters (VLoRAConfig)
Such a folder is not a llava-hf checkpoint: the image path needs `viral` to run.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .generator import PerceptualWeightsGenerator
from .injection import LowRankInjector, check_types, decoder_layers, updated_layers, weight_dims

GENERATOR_FILE = "vlora_generator.safetensors"
CONFIG_FILE = "vlora_config.json"
VISION_TOWER_DIR = "vision_tower"


@dataclass
class VLoRAConfig:
    """Generator hyper-parameters; one value per field for every training stage."""

    rank: int = 64  # r
    alpha: float = 64.0  # scale = alpha / r
    hidden_size: int = 512  # D, width of the generator
    depth: int = 8  # decoder blocks per weight type
    num_heads: int = 8  # attention heads of the generator blocks
    skip_layers: int = 4  # one update every skip_layers LLM layers, the first at 0-based skip_layers-1
    types: str = "qkvom"  # weight types that receive updates
    vision_feature_layer: int = -2  # hidden state of the vision tower fed to the generator
    drop_cls: bool | None = None  # drop the first vision token; None: drop it iff the tower has a CLS embedding

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLoRAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format"})
        if unknown:
            raise ValueError(f"unknown VLoRA config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def _has_cls_token(vision_tower: nn.Module) -> bool:
    embeddings = getattr(getattr(vision_tower, "vision_model", vision_tower), "embeddings", None)
    return hasattr(embeddings, "class_embedding")


def _num_patches(vision_tower: nn.Module) -> int:
    cfg = vision_tower.config
    return (cfg.image_size // cfg.patch_size) ** 2


class VLoRAModel(nn.Module):
    """Images as per-sample low-rank weights of a causal LM (VLoRA, arXiv 2405.20339)."""

    main_input_name = "input_ids"

    def __init__(self, llm: nn.Module, vision_tower: nn.Module, config: VLoRAConfig | None = None):
        super().__init__()
        config = dataclasses.replace(config or VLoRAConfig())
        config.types = check_types(config.types)
        if config.drop_cls is None:
            config.drop_cls = _has_cls_token(vision_tower)
        self.vlora_config = config
        self.llm = llm
        self.vision_tower = vision_tower.eval()
        self.vision_tower.requires_grad_(False)
        num_layers = len(decoder_layers(llm))
        self.update_layers = updated_layers(num_layers, config.skip_layers)  # 0-based LLM layers
        self.generator = PerceptualWeightsGenerator(
            vision_dim=vision_tower.config.hidden_size,
            num_patches=_num_patches(vision_tower),
            dims=weight_dims(llm, config.types),
            num_updates=len(self.update_layers),
            rank=config.rank,
            alpha=config.alpha,
            hidden_size=config.hidden_size,
            depth=config.depth,
            num_heads=config.num_heads,
        )
        self.injector = LowRankInjector(llm, self.update_layers, config.types)

    # The LLM's config, so that code written for transformers models (Trainer, generation) finds it.
    @property
    def config(self):
        return self.llm.config

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    def train(self, mode: bool = True) -> "VLoRAModel":
        super().train(mode)
        self.vision_tower.eval()  # frozen, always in eval mode
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the LLM's decoder layers; the recomputation in backward re-applies each batch's
        updates (non-reentrant checkpointing with the injector's context_fn)."""
        kwargs = {**(gradient_checkpointing_kwargs or {}), "use_reentrant": False,
                  "context_fn": self.injector.checkpoint_contexts}
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        if hasattr(llm, "activation_checkpointing_enable"):
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ---- image path -------------------------------------------------------------------------

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values `[n, 3, H, W]` → frozen vision features `[n, N, D_v]` (layer -2, CLS dropped)."""
        param = next(self.vision_tower.parameters())
        out = self.vision_tower(pixel_values.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
        features = out.hidden_states[self.vlora_config.vision_feature_layer]  # [n, 1 + N, D_v] for CLIP
        return features[:, 1:] if self.vlora_config.drop_cls else features  # [n, N, D_v]

    def perceptual_weights(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixel_values `[n, 3, H, W]` → {type: A `[n, k, d_in, r]`}; B lives in `generator.lora_B`."""
        features = self.image_features(pixel_values)  # [n, N, D_v]
        gen_param = self.generator.input_proj.weight
        return self.generator(features.to(device=gen_param.device, dtype=gen_param.dtype))

    @contextmanager
    def visual_updates(
        self, pixel_values: torch.Tensor | None, has_image: torch.Tensor | None, batch_size: int
    ) -> Iterator[None]:
        """Within the block the LLM carries each image's updates on its own batch row.

        `pixel_values` holds either one image per batch row (`[B, 3, H, W]`, rows without an image
        ignored) or one per row with an image (`[n_img, 3, H, W]`); `has_image` `[B]` says which rows
        have one (all rows when omitted). Text-only rows skip the generator.
        """
        if pixel_values is None:
            yield
            return
        if has_image is None:
            has_image = torch.ones(batch_size, dtype=torch.bool)
        has_image = has_image.to(torch.bool).reshape(-1)
        if has_image.numel() != batch_size:
            raise ValueError(f"has_image has {has_image.numel()} entries for a batch of {batch_size}")
        rows = has_image.nonzero().flatten()  # [n_img]
        if pixel_values.shape[0] == batch_size:
            pixel_values = pixel_values[rows.to(pixel_values.device)]
        elif pixel_values.shape[0] != rows.numel():
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images for a batch of {batch_size} rows, "
                f"{rows.numel()} of which have an image"
            )
        if rows.numel() == 0:
            yield
            return
        a = self.perceptual_weights(pixel_values)  # {type: [n_img, k, d_in, r]}
        device = self.llm.get_input_embeddings().weight.device
        with self.injector.updates(a, dict(self.generator.lora_B), rows.to(device), batch_size, self.generator.scale):
            yield

    # ---- LLM calls --------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """Text tokens `[B, S]` (no image tokens) plus images → the LLM's output (loss when labels given)."""
        with self.visual_updates(pixel_values, has_image, input_ids.shape[0]):
            return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """transformers `generate` on the LLM with each image's updates computed once, before prefill."""
        with self.visual_updates(pixel_values, has_image, input_ids.shape[0]):
            return self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    # ---- checkpoints ------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """LLM (transformers format) + vision_tower/ + vlora_generator.safetensors + vlora_config.json."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        llm = self.llm
        if hasattr(llm, "merge_and_unload"):  # peft LoRA: the checkpoint holds merged, plain weights
            raise ValueError("merge the LLM's LoRA adapters (VLoRAModel.merge_lora()) before save_pretrained")
        llm.save_pretrained(out, **kwargs)
        self.vision_tower.save_pretrained(out / VISION_TOWER_DIR, **kwargs)
        state = {k: v.detach().contiguous() for k, v in self.generator.state_dict().items()}
        save_file(state, str(out / GENERATOR_FILE), metadata={"format": "pt"})
        config = {"format": "viral-vlora", **dataclasses.asdict(self.vlora_config)}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def merge_lora(self) -> None:
        """Fold a peft LoRA wrapper of the LLM into its weights (the VLoRA hooks stay in place)."""
        if hasattr(self.llm, "merge_and_unload"):
            self.llm = self.llm.merge_and_unload()

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None, **kwargs) -> "VLoRAModel":
        """Load a folder written by `save_pretrained`."""
        from transformers import AutoModel, AutoModelForCausalLM

        path = Path(path)
        for needed in (CONFIG_FILE, GENERATOR_FILE, VISION_TOWER_DIR):
            if not (path / needed).exists():
                raise FileNotFoundError(f"{path} is not a VLoRA checkpoint: {needed} is missing")
        config = VLoRAConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        dtype_kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        llm = AutoModelForCausalLM.from_pretrained(path, **dtype_kw, **kwargs)
        vision_tower = AutoModel.from_pretrained(path / VISION_TOWER_DIR, **dtype_kw, **kwargs)
        model = cls(llm, vision_tower, config)
        state = load_file(str(path / GENERATOR_FILE))
        model.generator.load_state_dict(state)
        if torch_dtype is not None:
            model.generator.to(torch_dtype)
        return model

    @staticmethod
    def is_checkpoint(path: str | Path) -> bool:
        """True for a folder written by `VLoRAModel.save_pretrained`."""
        return (Path(path) / GENERATOR_FILE).is_file()
