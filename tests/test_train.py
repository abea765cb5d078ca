"""Training with and without VIRAL on the tiny preset: what trains, what stays frozen, what is saved."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import train_overrides
from viral.config import load_config
from viral.train import ALIGNMENT_HEAD_NAME, METRICS_NAME, build_trainer, export, train


def one_step(trainer):
    """Run one optimisation step through the Trainer's own machinery."""
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return float(loss.detach())


def test_lora_keeps_alignment_and_vision_projectors_trainable(tmp_path, shapes_dir):
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.vra_loss=true",
                                               "align.vra_target=encoder", "align.target_layers=[2]"))
    trainer, parts = build_trainer(config)
    head, llava = parts["head"], parts["llava"]
    assert all(p.requires_grad for p in head.parameters())
    assert all(p.requires_grad for p in llava.model.multi_modal_projector.parameters())
    assert not any(p.requires_grad for p in llava.model.vision_tower.parameters())
    lora = [n for n, p in parts["mllm"].named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    vision_before = {n: p.detach().clone() for n, p in llava.model.vision_tower.named_parameters()}
    one_step(trainer)
    assert all(not torch.equal(before[n], p) for n, p in head.named_parameters())
    assert all(torch.equal(vision_before[n], p) for n, p in llava.model.vision_tower.named_parameters())


def test_dinov2_teacher_is_frozen_loaded_from_disk_and_outside_optimizer(tmp_path, shapes_dir, tiny_dinov2_path):
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.vra_loss=true",
                                               f"align.vra_target={tiny_dinov2_path}", "align.target_layers=[2]"))
    trainer, parts = build_trainer(config)
    teacher = parts["teacher"]
    on_disk = load_file(tiny_dinov2_path + "-reference.safetensors")  # what save_pretrained wrote
    loaded = teacher.model.state_dict()
    assert on_disk.keys() == loaded.keys()
    assert all(torch.equal(on_disk[k], loaded[k]) for k in on_disk)
    assert teacher.z_dim == 48 and not teacher.model.training
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in teacher.parameters())
    one_step(trainer)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(on_disk[k], v) for k, v in teacher.model.state_dict().items())
    trainer._save(str(tmp_path / "ckpt"))
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert saved and not any("teacher" in k or "dinov2" in k.lower() for k in saved)
    assert any(k.startswith("alignment_head.") for k in saved)


def test_vra_loss_decreases_over_a_few_steps(tmp_path, shapes_dir):
    config = load_config(None, train_overrides(
        tmp_path / "run", shapes_dir, "align.vra_loss=true", "align.vra_target=encoder",
        "align.target_layers=[2]", "train.max_steps=16", "train.lr_scheduler_type=constant",
        "align.projector_dim=64"))
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert len(rows) == 16 and all(r["loss_lm"] is not None and r["lr"] == 1e-3 for r in rows)
    first = sum(r["loss_vra"] for r in rows[:4]) / 4
    last = sum(r["loss_vra"] for r in rows[-4:]) / 4
    assert last < first - 0.05, (first, last)


def test_baseline_builds_no_head_and_runs_no_teacher(tmp_path, shapes_dir):
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.vra_loss=false"))
    trainer, parts = build_trainer(config)
    assert parts["head"] is None and parts["teacher"] is None and trainer.teacher is None
    assert trainer.model.alignment_head is None and trainer.model.capture is None
    batch = next(iter(trainer.get_train_dataloader()))
    assert "teacher_pixel_values" not in batch
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert rows and all(r["loss_vra"] is None for r in rows)
    out = export(config, parts)
    assert not (out / ALIGNMENT_HEAD_NAME).exists()


