"""LLaVA instruction data -> model inputs: token ids, labels on assistant tokens only, pixels.

Records follow `llava_v1_5_mix665k.json`: `{"id", "image"?, "conversations": [{"from": "human"|"gpt",
"value": "<image>\\n..."}, ...]}`, as a JSON list or JSONL. Images are read lazily from
`image_folder`. Each record is checked when the dataset opens; a malformed record raises a `DataError`
naming the file, the record index and the field, or with `skip_bad_records` is dropped and counted.
An image that cannot be read raises the same error when the record is loaded, or with
`skip_bad_records` is dropped from its batch and counted in `num_skipped`.

The conversation is rendered once with a chat template and split into pieces (prompt, answer, prompt,
answer...) by locating each answer in the text (two renders per assistant turn where that is not safe),
each piece tokenized separately (the first alone, the others in one batched call) so that labels mark
exactly the assistant's answers. The single `<image>` token is then expanded to one token per image
patch; truncation to `model_max_length` never cuts an image's tokens. A model family whose images have
their own token counts (Qwen2-VL) passes `image_inputs`: image -> (its model inputs, its number of image
tokens).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from torch.utils.data import Dataset

from viral.data.images import ImageLoadError, apply_aspect, load_image
from viral.data.templates import IMAGE_TOKEN, render, user_message
from viral.errors import UserError

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class DataError(UserError, ValueError):
    """A training record or its image is unusable; says which file, record and field."""

    def __init__(self, file: str | Path, index: int | None, field: str, message: str):
        self.file, self.index, self.field = str(file), index, field
        where = f"{file}" + (f", record {index}" if index is not None else "") + f", field '{field}'"
        super().__init__(f"{where}: {message}")


def read_records(path: str | Path) -> list[Any]:
    """The records of a LLaVA JSON list or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "path", "data file does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n")
        index = line if path.suffix == ".jsonl" else None
        raise DataError(path, index, "text", f"not UTF-8 at byte {err.start} (line {line + 1})") from err
    try:
        if path.suffix == ".jsonl":
            records = []
            for line_number, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(path, len(records), "record", f"line {line_number + 1} is not JSON: {err}") from err
            return records
        records = json.loads(text)
    except RecursionError as err:
        raise DataError(path, None, "path", "JSON nested too deeply") from err
    except json.JSONDecodeError as err:
        raise DataError(path, None, "path", f"not valid JSON: {err}") from err
    if not isinstance(records, list):
        raise DataError(path, None, "path", "must hold a JSON list of records")
    return records


