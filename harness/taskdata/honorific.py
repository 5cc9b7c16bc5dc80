"""ko_honorific data: 반말 prompts to be answered in 존댓말, one JSON object per line (or a JSON list).

Two line shapes are accepted, in any file (the shipped test split uses the first, train/dev the second):

    {"id", "prompt", "topic", "traps": [...]}                                  prompt only
    {"id", "topic", "messages": [{"role": "user", "content"}, {"role": "assistant", "content"}]}

A messages line is asked as its last user turn; the assistant turn after it, if any, is the reference answer
(used for few-shot examples and fine-tuning). Earlier turns and system messages are not part of the task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.taskdata import check_unique_ids, read_json_records, reader

TOPICS = ("everyday", "technical", "emotional")
TRAPS = ("short", "rude", "subject_honorific", "list", "quoted_speech", "code")
ROLES = ("system", "user", "assistant")
SCHEMA = ('{"id", "prompt", "topic", "traps": [...]} or '
          '{"id", "topic", "messages": [{"role": "user", "content"}, {"role": "assistant", "content"}]}; '
          'id, topic and traps are optional')


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _from_messages(path: Path, label: str, messages: Any) -> tuple[str, str | None]:
    """(prompt, reference) of a chat line: its last user turn and the assistant turn that answers it."""
    if not isinstance(messages, list) or not messages:
        raise DataError(path, label, "'messages' must be a non-empty list of {role, content} turns", SCHEMA)
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(path, label, f"messages turn {number} is {turn!r:.80}",
                            f"{{\"role\": one of {', '.join(ROLES)}, \"content\": text}}")
    users = [i for i, turn in enumerate(messages) if turn["role"] == "user"]
    if not users:
        raise DataError(path, label, "'messages' has no user turn, so there is no prompt", SCHEMA)
    prompt = _text(messages[users[-1]]["content"])
    if prompt is None:
        raise DataError(path, label, "the last user turn is empty", "the 반말 prompt as its content")
    following = messages[users[-1] + 1:]
    reference = _text(following[0]["content"]) if following and following[0]["role"] == "assistant" else None
    return prompt, reference


@reader("ko_honorific")
def read_honorific(path: Path) -> list[dict[str, Any]]:
    docs = []
    records = read_json_records(path)
    for number, (where, item) in enumerate(records, start=1):
        item_id = str(item["id"]) if item.get("id") not in (None, "") else f"{path.stem}-{number:03d}"
        label = f"{where} (id {item_id})" if "id" in item else where
        if "prompt" in item and "messages" in item:
            raise DataError(path, label, "has both 'prompt' and 'messages'; which one is the question is ambiguous",
                            SCHEMA)
        reference = None
        if "messages" in item:
            prompt, reference = _from_messages(path, label, item["messages"])
        elif "prompt" in item:
            prompt = _text(item["prompt"])
            if prompt is None:
                raise DataError(path, label, f"'prompt' must be non-empty text, got {item['prompt']!r:.60}", SCHEMA)
        else:
            raise DataError(path, label, f"no 'prompt' or 'messages' (keys: {', '.join(item) or 'none'})", SCHEMA)
        topic = item.get("topic")
        if topic is not None and _text(topic) is None:
            raise DataError(path, label, f"'topic' must be non-empty text, got {topic!r:.60}",
                            f"a topic name such as {', '.join(TOPICS)}")
        traps = item.get("traps", [])
        if not isinstance(traps, list) or not all(_text(t) for t in traps):
            raise DataError(path, label, f"'traps' must be a list of names, got {traps!r:.60}",
                            f"e.g. [\"short\", \"code\"] from {', '.join(TRAPS)}")
        doc = {"id": item_id, "prompt": prompt, "topic": _text(topic), "traps": [t.strip() for t in traps]}
        if reference is not None:
            doc["reference"] = reference
        docs.append(doc)
    check_unique_ids(path, [(where, doc["id"]) for (where, _), doc in zip(records, docs)])
    return docs
