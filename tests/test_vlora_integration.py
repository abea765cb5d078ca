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
