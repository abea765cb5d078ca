"""Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`) trained with VIRAL.

What differs from LLaVA, and how each difference is met:
- Variable resolution: the image processor resizes each image to a multiple of patch*merge pixels within
  [min_pixels, max_pixels] and returns flattened patches (`pixel_values` `[sum patches, C*t*p*p]`) with
  `image_grid_thw` `[n_images, 3]` (t, h, w in patches). The LLM reads one token per merged 2x2 patch
  block, so image i has (h/merge) x (w/merge) image tokens, a different grid per image. The merged tokens
  follow raster order over that grid: the processor permutes patches to (h/merge, w/merge, merge, merge)
  before flattening, the merger maps each run of merge^2 patches to one token, and M-RoPE gives token k the
  position (k // (w/merge), k % (w/merge)) (`get_vision_position_ids`'s meshgrid); Qwen2.5-VL's windowed
  vision tower restores that order after its merger (`reverse_indices`).
- The teacher runs once per image on its own square grid; `PerImageGridTeacher` resamples its features
  to each sample's (h/merge, w/merge) grid (`teacher_student_grid`, recorded per sample by the collator)
  and packs them `[sum N_i, z_dim]` in the same raster order. No token count is fixed anywhere.
- The layer hooks are the core's (`viral.align.capture`, ragged mode): the decoder layers are
  `model.language_model.layers` as in llava-hf, and the single mask `input_ids == config.image_token_id`
  selects the states, packed in the same order as the targets.
- M-RoPE needs `mm_token_type_ids` (1 on image tokens); the collator derives it from the same mask.
- The vision projector is the vision tower's `merger`; the rest of the tower stays frozen.

transformers' `Qwen2VLProcessor` also holds a video processor, which needs torchvision; without torchvision
(as on this project's CPU test machine) `QwenVLProcessor` below does the image-and-text part the same way
(expand each image token to its merged-token count, add `mm_token_type_ids`) and saves the same files
(tokenizer, `preprocessor_config.json`, chat template), so `AutoProcessor` rebuilds the real processor
wherever torchvision is installed.

Not supported for these families (each refused with a clear error): the `encoder` target (the MLLM's own
vision features), `align.teacher_cache` (the cache stores one fixed grid per image), the residual baselines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from viral.config import ConfigError, ModelConfig
from viral.data.llava import LlavaCollator
from viral.data.templates import IMAGE_TOKEN, get_template
from viral.model import train_word_tokenizer

QWEN_SPECIAL_TOKENS = ["<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]


class QwenVLProcessor:
    """Image-and-text processing of `Qwen2VLProcessor` for machines without torchvision (see module doc)."""

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None,
                 processor_class: str = "Qwen2VLProcessor"):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.processor_class = processor_class  # the transformers processor AutoProcessor builds from the folder
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, text: list[str] | str, images=None, padding: bool = True, return_tensors: str = "pt", **_):
        texts = [text] if isinstance(text, str) else list(text)
        image_inputs: dict[str, torch.Tensor] = {}
        if images:
            image_inputs = dict(self.image_processor(images=images, return_tensors="pt"))
            merge = int(self.image_processor.merge_size) ** 2
            counts = iter((image_inputs["image_grid_thw"].prod(dim=-1) // merge).tolist())
            expanded = []
            for sample in texts:
                pieces = sample.split(self.image_token)
                out = pieces[0]
                for piece in pieces[1:]:
                    out += self.image_token * int(next(counts)) + piece
                expanded.append(out)
            texts = expanded
        encoded = dict(self.tokenizer(texts, padding=padding, return_tensors=return_tensors))
        encoded["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).int()  # [B, T]
        return {**encoded, **image_inputs}

    def save_pretrained(self, out: str | os.PathLike) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        if self.chat_template:
            (out / "chat_template.jinja").write_text(self.chat_template)
        (out / "processor_config.json").write_text(json.dumps({"processor_class": self.processor_class}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **image_kwargs) -> "QwenVLProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = AutoImageProcessor.from_pretrained(str(path), **image_kwargs)
        template = None
        folder = Path(path)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        config_file = folder / "processor_config.json"
        processor_class = (json.loads(config_file.read_text()).get("processor_class") if config_file.is_file()
                           else None) or "Qwen2VLProcessor"
        return cls(image_processor, tokenizer, template or getattr(tokenizer, "chat_template", None), processor_class)


def load_processor(path: str | os.PathLike, min_pixels: int | None = None, max_pixels: int | None = None):
    """transformers' processor when torchvision is installed, else `QwenVLProcessor`; pixel budget applied."""
    from transformers.utils import is_torchvision_available

    size = {}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if is_torchvision_available():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path))
    else:
        processor = QwenVLProcessor.from_pretrained(path)
    if size:  # the processor's `size` (a SizeDict) holds the budget as shortest_edge / longest_edge, in pixels
        image_processor = processor.image_processor
        image_processor.size = type(image_processor.size)(**{**dict(image_processor.size), **size})
    return processor


