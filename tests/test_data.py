"""LLaVA data loading: labels on assistant tokens only, image-token expansion, truncation, bad records."""

import json

import pytest
import torch
from PIL import Image

from viral.data.llava import IGNORE_INDEX, DataError, LlavaCollator, LlavaDataset
from viral.data.templates import get_template
from viral.model import load_llava


@pytest.fixture(scope="module")
def processor(tiny_llava_path):
    return load_llava(tiny_llava_path)[1]


def write_records(tmp_path, records, image_names=("ok.png",)):
    for name in image_names:
        Image.new("RGB", (40, 30), "red").save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def good_record(image="ok.png"):
    return {"id": "r", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nHow many red circles are there ?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Is there a blue square ?"}, {"from": "gpt", "value": "yes"}]}


def dataset(path, processor, **kwargs):
    kwargs.setdefault("num_image_tokens", 64)
    return LlavaDataset(path, processor, get_template("tiny"), **kwargs)


def test_labels_cover_exactly_the_assistant_answers(tmp_path, processor):
    ds = dataset(write_records(tmp_path, [good_record()]), processor)
    item = ds[0]
    tokenizer = processor.tokenizer
    supervised = item["labels"][item["labels"] != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "2 </s> yes </s>"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((item["input_ids"] == image_id).sum()) == 64
    assert item["pixel_values"].shape == (3, 64, 64)


def test_text_only_record_has_no_pixels_and_collates(tmp_path, processor):
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Is there a circle ?"},
                                              {"from": "gpt", "value": "no"}]}
    ds = dataset(write_records(tmp_path, [good_record(), text_only]), processor)
    assert "pixel_values" not in ds[1]
    batch = LlavaCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["pixel_values"].shape[0] == 1
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_truncation_never_cuts_image_tokens(tmp_path, processor):
    path = write_records(tmp_path, [good_record()])
    full = len(dataset(path, processor)[0]["input_ids"])
    item = dataset(path, processor, model_max_length=full - 3)[0]
    assert len(item["input_ids"]) == full - 3
    assert int((item["labels"] != IGNORE_INDEX).sum()) >= 1
    with pytest.raises(DataError, match="image's 64 tokens"):
        dataset(path, processor, model_max_length=40)[0]


BAD_CASES = [
    ("not-a-dict", "record"),
    ({"id": "x", "image": "ok.png"}, "conversations"),
    ({"id": "x", "conversations": []}, "conversations"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}, "conversations[0].from"),
    ({"id": "x", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
     "conversations[0].value"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]}, "conversations"),
    ({"id": "x", "image": "ok.png", "conversations": [{"from": "human", "value": "<image> <image> q"},
                                                      {"from": "gpt", "value": "a"}]}, "conversations"),
    ({"id": "x", "image": 5, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "image"),
]


@pytest.mark.parametrize("record,field", BAD_CASES)
def test_malformed_record_names_file_index_and_field(tmp_path, processor, record, field):
    path = write_records(tmp_path, [good_record(), record])
    with pytest.raises(DataError) as info:
        dataset(path, processor)
    assert info.value.index == 1 and info.value.field == field
    assert str(path) in str(info.value) and "record 1" in str(info.value)
    skipping = dataset(path, processor, skip_bad_records=True)
    assert len(skipping) == 1 and skipping.num_skipped == 1


@pytest.mark.parametrize("image_case", ["missing", "corrupt"])
def test_bad_image_raises_or_is_skipped_and_counted(tmp_path, processor, image_case):
    if image_case == "corrupt":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    path = write_records(tmp_path, [good_record(), good_record("bad.png")])
    ds = dataset(path, processor)
    with pytest.raises(DataError) as info:
        ds[1]
    assert info.value.index == 1 and info.value.field == "image" and "bad.png" in str(info.value)
    skipping = dataset(path, processor, skip_bad_records=True)
    batch = LlavaCollator(processor.tokenizer.pad_token_id)([skipping[0], skipping[1]])
    assert batch["num_skipped"] == 1 and batch["input_ids"].shape[0] == 1


def test_pad_aspect_pads_with_the_mean_colour(tmp_path, processor):
    path = write_records(tmp_path, [good_record()])
    padded = dataset(path, processor, image_aspect="pad")[0]["pixel_values"]
    squashed = dataset(path, processor, image_aspect="square")[0]["pixel_values"]
    # 40x30 red image padded to 40x40: the top rows are the mean colour, i.e. 0 after normalisation
    assert torch.allclose(padded[:, 0, :], torch.zeros_like(padded[:, 0, :]), atol=0.05)
    assert not torch.allclose(squashed[:, 0, :], torch.zeros_like(squashed[:, 0, :]), atol=0.05)
