"""Property-based (1000 examples): malformed records and odd images either load and collate correctly or
raise DataError naming the file, record and field."""

import functools
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from viral.data.llava import IGNORE_INDEX, DataError, LlavaCollator, LlavaDataset
from viral.data.templates import get_template
from viral.model import load_llava

N_IMAGE_TOKENS = 64


@pytest.fixture(scope="module")
def processor(tiny_llava_path):
    return load_llava(tiny_llava_path)[1]


@functools.lru_cache(maxsize=None)
def image_bytes(kind: str, size: tuple[int, int], mode: str) -> bytes:
    if kind == "zero-byte":
        return b""
    image = Image.new(mode, size, 128 if mode == "L" else None)
    buffer = io.BytesIO()
    fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "truncated": "PNG"}[kind]
    if mode == "CMYK" and fmt != "JPEG":
        fmt = "JPEG"  # CMYK files in the wild are JPEGs
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError):  # a mode the format cannot hold (e.g. RGBA as JPEG): store it as RGB
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=fmt)
    data = buffer.getvalue()
    return data[: len(data) // 2] if kind == "truncated" else data


texts = st.one_of(st.text(max_size=40), st.just("<image>\nHow many circles ?"), st.just("<image> <image>"),
                  st.just("word " * 5000))
values = st.one_of(texts, st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.booleans())
turns = st.one_of(
    st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "bot", 3]), "value": values}),
    st.dictionaries(st.sampled_from(["from", "value", "extra"]), values, max_size=3),
    values,
)
records = st.one_of(
    st.fixed_dictionaries({"id": values, "image": st.one_of(st.just("img.bin"), st.none(), values),
                           "conversations": st.lists(turns, max_size=4)}),
    st.fixed_dictionaries({"id": st.just("ok"), "image": st.just("img.bin"), "conversations": st.just([
        {"from": "human", "value": "<image>\nHow many circles ?"}, {"from": "gpt", "value": "2"}])}),
    st.dictionaries(st.sampled_from(["id", "image", "conversations"]), values, max_size=3),
    values,
)
images = st.tuples(st.sampled_from(["png", "jpeg", "webp", "truncated", "zero-byte"]),
                   st.sampled_from([(1, 1), (10000, 10), (10, 10000), (37, 23), (64, 64)]),
                   st.sampled_from(["RGB", "L", "RGBA", "CMYK", "P"]))


def check_item(item, has_image: bool) -> None:
    ids, labels = item["input_ids"], item["labels"]
    assert ids.shape == labels.shape and ids.dim() == 1
    assert int((labels != IGNORE_INDEX).sum()) >= 1
    if has_image:
        assert item["pixel_values"].shape == (3, 64, 64) and bool(item["pixel_values"].isfinite().all())
    else:
        assert "pixel_values" not in item


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.slow  # ~1000 examples; CI runs it (`make test` runs every test)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(record=records, image=images, encoding_error=st.booleans())
def test_loader_loads_or_names_the_record(processor, folder, record, image, encoding_error):
    kind, size, mode = image
    (folder / "img.bin").write_bytes(image_bytes(kind, size, mode))
    payload = json.dumps([record]).encode()
    if encoding_error:
        payload = payload[:-1] + b'\xff\xfe]'
    (folder / "data.json").write_bytes(payload)
    try:
        dataset = LlavaDataset(folder / "data.json", processor, get_template("tiny"),
                               num_image_tokens=N_IMAGE_TOKENS, model_max_length=512)
        item = dataset[0]
    except DataError as err:
        assert str(folder / "data.json") in str(err)
        assert err.index in (0, None) and err.field
        if err.index is None:  # only file-level problems lack a record index
            assert err.field in ("path", "text")
        return
    check_item(item, has_image=dataset.records[0].get("image") is not None)
    expected_tokens = N_IMAGE_TOKENS if dataset.records[0].get("image") is not None else 0
    token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((item["input_ids"] == token_id).sum()) == expected_tokens
    batch = LlavaCollator(processor.tokenizer.pad_token_id)([item, item])  # what the Trainer's loader does
    assert batch["input_ids"].shape == batch["labels"].shape == (2, item["input_ids"].shape[0])
    assert ("pixel_values" in batch) == (expected_tokens > 0)
