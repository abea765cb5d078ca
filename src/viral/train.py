"""Training: a transformers `Trainer` whose loss is L = L_LM + lambda * L_VRA (VIRAL, arXiv 2509.07979).

- `ViralTrainingModel` wraps the llava-hf model with the alignment head; its forward captures the
  target layers' image-token states with hooks, projects them, and compares them with the teacher's
  features (computed by the trainer from the teacher's own pixels, or, for the `encoder` target, the
  vision features z captured at the projector's input in the same forward pass).
- With `align.teacher_cache` the targets are read from a folder written by `viral cache-teacher`
  (`viral.align.cache`), checked against the configured teacher and student before training starts, and
  no teacher is held in memory.
- `ViralTrainer` adds the teacher (kept outside the model, the optimizer and the checkpoint), a
  separate learning rate for the vision projector, logging of L_LM and L_VRA at every logging step,
  and checkpoints that hold only trainable state.
- `train(config)` builds everything from an `ExperimentConfig`, trains, and exports a plain
  llava-hf checkpoint (LoRA merged) with its processor, `alignment_head.safetensors`,
  `viral_config.yaml` and `metrics.jsonl` in `config.output_dir`.
- Other model families (`viral.families`: Qwen2-VL, Qwen2.5-VL) supply their image inputs, collator,
  vision projector and a teacher resampled to each image's own grid; their image-token states are
  captured packed (`[sum N_i, D]`) and the loss is averaged per sample, then over samples.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from viral.align.cache import TeacherCache, open_training_cache
from viral.align.hooked_loss import HookedAlignmentLoss, touch
from viral.align.losses import get_alignment_loss
from viral.align.projector import AlignmentHead
from viral.align.residual import attach_residual
from viral.align.teachers import Teacher, build_teacher, teacher_feature_dim
from viral.config import ConfigError, ExperimentConfig
from viral.connectors import get_connector
from viral.data.llava import LlavaCollator, LlavaDataset
from viral.data.templates import resolve_template
from viral.families import FAMILIES, family_of_model, get_family
from viral.model import build_model, image_grid, keeps_cls, model_dimensions, num_image_tokens
from viral.resilience import (
    NonFiniteGuard,
    SigtermCheckpoint,
    TrainingInterrupted,
    check_output_dir,
    remove_stale_staging,
    save_checkpoint_atomically,
)
from viral.runs import METRICS_NAME, RUN_CONFIG_NAME, MetricsJsonlCallback, checkpoint_step, trim_metrics

logger = logging.getLogger(__name__)

ALIGNMENT_HEAD_NAME = "alignment_head.safetensors"
PROJECTOR_KEYS = ("multi_modal_projector", "visual.merger")  # the vision projector's name: LLaVA, Qwen-VL


class ViralTrainingModel(nn.Module):
    """The llava-hf model (possibly peft-wrapped) plus, when VIRAL is on, the alignment head."""

    _keys_to_ignore_on_save = None  # read by the Trainer's checkpoint code
    accepts_loss_kwargs = True  # the Trainer counts supervised tokens per optimizer step and passes them in

    def __init__(self, mllm: nn.Module, llava: nn.Module, alignment_head: AlignmentHead | None = None,
                 vra_weight: float = 0.5, alignment_loss: str = "cosine", residual: nn.Module | None = None):
        super().__init__()
        self.mllm = mllm
        self.residual = residual  # residual baseline: its hooks act inside mllm; a child here to be trained
        self.alignment_head = alignment_head
        self.vra_weight = float(vra_weight)
        self.image_token_id = int(llava.config.image_token_id)
        self.loss_fn = get_alignment_loss(alignment_loss)
        family = family_of_model(llava)  # None: LLaVA
        ragged = bool(family is not None and family.ragged_image_tokens)  # a different token count per image
        # the head runs (forward and backward) inside the target layers' hooks: viral.align.hooked_loss
        self.capture = (HookedAlignmentLoss(llava, alignment_head, self.loss_fn, ragged)
                        if alignment_head is not None else None)
        self._image_path = [family.projector(llava) if family is not None
                            else llava.model.multi_modal_projector]  # a list: not a second registration
        self._encoder_features: torch.Tensor | None = None
        # vision_feature_select_strategy "full": each image's first image token is CLS, which no teacher patch
        # matches; VIRAL aligns the patch tokens after it
        self.skip_cls = family is None and keeps_cls(llava)
        if alignment_head is not None and family is None:
            llava.model.multi_modal_projector.register_forward_pre_hook(self._keep_encoder_features)

    def count_images(self, batch: dict) -> int:
        """Samples with an image in a collated batch: rows holding the image token."""
        return int((batch["input_ids"] == self.image_token_id).any(dim=1).sum())

    def _keep_encoder_features(self, module, args) -> None:
        if self.capture is not None and self.capture.mask is not None:
            features = args[0].detach()  # [B_img, N (+1 with CLS first), D_v]
            self._encoder_features = features[:, 1:] if self.skip_cls else features  # [B_img, N, D_v]: z

    def _image_only_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that only an image reaches: projector, residual, alignment head."""
        modules = [*self._image_path, self.residual, self.alignment_head]
        return [p for module in modules if module is not None for p in module.parameters() if p.requires_grad]

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, teacher_features=None,
                num_items_in_batch=None, num_images_in_batch=None, **image_inputs) -> dict[str, torch.Tensor]:
        """Loss terms. With `num_items_in_batch` (supervised tokens) and `num_images_in_batch` (image samples)
        counted over the whole optimizer step (all accumulation steps and ranks), the returned `loss` is this
        micro-batch's share of the exact step mean; without them, micro-batch means. `image_inputs`: what a
        model family reads beside pixel_values (Qwen-VL: image_grid_thw, mm_token_type_ids)."""
        lm_kwargs = {"num_items_in_batch": num_items_in_batch} if num_items_in_batch is not None else {}
        image_mask = input_ids == self.image_token_id  # [B, T]
        if self.capture is not None:
            patches = image_mask & (image_mask.cumsum(dim=1) > 1) if self.skip_cls else image_mask  # [B, T]
            self.capture.arm(patches, lambda: teacher_features if teacher_features is not None
                             else self._encoder_features)
        try:
            out = self.mllm(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            pixel_values=pixel_values, **image_inputs, **lm_kwargs)
        finally:
            layer_losses = self.capture.collect() if self.capture is not None else {}  # {layer: []}
            self._encoder_features = None
        local_tokens = (labels[:, 1:] != -100).sum() if labels is not None else torch.tensor(0)
        lm_sum = out.loss.detach() * (num_items_in_batch if num_items_in_batch is not None else local_tokens)
        images = int(image_mask.any(dim=1).sum())
        loss = out.loss
        if images == 0 or pixel_values is None:
            # no image in this micro-batch: a zero that still touches the image-only parameters, so every
            # trainable parameter has a gradient (DDP runs with find_unused_parameters=False)
            loss = loss + touch(self._image_only_parameters())
        result = {"loss": loss, "lm_sum": lm_sum, "lm_count": local_tokens.detach()}
        if self.alignment_head is None:
            return result
        if len(layer_losses) == len(self.alignment_head.target_layers):
            # mean over this micro-batch's image samples (inside each layer's loss) and over layers
            loss_vra = torch.stack([layer_losses[layer] for layer in self.alignment_head.target_layers]).mean()
        else:  # no image (or no target) in this micro-batch
            loss_vra = touch(list(self.alignment_head.parameters()))
        share = images / num_images_in_batch if num_images_in_batch else 1.0
        result["loss"] = loss + self.vra_weight * loss_vra * share
        result["vra_sum"] = loss_vra.detach() * images
        result["vra_count"] = torch.tensor(images)
        return result


