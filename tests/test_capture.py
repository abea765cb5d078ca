"""Hook capture returns exactly what output_hidden_states would, at image positions only."""

import torch
from PIL import Image

from viral.align.capture import LayerCapture
from viral.infer import Predictor


def test_capture_equals_output_hidden_states(tiny_llava_path):
    predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu")
    model = predictor.model
    inputs = predictor.prepare([Image.new("RGB", (64, 48), "red"), None, Image.new("RGB", (64, 64), "blue")],
                               ["How many circles ?", "Is there a square ?", "What colour is the circle ?"])
    num_layers = model.config.text_config.num_hidden_layers
    layers = [0, num_layers // 2, num_layers]
    mask = inputs["input_ids"] == model.config.image_token_id
    capture = LayerCapture(model, layers)
    capture.arm(mask)
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True).hidden_states
    states = capture.collect()
    capture.remove()
    image_rows = mask.any(dim=1)
    assert image_rows.tolist() == [True, False, True]
    n = int(mask[0].sum())
    for layer in layers:
        expected = reference[layer][mask].view(2, n, -1)
        assert states[layer].shape == expected.shape
        torch.testing.assert_close(states[layer], expected)


def test_capture_keeps_nothing_when_disarmed(tiny_llava_path):
    predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu")
    capture = LayerCapture(predictor.model, [1])
    inputs = predictor.prepare([Image.new("RGB", (32, 32))], ["hi"])
    with torch.no_grad():
        predictor.model(**inputs)
    assert capture.collect() == {}
    capture.remove()


def test_capture_rejects_out_of_range_layer(tiny_llava_path):
    predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu")
    num_layers = predictor.model.config.text_config.num_hidden_layers
    try:
        LayerCapture(predictor.model, [num_layers + 1])
    except ValueError as err:
        assert "out of range" in str(err)
    else:
        raise AssertionError("an out-of-range layer was accepted")
