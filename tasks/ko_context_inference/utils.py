"""Prompts for ko_context_inference; data loading and the refined preprocessing live in harness.taskdata."""
from __future__ import annotations

from typing import Any

from harness.korean import with_euro
from harness.taskdata import task_loader

load = task_loader("ko_context_inference")
load_gen = task_loader("ko_context_inference_gen")
LETTERS = "ABC"


def _conversation(doc: dict[str, Any]) -> str:
    targets = set(doc["reference_id"])
    lines = []
    for turn in doc["conversation"]:
        mark = " ← [대상 발화]" if turn["utterance_id"] in targets else ""
        lines.append(f"화자{turn['speaker']}: {turn['utterance']}{mark}")
    quoted = [f"화자{t['speaker']}: {t['utterance']}" for t in doc["conversation"] if t["utterance_id"] in targets]
    return "[대화]\n" + "\n".join(lines) + "\n\n[대상 발화]\n" + "\n".join(quoted)


def question(category: str) -> str:
    """The question with the particle fitted to the category (원인으로, 전제로, ...), appended, not substituted."""
    return f"위 대화의 {with_euro(category)} 올바른 지문은?"


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"{_conversation(doc)}\n\n질문: {question(doc['category'])}\n정답:"


def doc_to_text_gen(doc: dict[str, Any]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(doc["choices"]))
    return (f"{_conversation(doc)}\n\n질문: {question(doc['category'])}\n{options}\n\n"
            "A, B, C 중 정답 하나의 기호만 답하세요.\n정답:")


def doc_to_letter(doc: dict[str, Any]) -> str:
    return LETTERS[doc["label"]]