def to_messages(record: Any, file: str | Path, index: int) -> list[dict]:
    """Check one record and convert its conversation to chat messages (content as parts)."""
    if not isinstance(record, dict):
        raise DataError(file, index, "record", f"must be an object, got {type(record).__name__}")
    image = record.get("image")
    if image is not None and not (isinstance(image, str) and image.strip()):
        raise DataError(file, index, "image", f"must be a non-empty path string, got {image!r}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(file, index, "conversations", "must be a non-empty list of turns")
    messages, image_tokens = [], 0
    for t, turn in enumerate(turns):
        field = f"conversations[{t}]"
        if not isinstance(turn, dict):
            raise DataError(file, index, field, "must be an object with 'from' and 'value'")
        role = ROLES.get(turn.get("from")) if isinstance(turn.get("from"), str) else None
        if role is None:
            raise DataError(file, index, f"{field}.from", f"must be 'human' or 'gpt', got {turn.get('from')!r}")
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(file, index, f"{field}.from", f"turns must alternate human, gpt, ...; expected {expected}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise DataError(file, index, f"{field}.value", f"must be a string, got {type(value).__name__}")
        n = value.count(IMAGE_TOKEN)
        if n and role == "assistant":
            raise DataError(file, index, f"{field}.value", "an assistant turn may not hold <image>")
        image_tokens += n
        if n:
            before, after = value.split(IMAGE_TOKEN, 1)
            parts = ([{"type": "text", "text": before.strip()}] if before.strip() else [])
            parts += [{"type": "image"}, {"type": "text", "text": after.lstrip("\n").strip()}]
            messages.append({"role": role, "content": parts})
        else:
            messages.append({"role": role, "content": value if role == "assistant" else
                             [{"type": "text", "text": value.strip()}]})
    if messages[-1]["role"] != "assistant":
        raise DataError(file, index, "conversations", "must end with a gpt turn (nothing to learn otherwise)")
    if image_tokens > 1:
        raise DataError(file, index, "conversations", f"holds {image_tokens} <image> tokens; one image per record")
    if image is None and image_tokens:
        raise DataError(file, index, "conversations", "holds <image> but the record has no 'image'")
    if image is not None and not image_tokens:  # LLaVA puts the image before the first question
        messages[0] = {"role": "user", "content": [{"type": "image"}] + messages[0]["content"]}
    return messages


@dataclass(frozen=True)
class _AnswerWrapping:
    """How a template renders an assistant answer after the conversation so far:
    `generation_prompt` + `lead` + answer + `trail` (e.g. vicuna: 'ASSISTANT:' + ' ' + answer + '</s>')."""

    generation_prompt: str
    lead: str
    trail: str


_PROBE_ANSWER = "probe-answer-7f3c"
# tokenizer -> template -> its answer wrapping, or None where only the two-renders-per-turn path is safe
_WRAPPINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces_by_turn(tokenizer, template: str, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_answer) pieces from two renders per assistant turn: the prompt before it, then the full text."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:j], add_generation_prompt=True)
        full = render(tokenizer, template, messages[: j + 1], add_generation_prompt=False)
        if not full.startswith(prompt) or len(prompt) < cursor:
            raise ValueError("the chat template is not prefix-stable; cannot find the assistant's tokens")
        pieces += [(prompt[cursor:], False), (full[len(prompt):], True)]
        cursor = len(full)
    return pieces


def _pieces_from_one_render(
    tokenizer, template: str, messages: list[dict], wrapping: _AnswerWrapping
) -> list[tuple[str, bool]] | None:
    """The same pieces as `_pieces_by_turn` from one render of the whole conversation, or None when the
    answers cannot be located for sure. Each answer is found as generation prompt + lead + answer + trail:
    the k-th occurrence of generation prompt + lead (or, when that is empty, of the trail) starts (ends)
    the k-th answer, which holds only if it occurs exactly once per answer; the last answer ends the text."""
    answers = [message["content"] for message in messages if message["role"] == "assistant"]
    if not answers or messages[-1]["role"] != "assistant" or not all(isinstance(a, str) for a in answers):
        return None
    marker = wrapping.generation_prompt + wrapping.lead
    delimiter = marker or wrapping.trail
    if not delimiter and len(answers) > 1:
        return None
    full = render(tokenizer, template, messages, add_generation_prompt=False)
    if delimiter and full.count(delimiter) != len(answers):
        return None  # the delimiter also occurs in a user's text or an answer: positions are ambiguous
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for k, answer in enumerate(answers):
        anchor = marker + answer + wrapping.trail
        if k == len(answers) - 1:
            found = len(full) - len(anchor)
        elif marker:
            found = full.find(marker, cursor)
        else:
            found = full.find(wrapping.trail, cursor) + len(wrapping.trail) - len(anchor)
        if found < cursor or not full.startswith(anchor, found):
            return None
        start, end = found + len(wrapping.generation_prompt), found + len(anchor)
        pieces += [(full[cursor:start], False), (full[start:end], True)]
        cursor = end
    return pieces


def _answer_wrapping(tokenizer, template: str) -> _AnswerWrapping | None:
    """The template's answer wrapping, learnt once per (tokenizer, template) from a probe conversation and
    kept only if one render agrees with two renders per turn on a two-turn probe; None otherwise."""
    per_template = _WRAPPINGS.setdefault(tokenizer, {})
    if template not in per_template:
        per_template[template] = _learn_answer_wrapping(tokenizer, template)
    return per_template[template]


def _learn_answer_wrapping(tokenizer, template: str) -> _AnswerWrapping | None:
    question = user_message("probe question", with_image=False)
    two_turns = [user_message("probe one", with_image=True), {"role": "assistant", "content": "probe two"},
                 user_message("probe three", with_image=False), {"role": "assistant", "content": "probe four"}]
    try:
        before = render(tokenizer, template, [question], add_generation_prompt=False)
        prompt = render(tokenizer, template, [question], add_generation_prompt=True)
        full = render(tokenizer, template, [question, {"role": "assistant", "content": _PROBE_ANSWER}],
                      add_generation_prompt=False)
        if not (prompt.startswith(before) and full.startswith(prompt)) or full.count(_PROBE_ANSWER) != 1:
            return None
        lead, trail = full[len(prompt):].split(_PROBE_ANSWER)
        wrapping = _AnswerWrapping(prompt[len(before):], lead, trail)
        agrees = (_pieces_from_one_render(tokenizer, template, two_turns, wrapping)
                  == _pieces_by_turn(tokenizer, template, two_turns))
    except (ValueError, TemplateError):  # not prefix-stable, or the template rejects the probe
        return None
    return wrapping if agrees else None


def tokenize_conversation(tokenizer, template: str, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX except on assistant answers) of a rendered conversation.

    The conversation is rendered once and the answers located in the text; where that cannot be done for
    sure (see `_pieces_from_one_render`), it is rendered twice per assistant turn instead. Either way the
    pieces (prompt, answer, prompt, answer...) are tokenized separately, so no token straddles a piece
    boundary: the first piece in a call of its own with special tokens (none if it is empty), every other
    non-empty piece in one batched call without them."""
    wrapping = _answer_wrapping(tokenizer, template)
    pieces = None if wrapping is None else _pieces_from_one_render(tokenizer, template, messages, wrapping)
    if pieces is None:
        pieces = _pieces_by_turn(tokenizer, template, messages)
    tokenized: list[tuple[list[int], bool]] = []
    if pieces and pieces[0][0]:
        tokenized.append((tokenizer(pieces[0][0], add_special_tokens=True)["input_ids"], pieces[0][1]))
    rest = [(text, is_target) for text, is_target in pieces[1:] if text]
    if rest:
        rest_ids = tokenizer([text for text, _ in rest], add_special_tokens=False)["input_ids"]
        tokenized += [(piece_ids, is_target) for piece_ids, (_, is_target) in zip(rest_ids, rest, strict=True)]
    ids: list[int] = []
    labels: list[int] = []
    for piece_ids, is_target in tokenized:
        ids += piece_ids
        labels += piece_ids if is_target else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels


class LlavaDataset(Dataset):
    """Lazy LLaVA-format dataset; items are dicts of tensors for `LlavaCollator`."""

    def __init__(
        self,
        path: str | Path,
        processor,
        template: str,
        image_folder: str | Path | None = None,
        image_aspect: str = "pad",
        model_max_length: int = 2048,
        num_image_tokens: int = 576,
        image_token_id: int | None = None,
        teacher_inputs: Callable[[Any, str], dict[str, torch.Tensor]] | None = None,
        skip_bad_records: bool = False,
        image_inputs: Callable[[Any], tuple[dict[str, torch.Tensor], int]] | None = None,
    ):
        self.path = Path(path)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = template
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.image_aspect = image_aspect
        self.model_max_length = model_max_length
        self.num_image_tokens = num_image_tokens
        self.image_token_id = (
            image_token_id if image_token_id is not None else self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        )
        self.teacher_inputs = teacher_inputs
        self.image_inputs = image_inputs
        self.skip_bad_records = skip_bad_records
        self.records: list[dict] = []
        self.messages: list[list[dict]] = []
        self.indices: list[int] = []  # index of each kept record in the file
        self.num_skipped = 0
        for index, record in enumerate(read_records(self.path)):
            try:
                messages = to_messages(record, self.path, index)
            except DataError as err:
                if not skip_bad_records:
                    raise
                self.num_skipped += 1
                logger.warning("skipping bad record: %s", err)
                continue
            self.records.append(record)
            self.messages.append(messages)
            self.indices.append(index)
        if self.num_skipped:
            logger.warning("skipped %d bad record(s) of %s", self.num_skipped, self.path)
        if not self.records:
            raise DataError(self.path, None, "path", "holds no usable record")

    def __len__(self) -> int:
        return len(self.records)

    def _tokens(self, i: int, num_image_tokens: int | None = None) -> tuple[list[int], list[int]]:
        index = self.indices[i]
        ids, labels = tokenize_conversation(self.tokenizer, self.template, self.messages[i])
        positions = [p for p, t in enumerate(ids) if t == self.image_token_id]
        if positions:  # expand the single <image> token to one token per patch
            p = positions[0]
            n = self.num_image_tokens if num_image_tokens is None else num_image_tokens
            ids = ids[:p] + [self.image_token_id] * n + ids[p + 1:]
            labels = labels[:p] + [IGNORE_INDEX] * n + labels[p + 1:]
            if p + n > self.model_max_length:
                raise DataError(self.path, index, "conversations",
                                f"the image's {n} tokens end at position {p + n}, beyond model_max_length "
                                f"{self.model_max_length}")
        ids, labels = ids[: self.model_max_length], labels[: self.model_max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError(self.path, index, "conversations",
                            f"no assistant token within model_max_length {self.model_max_length}")
        return ids, labels

    def load(self, i: int) -> dict[str, Any]:
        """Item `i`, raising DataError when its image or text is unusable."""
        record, index = self.records[i], self.indices[i]
        item: dict[str, Any] = {"record_index": index}
        num_image_tokens = None  # the fixed self.num_image_tokens unless image_inputs says otherwise
        if record.get("image") is not None:
            image_path = self.image_folder / record["image"]
            try:
                image = load_image(image_path)
            except ImageLoadError as err:
                raise DataError(self.path, index, "image", str(err)) from err
            image = apply_aspect(image, self.image_aspect, self.processor.image_processor)
            if self.image_inputs is not None:
                inputs, num_image_tokens = self.image_inputs(image)
                item.update(inputs)
            else:
                pixels = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
                item["pixel_values"] = torch.as_tensor(pixels[0])  # [3, H, W]
            if self.teacher_inputs is not None:
                item.update(self.teacher_inputs(image, record["image"]))
        ids, labels = self._tokens(i, num_image_tokens)
        item["input_ids"] = torch.tensor(ids, dtype=torch.long)
        item["labels"] = torch.tensor(labels, dtype=torch.long)
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self.load(i)
        except DataError as err:
            if not self.skip_bad_records:
                raise
            logger.warning("skipping bad record: %s", err)
            return {"skipped": True, "record_index": self.indices[i]}


class LlavaCollator:
    """Pads a list of items into a batch; image tensors are stacked for the samples that have one."""

    IMAGE_KEYS = ("pixel_values", "teacher_pixel_values", "teacher_image_sizes", "teacher_features")

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [item for item in items if not item.get("skipped")]
        num_skipped = len(items) - len(kept)
        if not kept:
            indices = [item["record_index"] for item in items]
            raise DataError("<batch>", None, "records", f"every record of a batch was bad: {indices}")
        length = max(len(item["input_ids"]) for item in kept)
        input_ids = torch.full((len(kept), length), self.pad_token_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(kept), length), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(kept), length), dtype=torch.long)  # [B, T]
        for row, item in enumerate(kept):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "record_index": [item["record_index"] for item in kept],
            "num_skipped": num_skipped,
        }
        for key in self.IMAGE_KEYS:
            tensors = [item[key] for item in kept if key in item]
            if tensors:
                batch[key] = torch.stack(tensors)  # [B_img, ...]
        return batch
