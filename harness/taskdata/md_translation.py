"""ko_md_translation data: chat-messages JSONL pairs of a Korean markdown document and its English translation.

One record per line: {"id", "style", "messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}. The last
user turn is the Korean source, the assistant turn after it the English reference, the system turn the instruction
that heads the prompt. The same format is what `kobench data synth-md` writes and what fine-tuning reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.synth_md import SYSTEM as DEFAULT_SYSTEM
from harness.errors import DataError
from harness.metrics.markdown import preservation
from harness.taskdata import check_unique_ids, read_json_records, reader

SCHEMA = ('{"id", "style", "messages": [{"role": "system", "content"}, {"role": "user", "content": Korean markdown}, '
          '{"role": "assistant", "content": English markdown}]} per line')
ROLES = ("system", "user", "assistant")
DEFAULT_STYLE = "general"

# The plain-text frame around the source, for models without a chat template (chat models get the bare source as the
# user turn, as in the data and in fine-tuning).
SOURCE_HEADER = "### Korean\n"
TARGET_HEADER = "### English\n"


@reader("ko_md_translation")
def read_md_translation(path: Path) -> list[dict[str, Any]]:
    """Docs {id, style, system, source, reference} from a chat-messages JSONL (or JSON list) file."""
    records = read_json_records(path)
    docs = []
    for where, item in records:
        item_id = str(item.get("id", "")).strip()
        if not item_id:
            raise DataError(path, where, "item has no 'id'", SCHEMA)
        label = f"{where} (id {item_id})"
        messages = item.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(path, label, "'messages' must be a non-empty list of {role, content} turns", SCHEMA)
        for turn in messages:
            if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
                raise DataError(path, label, f"turn {turn!r:.80} is not a {{role, content}} object with role "
                                f"{' | '.join(ROLES)}", SCHEMA)
        roles = [turn["role"] for turn in messages]
        if "user" not in roles:
            raise DataError(path, label, "no user turn (the Korean source document)", SCHEMA)
        last_user = len(roles) - 1 - roles[::-1].index("user")
        answer = next((turn for turn in messages[last_user + 1:] if turn["role"] == "assistant"), None)
        if answer is None:
            raise DataError(path, label, "no assistant turn after the last user turn (the English reference), so "
                            "the item cannot be scored", SCHEMA)
        source, reference = messages[last_user]["content"].strip(), answer["content"].strip()
        if not source or not reference:
            raise DataError(path, label, "the user or assistant turn is empty", SCHEMA)
        system = next((turn["content"].strip() for turn in messages if turn["role"] == "system"), "") or DEFAULT_SYSTEM
        style = item.get("style") or DEFAULT_STYLE
        if not isinstance(style, str):
            raise DataError(path, label, f"'style' must be a string, got {style!r:.40}", SCHEMA)
        docs.append({"id": item_id, "style": style, "system": system, "source": source, "reference": reference})
    check_unique_ids(path, [(w, str(i.get("id"))) for w, i in records])
    return docs


def prompt_text(doc: dict[str, Any], chat: bool | None = None) -> str:
    """What follows the system text: the bare source for a chat model (its user turn), else the source in the
    Korean/English frame. chat=None (not known, as under plain `lm_eval`) takes the frame, which suits both."""
    if chat:
        return doc["source"]
    return f"{SOURCE_HEADER}{doc['source']}\n\n{TARGET_HEADER}"


def source_from_prompt(prompt: str) -> str | None:
    """The source document inside a stored prompt (chat-templated or plain), or None when the frame is absent."""
    start = prompt.rfind(SOURCE_HEADER)
    end = prompt.rfind("\n\n" + TARGET_HEADER)
    if start < 0 or end < start:
        return None
    return prompt[start + len(SOURCE_HEADER):end]


def clean_translation(output: str) -> str:
    """The translation a model wrote: without an echoed '### English' frame line and surrounding blank lines."""
    text = output.strip()
    if text.startswith(TARGET_HEADER.strip()):
        text = text[len(TARGET_HEADER.strip()):].lstrip("\n")
    return text.strip()


@dataclass
class PairCheck:
    """How well a data item's reference keeps its source's markdown structure."""

    item_id: str
    style: str
    md_preservation: float
    code_exact: float | None
    per_element: dict[str, float | None]


def check_pairs(path: Path) -> list[PairCheck]:
    """Score every (source, reference) pair of a ko_md_translation data file with the preservation metric."""
    checks = []
    for doc in read_md_translation(Path(path)):
        result = preservation(doc["source"], doc["reference"])
        checks.append(PairCheck(doc["id"], doc["style"], result["md_preservation"], result["code_exact"],
                                result["per_element"]))
    return checks