class PerImageGridTeacher:
    """A teacher whose features land on each sample's own image-token grid.

    The wrapped teacher is set to return features on its own grid (its `student_grid` = its `grid`);
    `__call__` then resamples sample i to `student_grid[i]` (rows, cols) and packs the results
    `[sum rows_i*cols_i, z_dim]` in raster order, the order of the student's image tokens.
    """

    needs_pixels = True

    def __init__(self, teacher):
        self.teacher = teacher
        teacher.student_grid = tuple(teacher.grid)

    def __getattr__(self, name: str):  # spec, z_dim, grid, describe(), parameters(), ...
        return getattr(self.teacher, name)

    def inputs(self, images) -> dict[str, torch.Tensor]:
        return self.teacher.inputs(images)

    def to(self, device=None, dtype=None) -> "PerImageGridTeacher":
        self.teacher.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, student_grid: torch.Tensor, **extra) -> torch.Tensor:
        from viral.align.teachers_base import resample_grid

        native = self.teacher(pixel_values, **extra)  # [B, h*w, z_dim] on the teacher's grid
        grid = tuple(self.teacher.grid)
        packed = [resample_grid(native[i:i + 1], grid, (int(rows), int(cols)))[0]  # [rows*cols, z_dim]
                  for i, (rows, cols) in enumerate(student_grid.tolist())]
        return torch.cat(packed)  # [sum N_i, z_dim]


class QwenVLCollator(LlavaCollator):
    """Pads text like `LlavaCollator`; concatenates the variable-size patches, stacks `image_grid_thw`,
    records each sample's image-token grid for the teacher, and marks image tokens for M-RoPE."""

    IMAGE_KEYS = ("teacher_pixel_values", "teacher_image_sizes")

    def __init__(self, pad_token_id: int, image_token_id: int, merge_size: int):
        super().__init__(pad_token_id)
        self.image_token_id = int(image_token_id)
        self.merge_size = int(merge_size)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(items)
        with_image = [item for item in items if not item.get("skipped") and "pixel_values" in item]
        if with_image:
            batch["pixel_values"] = torch.cat([item["pixel_values"] for item in with_image])  # [sum P_i, C*t*p*p]
            grid_thw = torch.stack([item["image_grid_thw"] for item in with_image])  # [B_img, 3]
            batch["image_grid_thw"] = grid_thw
            batch["teacher_student_grid"] = grid_thw[:, 1:] // self.merge_size  # [B_img, 2] (rows, cols)
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()  # [B, T]
        return batch