def test_checkpoint_loads_with_plain_transformers_in_fresh_process(tmp_path, shapes_dir):
    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.vra_loss=true",
                                               "align.vra_target=encoder", "align.target_layers=[1]",
                                               "train.max_steps=2"))
    out = train(config)
    assert (out / ALIGNMENT_HEAD_NAME).is_file() and (out / "viral_config.yaml").is_file()
    script = f"""
import sys, torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained({str(out)!r})
processor = AutoProcessor.from_pretrained({str(out)!r})
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "How many circles ?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=prompt, images=Image.new("RGB", (64, 64), "red"), return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
assert out.shape[1] > inputs["input_ids"].shape[1]
assert not any(name == "viral" or name.startswith("viral.") for name in sys.modules)
assert not any("lora" in k for k in model.state_dict())
print("OK")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("OK")
    from viral.cli import main

    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    assert main(["infer", "--model-path", str(out), "--image-path", str(tmp_path / "red.png"),
                 "--prompt", "How many circles ?", "--temperature", "0", "--max-new-tokens", "3"]) == 0


def test_official_config_json_loads_unchanged(tmp_path):
    official = {"vra_loss": True, "target_layers": [16], "vra_target": "dinov2-vit-b", "vra_weight": 0.5,
                "projector_dim": 2048, "z_dim": 768, "use_multiple_projectors": True}
    (tmp_path / "config.json").write_text(json.dumps(official))
    (tmp_path / "exp.yaml").write_text("align: config.json\n")
    config = load_config(tmp_path / "exp.yaml")
    for key, value in official.items():
        assert getattr(config.align, key) == value
    inline = load_config(None, [f"align={json.dumps(official)}"])
    assert inline.align == config.align


def test_out_of_range_layer_and_contradicting_z_dim_are_config_errors(tmp_path, shapes_dir):
    from viral.config import ConfigError

    bad_layer = load_config(None, train_overrides(tmp_path / "a", shapes_dir, "align.vra_loss=true",
                                                  "align.vra_target=encoder", "align.target_layers=[9]"))
    with pytest.raises(ConfigError, match="out of range 0..4"):
        build_trainer(bad_layer)
    bad_dim = load_config(None, train_overrides(tmp_path / "b", shapes_dir, "align.vra_loss=true",
                                                "align.vra_target=encoder", "align.target_layers=[2]",
                                                "align.z_dim=999"))
    with pytest.raises(ConfigError, match="z_dim is 999"):
        build_trainer(bad_dim)


def read_metrics(run):
    return [json.loads(line) for line in (Path(run) / METRICS_NAME).read_text().splitlines()]


def test_resume_continues_the_same_loss_curve_and_checkpointing_changes_nothing(tmp_path, shapes_dir):
    import shutil

    common = ["align.vra_loss=true", "align.vra_target=encoder", "align.target_layers=[2]",
              "train.max_steps=4", "train.save_steps=2"]
    train(load_config(None, train_overrides(tmp_path / "full", shapes_dir, *common)))
    full = read_metrics(tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")  # as if killed after step 4's log
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    train(load_config(None, train_overrides(tmp_path / "resumed", shapes_dir, *common,
                                            f"train.resume_from_checkpoint={tmp_path / 'resumed' / 'checkpoint-2'}")))
    assert read_metrics(tmp_path / "resumed") == full
    train(load_config(None, train_overrides(tmp_path / "gc", shapes_dir, *common,
                                            "train.gradient_checkpointing=true")))
    checkpointed = read_metrics(tmp_path / "gc")
    for a, b in zip(full, checkpointed):
        assert a["loss_lm"] == pytest.approx(b["loss_lm"], abs=1e-5)
        assert a["loss_vra"] == pytest.approx(b["loss_vra"], abs=1e-5)


def test_resuming_a_checkpoint_at_max_steps_exports_it_without_another_step(tmp_path, shapes_dir):
    common = ["align.vra_loss=true", "align.vra_target=encoder", "align.target_layers=[2]",
              "train.max_steps=2", "train.save_steps=2"]
    train(load_config(None, train_overrides(tmp_path / "run", shapes_dir, *common)))
    finished = load_file(tmp_path / "run" / "checkpoint-2" / "model.safetensors")
    (tmp_path / "run" / ALIGNMENT_HEAD_NAME).unlink()  # as if killed after the last checkpoint, before the export
    train(load_config(None, train_overrides(tmp_path / "run", shapes_dir, *common,
                                            f"train.resume_from_checkpoint={tmp_path / 'run' / 'checkpoint-2'}")))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert [row["step"] for row in read_metrics(tmp_path / "run")][-1] == 2
    head = load_file(tmp_path / "run" / ALIGNMENT_HEAD_NAME)  # exported from the checkpoint, not a fresh init
    assert head and all(torch.equal(value, finished[f"alignment_head.{key}"]) for key, value in head.items())


def test_llava_preset_swaps_in_a_trained_tower_of_the_same_grid(tmp_path, tiny_llava_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from viral.config import ConfigError, ModelConfig
    from viral.model import IMAGE_TOKEN, build_model

    def save_tower(folder, hidden, image_size, patch_size):
        torch.manual_seed(1)
        tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                                 num_attention_heads=4, image_size=image_size, patch_size=patch_size))
        tower.save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                           image_mean=[0.1, 0.2, 0.3]).save_pretrained(folder)
        return tower

    # the tiny checkpoint's tower: 64 wide, 64-pixel images in 8-pixel patches; this one: 96 pixels in 12-pixel
    # patches, the same 8 x 8 grid, so the projector reads it
    tower = save_tower(tmp_path / "tower", 64, 96, 12)
    model, processor = build_model(ModelConfig(preset="llava", model_path=tiny_llava_path,
                                               vision_tower_path=str(tmp_path / "tower")), tmp_path / "run")
    swapped = model.model.vision_tower.state_dict()
    assert all(torch.equal(swapped[k], v) for k, v in tower.state_dict().items())
    assert list(processor.image_processor.image_mean) == [0.1, 0.2, 0.3]
    inputs = processor(images=[Image.new("RGB", (120, 90), "red")], text=[f"{IMAGE_TOKEN}\nhello"],
                       return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (96, 96)
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 64
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
    # the checkpoint without the swap keeps its own tower
    plain, _ = build_model(ModelConfig(preset="llava", model_path=tiny_llava_path), tmp_path / "run")
    assert not torch.equal(plain.model.vision_tower.embeddings.patch_embedding.weight,
                           tower.embeddings.patch_embedding.weight)

    save_tower(tmp_path / "narrow", 32, 64, 8)
    with pytest.raises(ConfigError, match="32 wide.*64 wide"):
        build_model(ModelConfig(preset="llava", model_path=tiny_llava_path, vision_tower_path=str(tmp_path / "narrow")),
                    tmp_path / "run")
    # the attention implementation asked for reaches the swapped-in tower as well as the checkpoint
    eager, _ = build_model(ModelConfig(preset="llava", model_path=tiny_llava_path, attn_implementation="eager",
                                       vision_tower_path=str(tmp_path / "tower")), tmp_path / "run")
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    assert eager.model.language_model.config._attn_implementation == "eager"


def test_compose_builds_llava_from_a_saved_llm_and_tower_with_the_attention_asked_for(tmp_path):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                              LlamaForCausalLM)

    from viral.config import ModelConfig
    from viral.model import IMAGE_TOKEN, build_model, train_word_tokenizer

    tokenizer = train_word_tokenizer(["how many circles are there", "two red circles"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=8)).save_pretrained(tmp_path / "tower")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "tower")
    for attention in ("eager", "sdpa"):
        model, processor = build_model(ModelConfig(preset="compose", llm=str(tmp_path / "llm"),
                                                   vision_tower=str(tmp_path / "tower"), attn_implementation=attention),
                                       tmp_path / "run")
        assert model.model.language_model.config._attn_implementation == attention
        assert model.model.vision_tower.config._attn_implementation == attention
    inputs = processor(images=[Image.new("RGB", (40, 30), "red")], text=[f"{IMAGE_TOKEN}\nhow many circles"],
                       return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 16  # a 4 x 4 grid
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_vision_tower_path_is_refused_where_it_would_be_ignored(tmp_path):
    from viral.config import ConfigError

    with pytest.raises(ConfigError, match="vision_tower_path.*compose.*model.vision_tower"):
        load_config(None, ["model.preset=compose", "model.llm=x", "model.vision_tower=y",
                           f"model.vision_tower_path={tmp_path}"])


def test_kept_cls_token_is_an_image_token_that_viral_does_not_align(tmp_path, shapes_dir):
    """vision_feature_select_strategy "full": CLS is the first of grid * grid + 1 image tokens; the alignment
    reads the patch tokens after it, against the teacher's grid (here the encoder's own patch features)."""
    config = load_config(None, train_overrides(
        tmp_path / "run", shapes_dir, "model.vision_feature_select_strategy=full", "align.vra_loss=true",
        "align.vra_target=encoder", "align.target_layers=[2]"))
    trainer, parts = build_trainer(config)
    llava = parts["llava"]
    tokens = llava.config.image_seq_length + 1  # 8 x 8 patches and CLS
    batch = next(iter(trainer.get_train_dataloader()))
    image = batch["input_ids"] == llava.config.image_token_index
    assert image.sum(dim=1).tolist() == [tokens] * len(image)
    armed = []
    arm = trainer.model.capture.arm
    trainer.model.capture.arm = lambda mask, targets: (armed.append((mask.clone(), targets)), arm(mask, targets))
    outputs = trainer.model(**{k: v for k, v in batch.items() if k != "record_index"})
    mask, targets = armed[-1]
    first = image.float().argmax(dim=1)  # each sample's CLS position
    assert mask.sum(dim=1).tolist() == [tokens - 1] * len(image)
    assert not mask[torch.arange(len(image)), first].any() and mask[torch.arange(len(image)), first + 1].all()
    assert torch.isfinite(outputs["loss"]) and int(outputs["vra_count"]) == len(image)
    with pytest.raises(Exception, match="vision_feature_select_strategy"):
        load_config(None, ["model.vision_feature_select_strategy=cls"])
