"""Generation with a trained (or any llava-hf) checkpoint: the `Predictor` behind `viral infer` and `viral eval`."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image

from viral.connectors import connector_of_folder, get_connector
from viral.data.images import apply_aspect
from viral.data.templates import render, resolve_template, user_message
from viral.errors import UserError
from viral.model import load_llava
from viral.runs import RUN_CONFIG_NAME


class ModelLoadError(UserError, OSError):
    """A model path or hub id that holds no loadable checkpoint (missing, incomplete, misspelt)."""


def _dtype(name: str | None):
    if name in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[name]


class Predictor:
    """A loaded model + processor that turns (image, question) pairs into answers."""

    def __init__(self, model, processor, image_aspect: str = "pad", template: str = "auto"):
        self.model = model.eval()
        self.processor = processor
        self.image_aspect = image_aspect
        self.template = resolve_template(template, processor)

    @classmethod
    def from_pretrained(cls, model_path: str, device: str | None = None, dtype: str | None = None) -> "Predictor":
        """Load a folder written by `viral train` (any connector) or any llava-hf checkpoint (hub id or path)."""
        if str(model_path).startswith(("/", "./", "../", "~")) and not Path(model_path).expanduser().exists():
            raise ModelLoadError(f"model path {model_path} does not exist")
        connector = connector_of_folder(model_path)
        if connector != "llava":  # e.g. vlora: that connector's Predictor subclass loads it
            return get_connector(connector).load("predictor").from_pretrained(model_path, device=device, dtype=dtype)
        torch_dtype = _dtype(dtype)
        try:
            model, processor = load_llava(model_path, dtype=torch_dtype)
        except OSError as err:  # transformers' error for a folder or hub id without a checkpoint
            raise ModelLoadError(f"cannot load a model from {model_path}: {err}") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        if Path(model_path).is_dir():
            from viral.align import load_residual

            load_residual(model, model_path)  # a residual-baseline run: hooks travel with the model
        aspect, template = "pad", "auto"
        run_config = Path(model_path) / RUN_CONFIG_NAME
        if run_config.is_file():
            data = (yaml.safe_load(run_config.read_text()) or {}).get("data", {})
            aspect = data.get("image_aspect", aspect)
        return cls(model, processor, image_aspect=aspect, template=template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_text(self, prompt: str, with_image: bool) -> str:
        """The question wrapped in the chat template, ending with the assistant's turn marker."""
        messages = [user_message(prompt, with_image)]
        return render(self.processor.tokenizer, self.template, messages, add_generation_prompt=True)

    def prepare(self, images: list[Image.Image | None], prompts: list[str]) -> dict:
        """Model inputs for a batch (left padding): input_ids, attention_mask, pixel_values."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        texts = [self.prompt_text(p, img is not None) for p, img in zip(prompts, images)]
        present = [
            apply_aspect(img.convert("RGB"), self.image_aspect, self.processor.image_processor)
            for img in images
            if img is not None
        ]
        tokenizer = self.processor.tokenizer
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = self.processor(
                text=texts, images=present or None, padding=True, return_tensors="pt"
            )
        finally:
            tokenizer.padding_side = old_side
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    @torch.inference_mode()
    def generate(
        self,
        images: list[Image.Image | None],
        prompts: list[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answers for a batch; temperature 0 is greedy decoding."""
        inputs = self.prepare(images, prompts)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            sampling.update({"temperature": None, "top_p": None, "top_k": None})
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]  # [B, T_new]
        texts = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [t.strip() for t in texts]
