"""Chat templates: how a conversation becomes the prompt text the LLM reads.

Messages follow the transformers chat format: `{"role": "user" | "assistant", "content": ...}` where
content is a string or a list of parts (`{"type": "image"}`, `{"type": "text", "text": ...}`), the
format llava-hf processors use. The built-in templates below accept both, so the same messages work
with our templates and with any llava-hf checkpoint's own template.

- `vicuna_v1`: LLaVA-1.5's conversation format (system prompt, `USER: ... ASSISTANT: ...</s>`).
- `tiny`: the same without the system prompt (for the tiny preset's word-level tokenizer).
- `plain`: LLaVA's pre-training format: the image, then the caption, no roles.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"

# Renders one message's content: a string as-is, parts with the image placeholder then the text.
_CONTENT_MACRO = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def _roles_template(system: str | None) -> str:
    head = "{{- " + repr(system + " ") + " -}}" if system else ""  # repr: a Jinja literal even with quotes
    return (
        _CONTENT_MACRO
        + head
        + "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}{{- render(message['content']) -}}{{- ' ' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}{{- render(message['content']) -}}"
        "{{- eos_token -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


PLAIN_TEMPLATE = (
    _CONTENT_MACRO + "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- render(message['content']) -}}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES = {
    "vicuna_v1": _roles_template(VICUNA_SYSTEM),
    "tiny": _roles_template(None),
    "plain": PLAIN_TEMPLATE,
}


def get_template(name: str) -> str:
    """The Jinja chat template registered under `name`."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)} (or 'auto')")
    return TEMPLATES[name]


def resolve_template(name: str, processor) -> str:
    """`auto`: the processor's (or its tokenizer's) own chat template, else vicuna_v1; otherwise by name."""
    if name != "auto":
        return get_template(name)
    for owner in (processor, getattr(processor, "tokenizer", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str) and template:
            return template
    return get_template("vicuna_v1")


def user_message(text: str, with_image: bool) -> dict:
    """A user turn in the parts format, with the image placeholder first when there is an image."""
    parts = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """Render messages to text with `template` (no tokenization)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
