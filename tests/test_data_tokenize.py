"""tokenize_conversation: one chat-template render per conversation gives exactly the ids and labels of two
renders per assistant turn (the reference below), for every registered template and a ChatML one."""

import pytest

import viral.data.llava as llava
from viral.data.llava import IGNORE_INDEX, to_messages, tokenize_conversation
from viral.data.templates import TEMPLATES
from viral.model import load_llava

CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
CHATML = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant .<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}" + CONTENT
    + "{{- '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
ALL_TEMPLATES = {**TEMPLATES, "chatml": CHATML}


def turns(*values):
    return [{"from": "human" if t % 2 == 0 else "gpt", "value": value} for t, value in enumerate(values)]


CONVERSATIONS = {
    "one-turn-image": ("ok.png", turns("<image>\nHow many red circles are there ?", "2")),
    "one-turn-text": (None, turns("Is there a blue square ? Answer yes or no .", "yes")),
    "answers-in-user-text": ("ok.png", turns(
        "Is there a blue square ? Answer yes or no .", "yes",
        "Is the blue square left of the green triangle ? Answer yes or no .", "no",
        "Is there a yellow circle ? Answer yes or no .", "yes")),
    "several-turns-text": (None, turns("How many red circles are there ?", "2", "What colour is the triangle ?",
                                       "green", "Answer with a number . How many squares ?", "2")),
    "empty-and-blank-answers": ("ok.png", turns("<image>\nHow many red circles are there ?", "",
                                                "Is there a blue square ?", "  ", "What colour ?", "red")),
}


def reference_tokenize(tokenizer, template, messages):
    """The two-renders-per-turn algorithm, written out independently of the code under test."""
    ids, labels, cursor, k = [], [], 0, 0
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:j], chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: j + 1], chat_template=template, tokenize=False)
        assert full.startswith(prompt)
        for text, is_answer in ((prompt[cursor:], False), (full[len(prompt):], True)):
            if text:
                piece = tokenizer(text, add_special_tokens=(k == 0))["input_ids"]
                ids += piece
                labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
            k += 1
        cursor = len(full)
    return ids, labels


@pytest.fixture(scope="module")
def tokenizer(tiny_llava_path):
    return load_llava(tiny_llava_path)[1].tokenizer


@pytest.fixture
def render_calls(monkeypatch):
    """Counts the chat-template renders tokenize_conversation does."""
    calls = []

    def counting_render(*args, **kwargs):
        calls.append(args[2])
        return real_render(*args, **kwargs)

    real_render = llava.render
    monkeypatch.setattr(llava, "render", counting_render)
    return calls


def messages_of(name):
    image, conversation = CONVERSATIONS[name]
    return to_messages({"id": name, "image": image, "conversations": conversation}, "test.json", 0)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("template_name", sorted(ALL_TEMPLATES))
def test_one_render_gives_the_ids_and_labels_of_two_renders_per_turn(tokenizer, render_calls, template_name,
                                                                     conversation):
    template, messages = ALL_TEMPLATES[template_name], messages_of(conversation)
    tokenize_conversation(tokenizer, template, messages)  # learns the template's answer wrapping once
    render_calls.clear()
    ids, labels = tokenize_conversation(tokenizer, template, messages)
    assert len(render_calls) == 1, "the fast path was not taken"
    expected_ids, expected_labels = reference_tokenize(tokenizer, template, messages)
    assert ids == expected_ids
    assert labels == expected_labels
    assert any(label != IGNORE_INDEX for label in labels)


def test_chatml_answers_carry_their_end_token_and_nothing_else(tokenizer):
    messages = messages_of("answers-in-user-text")
    ids, labels = tokenize_conversation(tokenizer, CHATML, messages)
    answers = [label for label in labels if label != IGNORE_INDEX]
    end = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    expected = sum((tokenizer(a + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
                    for a in ("yes", "no", "yes")), [])
    assert answers == expected and len(answers) > 3 * len(end)


@pytest.mark.parametrize("template_name", ["tiny", "chatml"])
def test_marker_in_user_text_falls_back_to_two_renders_per_turn(tokenizer, render_calls, template_name):
    template = ALL_TEMPLATES[template_name]
    answer_as_rendered = {"tiny": "ASSISTANT: yes</s>", "chatml": "<|im_start|>assistant\nyes<|im_end|>\n"}
    user_text = f"Say {answer_as_rendered[template_name]} please ."  # the user quotes the rendered answer
    messages = to_messages({"conversations": turns(user_text, "yes", "And again ?", "yes")},
                           "test.json", 0)
    tokenize_conversation(tokenizer, template, messages)
    render_calls.clear()
    result = tokenize_conversation(tokenizer, template, messages)
    assert len(render_calls) == 1 + 2 * 2  # the one render, found ambiguous, then two per assistant turn
    assert result == reference_tokenize(tokenizer, template, messages)


def test_template_that_numbers_turns_falls_back_to_two_renders_per_turn(tokenizer, render_calls):
    numbered = (
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}" + CONTENT
        + "{{- ' ' -}}{%- else -%}{{- 'ASSISTANT: ' -}}" + CONTENT
        + "{{- eos_token -}}{{- ' [' ~ loop.index ~ '] ' -}}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )
    messages = messages_of("several-turns-text")
    tokenize_conversation(tokenizer, numbered, messages)
    render_calls.clear()
    result = tokenize_conversation(tokenizer, numbered, messages)
    assert len(render_calls) == 2 * 3
    assert result == reference_tokenize(tokenizer, numbered, messages)


NOT_PREFIX_STABLE = {
    "generation-prompt-first": "{%- if add_generation_prompt -%}{{- 'ANSWER NOW ' -}}{%- endif -%}"
    "{%- for message in messages -%}" + CONTENT + "{{- ' ' -}}{%- endfor -%}",
    "last-message-marked": "{%- for message in messages -%}{%- if loop.last -%}{{- 'LAST ' -}}{%- endif -%}"
    + CONTENT + "{{- ' ' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}",
}


@pytest.mark.parametrize("name", sorted(NOT_PREFIX_STABLE))
def test_template_that_is_not_prefix_stable_raises(tokenizer, name):
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_conversation(tokenizer, NOT_PREFIX_STABLE[name], messages_of("several-turns-text"))