@dataclass(frozen=True)
class QwenVLFamily:
    """One Qwen vision-language family: its transformers classes and what the core asks of a family."""

    name: str
    model_class_name: str
    processor_class_name: str
    vision_width_key: str  # the vision tower's width in its config: embed_dim (Qwen2-VL), hidden_size (2.5)
    ragged_image_tokens: bool = True  # a different number of image tokens per sample

    # --- loading and building -------------------------------------------------------------------
    @property
    def model_class(self):
        import transformers

        return getattr(transformers, self.model_class_name)

    def load(self, path: str | Path, dtype=torch.float32, attn_implementation: str | None = None,
             min_pixels: int | None = None, max_pixels: int | None = None):
        """The model (plain transformers `from_pretrained`) and its processor."""
        kwargs = {"dtype": dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = self.model_class.from_pretrained(str(path), **kwargs)
        return model, load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)

    def tiny_config(self, tokenizer, cfg: ModelConfig):
        """A tiny random config of this family (vision depth `vision_layers`, width `vision_hidden_size`)."""
        from transformers import AutoConfig

        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
            ("image_token_id", IMAGE_TOKEN), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        heads = 4
        half_head = cfg.hidden_size // heads // 2
        section = [half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]  # M-RoPE (t, h, w)
        text = dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.hidden_size * 2,
                    num_hidden_layers=cfg.num_layers, num_attention_heads=heads, num_key_value_heads=2,
                    max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0})
        vision = dict(depth=cfg.vision_layers, num_heads=4, patch_size=cfg.patch_size, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
        if self.name == "qwen2_vl":
            vision.update(embed_dim=cfg.vision_hidden_size, hidden_size=cfg.hidden_size, mlp_ratio=2)
        else:
            vision.update(hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
                          out_hidden_size=cfg.hidden_size, window_size=cfg.patch_size * 4,
                          fullatt_block_indexes=[cfg.vision_layers - 1])
        return AutoConfig.for_model(self.name, text_config=text, vision_config=vision, tie_word_embeddings=False,
                                    **ids)

    def build_tiny(self, texts: list[str], cfg: ModelConfig, out_dir: str | Path) -> Path:
        """A tiny random model of this family + processor (word-level tokenizer, the `tiny` chat template,
        the family's image processor at `patch_size` with at most `image_size`^2 pixels), saved to `out_dir`."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        out_dir = Path(out_dir)
        tokenizer = train_word_tokenizer(texts)
        tokenizer.add_tokens(QWEN_SPECIAL_TOKENS, special_tokens=True)
        torch.manual_seed(cfg.seed)
        model = self.model_class(self.tiny_config(tokenizer, cfg))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        factor = cfg.patch_size * 2
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=cfg.patch_size, merge_size=2, temporal_patch_size=2,
            min_pixels=cfg.min_pixels or factor * factor, max_pixels=cfg.max_pixels or cfg.image_size ** 2)
        model.save_pretrained(out_dir)
        processor = QwenVLProcessor(image_processor, tokenizer, get_template("tiny"), self.processor_class_name)
        processor.save_pretrained(out_dir)
        return out_dir

    def build_model(self, cfg: ModelConfig, dtype=torch.float32):
        """`model.model_path` (hub id or folder, e.g. one written by `build_tiny`) and its processor."""
        return self.load(cfg.model_path, dtype=dtype, attn_implementation=cfg.attn_implementation,
                         min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)

    def dimensions(self, cfg: ModelConfig) -> tuple[int, int]:
        """(LLM layers, vision tower width) without loading weights."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(cfg.model_path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the model's config: {err}") from err
        return config.text_config.num_hidden_layers, self.vision_width(config)

    def vision_width(self, config) -> int:
        return int(getattr(config.vision_config, self.vision_width_key))

    # --- parts the trainer needs ------------------------------------------------------------------
    def vision_tower(self, model) -> nn.Module:
        return model.model.visual

    def projector(self, model) -> nn.Module:
        return model.model.visual.merger

    def merge_size(self, model) -> int:
        return int(model.config.vision_config.spatial_merge_size)

    def image_inputs(self, processor):
        """image -> ({"pixel_values": [P, C*t*p*p], "image_grid_thw": [3]}, number of image tokens)."""
        image_processor = processor.image_processor
        merge = int(image_processor.merge_size)

        def encode(image) -> tuple[dict[str, torch.Tensor], int]:
            out = image_processor(images=image, return_tensors="pt")
            grid_thw = torch.as_tensor(out["image_grid_thw"][0])  # [3]
            return ({"pixel_values": torch.as_tensor(out["pixel_values"]), "image_grid_thw": grid_thw},
                    int(grid_thw.prod()) // (merge * merge))
        return encode

    def collator(self, processor, model) -> QwenVLCollator:
        return QwenVLCollator(processor.tokenizer.pad_token_id, model.config.image_token_id, self.merge_size(model))

    def check_alignment(self, config) -> None:
        """Refuse what this family does not support, before anything is loaded."""
        from viral.align.teachers import resolve_teacher_spec

        if config.align.residual:
            raise ConfigError(f"align.residual is not supported for model.preset {self.name!r} (LLaVA only)")
        if not config.align.vra_loss:
            return
        if resolve_teacher_spec(config.align.vra_target)[0] == "encoder":
            raise ConfigError(f"align.vra_target {config.align.vra_target!r} (the MLLM's own vision features) is "
                              f"not supported for model.preset {self.name!r}; use a VFM teacher, e.g. dinov2-vit-b")
        if config.align.teacher_cache:
            raise ConfigError(f"align.teacher_cache stores features on one fixed grid per image; model.preset "
                              f"{self.name!r} gives each image its own grid. Unset align.teacher_cache (the "
                              f"teacher then runs in the training loop)")

    def teacher(self, spec: str) -> PerImageGridTeacher:
        from viral.align.teachers import build_teacher

        return PerImageGridTeacher(build_teacher(spec, (1, 1)))


QWEN2_VL = QwenVLFamily("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "embed_dim")
QWEN2_5_VL = QwenVLFamily("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "hidden_size")
