"""The chat template an adapter is trained (and later evaluated and chatted) with.

A model's own template is used when it has one. A base model without one (gemma3-270m's GGUF ships none) gets the
kobench fallback below, which is saved with the adapter's tokenizer: the runner and `kobench chat` load the adapter's
tokenizer, so evaluation and chat render prompts exactly as training did.

The fallback: an optional system text, then `### 질문:` / `### 답변:` turns; every assistant answer ends with the EOS
token, which is what teaches a base model to stop. The user turn already ends with the answer header, so the
generation prompt adds nothing, and a prompt rendered alone is a prefix of prompt + answer (TRL's completion mask
and lm-eval's context/continuation split both rely on that).
"""
from __future__ import annotations

from typing import Any

FALLBACK_NAME = "kobench-qa-v1"
FALLBACK_CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- message['content'] | trim + '\n\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if loop.previtem is defined and loop.previtem['role'] == 'assistant' -%}{{- '\n\n' -}}{%- endif -%}"
    "{{- '### 질문:\n' + message['content'] | trim + '\n\n### 답변:\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def ensure_chat_template(tokenizer: Any) -> str:
    """Give the tokenizer a chat template if it has none; returns where the template came from."""
    if getattr(tokenizer, "chat_template", None):
        return "model"
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return FALLBACK_NAME