class ViralTrainer(Trainer):
    """Trainer with the teacher outside the model, the two loss terms logged, trainable-only checkpoints."""

    def __init__(self, *args, teacher: Teacher | None = None, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.projector_lr = projector_lr
        self._sums = self._zero_sums()
        self.num_skipped = 0
        self.num_images_in_batch: torch.Tensor | None = None
        self.bad_step_records: list[int] | None = None  # set when a micro-batch of this step had a NaN/inf loss

    @staticmethod
    def _zero_sums() -> dict[str, float]:
        return {"lm_sum": 0.0, "lm_count": 0.0, "vra_sum": 0.0, "vra_count": 0.0}

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Supervised tokens (the Trainer's count) and, beside it, image samples of the whole optimizer step."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        model = self.accelerator.unwrap_model(self.model)
        images = sum(model.count_images(b) for b in batch_samples)
        images = torch.tensor(images, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            images = self.accelerator.gather(images).sum()
        self.num_images_in_batch = images
        return num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        records = inputs.pop("record_index", None)
        self.num_skipped += int(inputs.pop("num_skipped", 0) or 0)
        teacher_inputs = {key.removeprefix("teacher_"): inputs.pop(key) for key in list(inputs)
                          if key.startswith("teacher_") and key != "teacher_features"}
        if teacher_inputs and self.teacher is not None and "teacher_features" not in inputs:
            with torch.inference_mode():  # the teacher is frozen: no autograd records at all, one batched call
                features = self.teacher(**teacher_inputs)  # [B_img, N, D_z]
            # a normal tensor (the loss may save it) holding only the patch tokens the loss reads
            inputs["teacher_features"] = features.clone()
            del teacher_inputs, features
        if num_items_in_batch is not None:
            inputs["num_items_in_batch"] = num_items_in_batch
            inputs["num_images_in_batch"] = self.num_images_in_batch
        outputs = model(**inputs)
        loss = outputs["loss"]
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        finite = bool(torch.isfinite(outputs["lm_sum"])) and bool(torch.isfinite(outputs.get("vra_sum", torch.tensor(0.0))))
        if not finite:
            self.bad_step_records = (self.bad_step_records or []) + list(records or [])
            trainable = [p for p in model.parameters() if p.requires_grad]
            loss = sum((p * 0.0).sum() for p in trainable)  # zero gradients; NonFiniteGuard drops the update
        else:
            for key in self._sums:
                if key in outputs:
                    self._sums[key] += float(outputs[key])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            sums = torch.tensor([self._sums[k] for k in ("lm_sum", "lm_count", "vra_sum", "vra_count")],
                                dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            lm_sum, lm_count, vra_sum, vra_count = sums.tolist()
            aligned = getattr(self.accelerator.unwrap_model(self.model), "alignment_head", None) is not None
            # a term that is off or had nothing to average is left out of the logs (metrics.jsonl writes it
            # as null); a None value would make the TensorBoard callback warn at every logging step
            if lm_count:
                logs["loss_lm"] = lm_sum / lm_count
            if aligned and vra_count:
                logs["loss_vra"] = vra_sum / vra_count
            if self.num_skipped:
                logs["skipped_records"] = self.num_skipped
            self._sums = self._zero_sums()
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)

    def create_optimizer(self, model=None):
        """AdamW (or `args.optim`) with the vision projector in its own group at `projector_lr`."""
        if self.optimizer is not None or self.projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                is_projector = any(key in name for key in PROJECTOR_KEYS)
                groups.setdefault((is_projector, name in decay), []).append(param)
        param_groups = []
        for (is_projector, decays), params in sorted(groups.items()):  # projector last: logged lr = LLM's
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = self.projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoint only the trainable tensors (projector, LoRA or LLM, alignment head)."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = state_dict if state_dict is not None else model.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k in trainable}
        save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the trainable tensors `_save` wrote; every saved key must exist in the model."""
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"no model.safetensors in checkpoint {resume_from_checkpoint}")
        state = load_file(path)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint {resume_from_checkpoint} holds tensors this model does not have: "
                             f"{result.unexpected_keys[:5]} ... (was it written by a different config?)")
        logger.info("resumed %d trainable tensors from %s", len(state), resume_from_checkpoint)


def configure_trainable(config: ExperimentConfig, llava: nn.Module) -> nn.Module:
    """Freeze per stage; wrap with LoRA (peft) when asked. Returns the model to train (peft or llava)."""
    family = family_of_model(llava)  # None: LLaVA
    llava.requires_grad_(False)
    model: nn.Module = llava
    if config.train.stage == "finetune":
        if config.train.finetune_mode == "lora":
            from peft import LoraConfig, get_peft_model

            names = "|".join(config.train.lora_target_modules)
            lora = LoraConfig(
                r=config.train.lora_r, lora_alpha=config.train.lora_alpha, lora_dropout=config.train.lora_dropout,
                target_modules=rf".*language_model.*\.({names})$", bias="none",
            )
            model = get_peft_model(llava, lora)
        else:
            llava.model.language_model.requires_grad_(True)
            llava.lm_head.requires_grad_(True)
    vision_tower = family.vision_tower(llava) if family else llava.model.vision_tower
    projector = family.projector(llava) if family else llava.model.multi_modal_projector
    vision_tower.requires_grad_(False)  # before the projector: Qwen-VL's projector sits inside its vision tower
    projector.requires_grad_(True)
    return model


def check_alignment_config(config: ExperimentConfig, llava: nn.Module, teacher: Teacher | TeacherCache) -> int:
    """Validate target layers and z_dim against the model and teacher; returns z_dim."""
    num_layers = llava.config.text_config.num_hidden_layers
    bad = [layer for layer in config.align.target_layers if not 0 <= layer <= num_layers]
    if bad:
        raise ConfigError(f"align.target_layers {bad} out of range 0..{num_layers} for this LLM "
                          f"({num_layers} layers); the paper's 16 of 32 is the middle")
    if config.align.z_dim is not None and config.align.z_dim != teacher.z_dim:
        raise ConfigError(f"align.z_dim is {config.align.z_dim} but teacher {config.align.vra_target!r} "
                          f"gives {teacher.z_dim}-dim features; remove z_dim or set it to {teacher.z_dim}")
    return teacher.z_dim


def training_arguments(config: ExperimentConfig) -> TrainingArguments:
    """transformers.TrainingArguments from the `train` section (warmup_ratio < 1 is a fraction of steps)."""
    t = config.train
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler_type,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=t.bf16,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to,
        # every trainable parameter gets a gradient each step (text-only micro-batches touch the image-only
        # ones with a zero), so DDP needs no search for unused parameters
        ddp_find_unused_parameters=False,
        deepspeed=t.deepspeed,
        fsdp=t.fsdp or None,
        fsdp_config=t.fsdp_config,
        dataloader_num_workers=t.dataloader_num_workers,
        disable_tqdm=t.disable_tqdm,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )


def preflight(config: ExperimentConfig) -> None:
    """Config errors that need no model weights: data file, output folder, teacher id, layers, z_dim."""
    if config.data.path is None:
        raise ConfigError("data.path is not set: point it at a LLaVA-format JSON file")
    if not Path(config.data.path).is_file():
        raise ConfigError(f"data.path {config.data.path} does not exist")
    check_output_dir(config.output_dir, config.train.resume_from_checkpoint, config.train.overwrite_output_dir)
    if config.train.fsdp and not torch.cuda.is_available():
        raise ConfigError("train.fsdp needs CUDA GPUs: transformers' Trainer runs FSDP only in GPU distributed "
                          "training; on CPUs use DDP (torchrun without train.fsdp)")
    if config.align.residual:
        num_layers, _ = model_dimensions(config.model)
        if not 1 <= config.align.target_layers[0] <= num_layers:
            raise ConfigError(f"align.target_layers {config.align.target_layers} out of range 1..{num_layers} "
                              f"for align.residual on this LLM ({num_layers} layers)")
    if config.model.preset in FAMILIES:
        get_family(config.model.preset).check_alignment(config)
    if not config.align.vra_loss:
        return
    num_layers, vision_hidden = model_dimensions(config.model)
    bad = [layer for layer in config.align.target_layers if not 0 <= layer <= num_layers]
    if bad:
        raise ConfigError(f"align.target_layers {bad} out of range 0..{num_layers} for this LLM "
                          f"({num_layers} layers); the paper's 16 of 32 is the middle")
    z_dim = teacher_feature_dim(config.align.vra_target, vision_hidden)
    if config.align.z_dim is not None and z_dim is not None and config.align.z_dim != z_dim:
        raise ConfigError(f"align.z_dim is {config.align.z_dim} but teacher {config.align.vra_target!r} "
                          f"gives {z_dim}-dim features; remove z_dim or set it to {z_dim}")


def build_trainer(config: ExperimentConfig) -> tuple[ViralTrainer, dict[str, Any]]:
    """Everything needed to train `config`: the trainer and the parts `export` needs (per model.connector)."""
    preflight(config)
    return get_connector(config.model.connector).load("build_trainer")(config)


def build_llava_trainer(config: ExperimentConfig) -> tuple[ViralTrainer, dict[str, Any]]:
    """`build_trainer` for `model.connector: llava` (image tokens in the LLM's input)."""
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if config.train.bf16 else torch.float32
    llava, processor = build_model(config.model, config.output_dir, data_path=config.data.path)
    family = family_of_model(llava)  # None: LLaVA; else the family's own images, collator and teacher grids
    if family is not None:
        family.check_alignment(config)
    teacher = None
    cache = None
    head = None
    if config.align.vra_loss:
        if family is not None:  # targets resampled to each image's own grid
            teacher = family.teacher(config.align.vra_target)
        elif config.align.teacher_cache:  # targets read from disk: no teacher in memory during training
            cache = open_training_cache(config, image_grid(llava), processor.image_processor)
        else:
            teacher = build_teacher(config.align.vra_target, image_grid(llava),
                                    vision_hidden_size=llava.config.vision_config.hidden_size)
        z_dim = check_alignment_config(config, llava, cache if cache is not None else teacher)
        torch.manual_seed(config.train.seed)
        head = AlignmentHead(config.align.target_layers, llava.config.text_config.hidden_size,
                             config.align.projector_dim, z_dim, config.align.use_multiple_projectors)
    residual = None
    if config.align.residual:
        torch.manual_seed(config.train.seed)
        residual = attach_residual(llava, config.align.residual, config.align.target_layers[0])
    if config.train.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mllm = configure_trainable(config, llava)
    model = ViralTrainingModel(mllm, llava, head, config.align.vra_weight, config.align.alignment_loss, residual)
    if dtype != torch.float32:
        model.to(dtype)
    if teacher is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        teacher.to(device=device, dtype=dtype)
    template = resolve_template(config.data.template, processor)
    teacher_inputs = None
    if cache is not None:
        def teacher_inputs(image, relpath):
            return {"teacher_features": cache.features(relpath)}  # [N, z_dim] float16
    elif teacher is not None and teacher.needs_pixels:
        def teacher_inputs(image, relpath):
            return {key: value[0] for key, value in teacher.inputs([image]).items()}  # e.g. [3, S, S]
    dataset = LlavaDataset(
        config.data.path, processor, template, image_folder=config.data.image_folder,
        image_aspect=config.data.image_aspect, model_max_length=config.data.model_max_length,
        num_image_tokens=num_image_tokens(llava) if family is None else 0, image_token_id=llava.config.image_token_id,
        teacher_inputs=teacher_inputs, skip_bad_records=config.data.skip_bad_records,
        image_inputs=family.image_inputs(processor) if family is not None else None,
    )
    if cache is not None:
        cache.check_covers(record["image"] for record in dataset.records if record.get("image") is not None)
    metrics_path = Path(config.output_dir) / METRICS_NAME
    trim_metrics(metrics_path, config.train.resume_from_checkpoint)
    trainer = ViralTrainer(
        model=model,
        args=training_arguments(config),
        train_dataset=dataset,
        data_collator=family.collator(processor, llava) if family else LlavaCollator(processor.tokenizer.pad_token_id),
        callbacks=[MetricsJsonlCallback(metrics_path)],
        teacher=teacher,
        projector_lr=config.train.projector_lr,
    )
    trainer.num_skipped = dataset.num_skipped
    if config.train.disable_tqdm:  # the Trainer prints every log row instead of a bar: neither is wanted
        trainer.remove_callback(PrinterCallback)
    trainer.add_callback(NonFiniteGuard(trainer, config.train.max_bad_steps))
    parts = {"llava": llava, "mllm": mllm, "processor": processor, "head": head, "template": template,
             "teacher": teacher, "teacher_cache": cache, "dataset": dataset, "residual": residual}
    return trainer, parts


def export(config: ExperimentConfig, parts: dict[str, Any], output_dir: str | Path | None = None) -> Path:
    """Write the trained model to `output_dir` (default `config.output_dir`) as its connector does."""
    out = Path(output_dir or config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return get_connector(config.model.connector).load("export")(config, parts, out)


def export_llava(config: ExperimentConfig, parts: dict[str, Any], output_dir: str | Path | None = None) -> Path:
    """Write the plain llava-hf checkpoint (LoRA merged), processor, alignment head and resolved config."""
    out = Path(output_dir or config.output_dir)
    mllm = parts["mllm"]
    llava = mllm.merge_and_unload() if hasattr(mllm, "merge_and_unload") else mllm
    llava.save_pretrained(out)
    processor = parts["processor"]
    if config.data.template != "plain":
        processor.chat_template = parts["template"]
    processor.save_pretrained(out)
    if parts["head"] is not None:
        head = parts["head"]
        tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
        save_file(tensors, out / ALIGNMENT_HEAD_NAME, metadata={"config": json.dumps(head.config)})
    if parts.get("residual") is not None:
        parts["residual"].save(out)  # residual.json (+ adapter weights): re-attached by Predictor
    config.save(out / RUN_CONFIG_NAME)
    return out


def load_alignment_head(path: str | Path) -> AlignmentHead:
    """The alignment head saved beside a checkpoint (for resuming or analysis)."""
    from safetensors import safe_open

    path = Path(path)
    file = path / ALIGNMENT_HEAD_NAME if path.is_dir() else path
    with safe_open(str(file), "pt") as handle:
        head_config = json.loads(handle.metadata()["config"])
    head = AlignmentHead(**head_config)
    head.load_state_dict(load_file(str(file)))
    return head


def train(config: ExperimentConfig, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train as `config` says and export the result to `config.output_dir`.

    `callbacks` are added to the Trainer; each is also given `parts` (llava, processor, ...) as `.parts`
    when it has that attribute, e.g. to evaluate the model being trained.
    """
    trainer, parts = build_trainer(config)
    for callback in callbacks or []:
        if hasattr(callback, "parts"):
            callback.parts = parts
        trainer.add_callback(callback)
    config.save(Path(config.output_dir) / RUN_CONFIG_NAME)
    remove_stale_staging(config.output_dir)
    sigterm = SigtermCheckpoint()
    trainer.add_callback(sigterm)
    resume = config.train.resume_from_checkpoint
    if resume and Path(resume).resolve().parent != Path(config.output_dir).resolve():
        logger.warning("resuming from %s, a checkpoint of another folder than %s: this run continues that one",
                       resume, config.output_dir)
    try:
        if resume and 0 < config.train.max_steps <= checkpoint_step(resume):
            # the run had finished its steps; the Trainer would take one more past max_steps (at lr 0) and save it
            logger.info("%s holds all %d steps: exporting it without training", resume, config.train.max_steps)
            trainer._load_from_checkpoint(resume)
        else:
            trainer.train(resume_from_checkpoint=resume)
    finally:
        sigterm.restore()
    if sigterm.step is not None:
        raise TrainingInterrupted(str(Path(config.output_dir) / f"checkpoint-{sigterm.step}"), sigterm.step)
    if trainer.num_skipped:
        logger.warning("skipped %d bad record(s) in all", trainer.num_skipped)
    return export(config, parts)
