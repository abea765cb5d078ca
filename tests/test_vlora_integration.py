"""VLoRA inside the project: the `connector` config key, building from the llava presets, `Predictor`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from viral.config import ConfigError, load_config
from viral.infer import Predictor
from viral.model import load_llava
from viral.vlora import VLoRAConfig, VLoRAModel
from viral.vlora.build import vlora_from_llava
from viral.vlora.predict import VLoRAPredictor


def test_connector_key_and_checks():
    config = load_config(None, ["model.connector=vlora", "vlora_rank=8", "vlora_types=qv"])
    assert (config.model.connector, config.model.vlora_rank, config.model.vlora_types) == ("vlora", 8, "qv")
    with pytest.raises(ConfigError, match="connector"):
        load_config(None, ["model.connector=tokens"])
    with pytest.raises(ConfigError, match="vra_loss"):
        load_config(None, ["model.connector=vlora", "align.vra_loss=true"])
    with pytest.raises(ConfigError, match="vlora_types"):
        load_config(None, ["model.connector=vlora", "vlora_types=qx"])


def small_vlora(tiny_llava_path) -> tuple[VLoRAModel, torch.nn.Module, object]:
    llava, processor = load_llava(tiny_llava_path)
    reference, _ = load_llava(tiny_llava_path)
    config = VLoRAConfig(rank=4, alpha=8, hidden_size=32, depth=1, num_heads=2, skip_layers=2)
    return vlora_from_llava(llava, config).eval(), reference.eval(), processor


def test_vlora_from_llava_keeps_the_llm(tiny_llava_path):
    model, reference, _ = small_vlora(tiny_llava_path)
    assert model.vlora_config.drop_cls and model.vlora_config.vision_feature_layer == -2
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        # B = 0: with or without an image, the text logits are the llava model's on the same text.
        got = model(ids, pixel_values=torch.randn(1, 3, 64, 64)).logits
        torch.testing.assert_close(got, reference(input_ids=ids).logits)


def test_predictor_loads_a_vlora_checkpoint(tiny_llava_path, tmp_path):
    model, _, processor = small_vlora(tiny_llava_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for b in model.generator.lora_B.values():
            b.normal_(0, 1.0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    predictor = Predictor.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    assert isinstance(predictor, VLoRAPredictor)
    inputs = predictor.prepare([Image.new("RGB", (40, 30), "red"), None], ["How many red circles ?"] * 2)
    assert inputs["has_image"].tolist() == [True, False]
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert not (inputs["input_ids"] == image_token).any()  # the LLM reads no image token

    answers = predictor.generate([Image.new("RGB", (40, 30), "red"), None], ["How many red circles ?"] * 2,
                                 max_new_tokens=4, temperature=0.0)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # A text-only prompt meets the unchanged LLM: the llava predictor on the same LLM answers the same.
    llava_predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu", dtype="float32")
    [text_only] = llava_predictor.generate([None], ["How many red circles ?"], max_new_tokens=4, temperature=0.0)
    assert answers[1] == text_only


VLORA_TINY = ["model.connector=vlora", "vlora_rank=4", "vlora_hidden_size=32", "vlora_depth=1", "vlora_num_heads=2",
              "vlora_skip_layers=2"]


def test_shapes_pretrain_then_finetune_end_to_end(tmp_path, shapes_dir):
    from safetensors.torch import load_file

    from conftest import train_overrides
    from viral.cli import main
    from viral.train import build_trainer, export

    # Pre-training on captions: the generator learns, the LLM and the vision tower stay as built.
    pre_cfg = load_config(None, train_overrides(tmp_path / "pre", shapes_dir, *VLORA_TINY, "train.stage=pretrain",
                                                f"data.path={shapes_dir}/captions.json", "data.template=plain"))
    trainer, parts = build_trainer(pre_cfg)
    vlora = parts["vlora"]
    batch = next(iter(trainer.get_train_dataloader()))
    image_token = parts["processor"].tokenizer.convert_tokens_to_ids("<image>")
    assert batch["has_image"].all() and not (batch["input_ids"] == image_token).any()
    trainable = {n for n, p in vlora.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generator.") for n in trainable)
    llm_before = {k: v.clone() for k, v in vlora.llm.state_dict().items()}
    generator_before = {k: v.clone() for k, v in vlora.generator.state_dict().items()}
    trainer.train()
    assert all(torch.equal(llm_before[k], v) for k, v in vlora.llm.state_dict().items())
    assert not torch.equal(generator_before["lora_B.q"], vlora.generator.lora_B["q"])
    pre = export(pre_cfg, parts)
    assert VLoRAModel.is_checkpoint(pre)

    # Fine-tuning with LoRA from the pre-trained generator: generator and adapters learn.
    fin_cfg = load_config(None, train_overrides(tmp_path / "fin", shapes_dir, *VLORA_TINY, "train.stage=finetune",
                                                "train.finetune_mode=lora", "model.preset=llava",
                                                f"model.model_path={pre}"))
    trainer, parts = build_trainer(fin_cfg)
    vlora = parts["vlora"]
    saved = load_file(str(pre / "vlora_generator.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in vlora.generator.state_dict().items())
    trainable = {n for n, p in vlora.named_parameters() if p.requires_grad}
    assert any(n.startswith("generator.") for n in trainable) and any("lora_A" in n for n in trainable)
    assert not any(n.startswith("vision_tower.") for n in trainable)
    trainer.train()
    fin = export(fin_cfg, parts)
    rows = (tmp_path / "fin" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4
    assert not any("lora" in k for k in load_file(str(fin / "model.safetensors")))  # merged, plain LLM

    image = shapes_dir / "images" / "eval_000000.png"
    assert main(["infer", "--model-path", str(fin), "--image-path", str(image), "--prompt", "How many circles ?",
                 "--temperature", "0", "--max-new-tokens", "3"]) == 0
    results = tmp_path / "eval" / "results.json"
    assert main(["eval", "--model-path", str(fin), "--benchmark", "shapes", "--data", str(shapes_dir),
                 "--output", str(results), "--limit", "8", "--no-progress"]) == 0
    assert results.is_file() and (results.parent / "predictions.jsonl").is_file()
