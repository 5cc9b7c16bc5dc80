"""Prompts for ko_legal_mcq; data loading and validation live in harness.taskdata.legal."""
from __future__ import annotations

from typing import Any

from harness.taskdata import task_loader
from harness.taskdata.legal import LETTERS

load = task_loader("ko_legal_mcq")
load_gen = task_loader("ko_legal_mcq_gen")
INSTRUCTION = "다음은 한국 민법과 관련 법률에 관한 문제입니다."


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"{INSTRUCTION}\n\n질문: {doc['question']}\n정답:"


def doc_to_text_gen(doc: dict[str, Any]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(doc["choices"]))
    return (f"{INSTRUCTION}\n\n질문: {doc['question']}\n{options}\n\n"
            "A, B, C, D 중 정답 하나의 기호만 답하세요.\n정답:")


def doc_to_letter(doc: dict[str, Any]) -> str:
    return LETTERS[doc["label"]]
