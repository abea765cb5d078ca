"""Generation with a VLoRA checkpoint: the prompt carries no image token, the image goes to the generator."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image
from transformers import AutoProcessor

from viral.data.images import apply_aspect
from viral.infer import Predictor, _dtype
from viral.runs import RUN_CONFIG_NAME

from .model import VLoRAModel


class VLoRAPredictor(Predictor):
    """`Predictor` for a folder written by `VLoRAModel.save_pretrained` (plus its processor)."""

    @classmethod
    def from_pretrained(cls, model_path: str, device: str | None = None, dtype: str | None = None) -> "VLoRAPredictor":
        model = VLoRAModel.from_pretrained(model_path, torch_dtype=_dtype(dtype))
        processor = AutoProcessor.from_pretrained(model_path)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        aspect = "pad"
        run_config = Path(model_path) / RUN_CONFIG_NAME
        if run_config.is_file():
            aspect = (yaml.safe_load(run_config.read_text()) or {}).get("data", {}).get("image_aspect", aspect)
        return cls(model, processor, image_aspect=aspect)

    def prepare(self, images: list[Image.Image | None], prompts: list[str]) -> dict:
        """input_ids / attention_mask of the text alone (left padding), pixel_values of the images, has_image."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        texts = [self.prompt_text(p, with_image=False) for p in prompts]
        tokenizer = self.processor.tokenizer
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        finally:
            tokenizer.padding_side = old_side
        inputs.pop("token_type_ids", None)
        present = [
            apply_aspect(img.convert("RGB"), self.image_aspect, self.processor.image_processor)
            for img in images
            if img is not None
        ]
        if present:
            pixels = self.processor.image_processor(images=present, return_tensors="pt")["pixel_values"]
            inputs["pixel_values"] = torch.as_tensor(pixels)  # [n_img, 3, H, W]
        inputs["has_image"] = torch.tensor([img is not None for img in images])  # [B]
        return {k: v.to(self.device) for k, v in inputs.items()}
