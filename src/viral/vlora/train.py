"""Training with `model.connector: vlora`: the same data, trainer, logging and export steps as the
llava connector, with the image reaching the LLM as per-sample low-rank weights.

Stages as in VLoRA's reference recipe: `pretrain` trains the generator alone (LLM and vision tower
frozen); `finetune` trains the generator and the LLM, fully or through peft LoRA; the vision tower
is always frozen. The data pipeline is the llava one with the `<image>` placeholder removed from the
tokens (zero image tokens) and a `has_image` flag per sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from viral.config import ExperimentConfig
from viral.data.llava import LlavaCollator, LlavaDataset
from viral.data.templates import IMAGE_TOKEN, resolve_template
from viral.resilience import NonFiniteGuard
from viral.runs import METRICS_NAME, RUN_CONFIG_NAME, MetricsJsonlCallback, trim_metrics
from viral.train import ViralTrainer, training_arguments

from .build import build_vlora
from .model import VLoRAModel


class VLoRATrainingModel(nn.Module):
    """What the trainer optimises: the VLoRA model, returning the loss terms `ViralTrainer` logs."""

    _keys_to_ignore_on_save = None  # read by the Trainer's checkpoint code
    accepts_loss_kwargs = True  # the Trainer counts supervised tokens per optimizer step and passes them in
    def __init__(self, vlora: VLoRAModel):
        super().__init__()
        self.vlora = vlora

    @staticmethod
    def count_images(batch: dict) -> int:
        """Samples with an image in a collated batch (VLoRA sequences hold no image token)."""
        has_image = batch.get("has_image")
        return int(has_image.sum()) if has_image is not None else 0

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, has_image=None,
                num_items_in_batch=None, num_images_in_batch=None) -> dict[str, torch.Tensor]:
        """L_LM; with `num_items_in_batch` (supervised tokens of the whole optimizer step) this micro-batch's
        share of the exact step mean, as the llava connector's training model."""
        lm_kwargs = {"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}
        out = self.vlora(input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         has_image=has_image, labels=labels, **lm_kwargs)
        loss = out.loss
        if pixel_values is None or (has_image is not None and not bool(has_image.any())):
            # no image in this micro-batch: a zero that still touches the generator (keeps DDP's reducer happy)
            loss = loss + 0.0 * sum(p.sum() for p in self.vlora.generator.parameters() if p.requires_grad)
        local_tokens = (labels[:, 1:] != -100).sum() if labels is not None else torch.tensor(0)
        lm_sum = out.loss.detach() * (num_items_in_batch if num_items_in_batch is not None else local_tokens)
        return {"loss": loss, "lm_sum": lm_sum, "lm_count": local_tokens.detach()}


class VLoRACollator:
    """The llava collator plus `has_image` `[B]`, which rows the stacked `pixel_values` `[B_img, ...]` belong to."""

    def __init__(self, pad_token_id: int):
        self.base = LlavaCollator(pad_token_id)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(items)
        kept = [item for item in items if not item.get("skipped")]
        batch["has_image"] = torch.tensor(["pixel_values" in item for item in kept])
        return batch


def configure_vlora_trainable(config: ExperimentConfig, model: VLoRAModel) -> None:
    """pretrain: generator only; finetune: generator + LLM (full, or LoRA adapters via peft)."""
    model.requires_grad_(False)
    model.generator.requires_grad_(True)
    if config.train.stage != "finetune":
        return
    if config.train.finetune_mode == "full":
        model.llm.requires_grad_(True)
        return
    from peft import LoraConfig, get_peft_model

    names = "|".join(config.train.lora_target_modules)
    lora = LoraConfig(r=config.train.lora_r, lora_alpha=config.train.lora_alpha,
                      lora_dropout=config.train.lora_dropout, target_modules=rf".*\.({names})$", bias="none")
    # The VLoRA hooks sit on the plain modules, which peft keeps as `base_layer`.
    model.llm = get_peft_model(model.llm, lora)


def build_vlora_trainer(config: ExperimentConfig) -> tuple[ViralTrainer, dict[str, Any]]:
    """Trainer and export parts for `connector: vlora` (`viral.train.build_trainer` dispatches here)."""
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if config.train.bf16 else torch.float32
    # model.model_path naming a VLoRA run (e.g. the pre-training stage's) continues from it
    vlora, processor = build_vlora(config.model, config.output_dir, data_path=config.data.path, dtype=dtype)
    if config.train.gradient_checkpointing:
        vlora.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    configure_vlora_trainable(config, vlora)
    template = resolve_template(config.data.template, processor)
    dataset = LlavaDataset(
        config.data.path, processor, template, image_folder=config.data.image_folder,
        image_aspect=config.data.image_aspect, model_max_length=config.data.model_max_length,
        num_image_tokens=0,  # the placeholder is dropped: the LLM reads text only
        image_token_id=processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        skip_bad_records=config.data.skip_bad_records,
    )
    metrics_path = Path(config.output_dir) / METRICS_NAME
    trim_metrics(metrics_path, config.train.resume_from_checkpoint)
    trainer = ViralTrainer(
        model=VLoRATrainingModel(vlora),
        args=training_arguments(config),
        train_dataset=dataset,
        data_collator=VLoRACollator(processor.tokenizer.pad_token_id),
        callbacks=[MetricsJsonlCallback(metrics_path)],
        projector_lr=None,  # one learning rate for generator and LLM, as the reference
    )
    trainer.num_skipped = dataset.num_skipped
    trainer.add_callback(NonFiniteGuard(trainer, config.train.max_bad_steps))
    parts = {"vlora": vlora, "processor": processor, "template": template, "dataset": dataset, "head": None,
             "teacher": None}
    return trainer, parts


def export_vlora(config: ExperimentConfig, parts: dict[str, Any], output_dir: str | Path | None = None) -> Path:
    """LLM (LoRA merged) in transformers format, vision tower, generator, processor and run config."""
    out = Path(output_dir or config.output_dir)
    vlora: VLoRAModel = parts["vlora"]
    vlora.merge_lora()
    vlora.save_pretrained(out)
    processor = parts["processor"]
    if config.data.template != "plain":
        processor.chat_template = parts["template"]
    processor.save_pretrained(out)
    config.save(out / RUN_CONFIG_NAME)
    return out
