"""Residual baselines: P(z) or A(z) added to the image-token states after layer ℓ, nowhere else."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from viral.align.residual import attach_residual, load_residual
from viral.analysis.states import decoder_layers
from viral.infer import Predictor
from transformers import LlavaForConditionalGeneration


def _images(n):
    generator = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(64, 64, 3, generator=generator) * 255).byte().numpy()) for _ in range(n)]


@pytest.fixture()
def predictor(tiny_llava_path):
    return Predictor.from_pretrained(tiny_llava_path, device="cpu", dtype="float32")


def _layer_outputs(model, inputs):
    """Every decoder layer's full output (test-only hooks, registered after the residual's)."""
    outputs, handles = {}, []
    for i, block in enumerate(decoder_layers(model)):
        handles.append(block.register_forward_hook(
            lambda m, a, o, i=i: outputs.__setitem__(i + 1, (o[0] if isinstance(o, tuple) else o).detach())))
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("mode", ["post_projection", "pre_projection"])
def test_residual_changes_only_image_positions_after_layer(predictor, mode):
    model = predictor.model
    inputs = predictor.prepare(_images(2), ["Is there a yellow circle ?", "How many red circles are there ?"])
    mask = inputs["input_ids"] == model.config.image_token_id  # [B, T]
    before = _layer_outputs(model, inputs)
    residual = attach_residual(model, mode, layer=2)
    after = _layer_outputs(model, inputs)
    with torch.no_grad():
        z = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        term = model.model.multi_modal_projector(z) if mode == "post_projection" else residual.adapter(z)
    residual.remove()

    assert torch.equal(before[1], after[1])
    assert torch.equal(before[2][~mask], after[2][~mask])  # text positions of layer ℓ untouched
    assert torch.allclose(after[2][mask], before[2][mask] + term.reshape(-1, term.shape[-1]), atol=1e-5)
    assert not torch.allclose(before[3][~mask], after[3][~mask])  # later layers see the new image states
    assert torch.equal(_layer_outputs(model, inputs)[4], before[4])  # removed: back to the plain model


@pytest.mark.parametrize("mode", ["pre_projection"])  # post_projection trains in the Trainer test below
def test_residual_trains_and_reloads(tmp_path, tiny_llava_path, predictor, mode):
    model = predictor.model
    residual = attach_residual(model, mode, layer=1)
    inputs = predictor.prepare(_images(2), ["Is there a yellow circle ?", "What colour is the triangle ?"])
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    params = list(model.parameters()) + list(residual.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        if mode == "pre_projection":
            assert residual.adapter.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert predictor.generate(_images(1), ["Is there a yellow circle ?"], max_new_tokens=2)  # decoding steps pass

    model.save_pretrained(tmp_path)
    residual.save(tmp_path)
    with torch.no_grad():
        expected = model(**inputs).logits
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    plain = reloaded(**inputs).logits.detach()
    assert load_residual(reloaded, tmp_path) is not None
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-5)


def test_unknown_mode_and_layer_are_named(predictor):
    with pytest.raises(ValueError, match="unknown"):
        attach_residual(predictor.model, "sideways", 1)
    with pytest.raises(ValueError, match="out of range 1..4"):
        attach_residual(predictor.model, "post_projection", 0)


@pytest.mark.parametrize("mode", ["post_projection", "pre_projection"])
def test_residual_run_trains_exports_and_reloads_through_predictor(tmp_path, shapes_dir, mode):
    from conftest import train_overrides
    from viral.config import load_config
    from viral.train import train

    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, f"align.residual={mode}",
                                               "align.target_layers=[2]", "train.max_steps=2"))
    out = train(config)
    assert (out / "residual.json").is_file()
    assert (out / "residual.safetensors").is_file() == (mode == "pre_projection")
    predictor = Predictor.from_pretrained(str(out), device="cpu", dtype="float32")
    inputs = predictor.prepare(_images(1), ["Is there a yellow circle ?"])
    plain = LlavaForConditionalGeneration.from_pretrained(out)
    with torch.no_grad():
        assert not torch.allclose(predictor.model(**inputs).logits, plain(**inputs).logits, atol=1e-5)


def test_residual_config_errors_are_named():
    from viral.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="mutually exclusive"):
        load_config(None, ["align.residual=post_projection", "align.vra_loss=true", "align.target_layers=[2]"])
    with pytest.raises(ConfigError, match="choose post_projection"):
        load_config(None, ["align.residual=sideways", "align.target_layers=[2]"])
    with pytest.raises(ConfigError, match="one layer"):
        load_config(None, ["align.residual=pre_projection", "align.target_layers=[2,3]"])


def test_residual_layer_out_of_range_fails_before_loading(tmp_path, shapes_dir):
    from conftest import train_overrides
    from viral.config import ConfigError, load_config
    from viral.train import build_trainer

    config = load_config(None, train_overrides(tmp_path / "run", shapes_dir, "align.residual=post_projection",
                                               "align.target_layers=[9]"))
    with pytest.raises(ConfigError, match="out of range 1..4"):
        build_trainer(config)
