"""Prompt and scoring for ko_legal_qa; the Korean metrics live in harness.metrics.korean."""
from __future__ import annotations

import re
from typing import Any

import sacrebleu

from harness.metrics.korean import key_term_recall, korean_ratio, rouge_on_morphemes
from harness.taskdata import task_loader

load = task_loader("ko_legal_qa")
# A label the model may put in front of its answer ("답변:", "**답변:**", "A:"); the references never have one.
ANSWER_LABEL = re.compile(r"^\s*[*_]*\s*(?:답변|답|A)\s*[*_]*\s*[:：]\s*[*_]*\s*")


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"질문: {doc['question']}\n답변:"


def clean_answer(text: str) -> str:
    """The generation without a leading answer label and surrounding whitespace."""
    return ANSWER_LABEL.sub("", (text or "").strip(), count=1).strip()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Per item: numeric scores, and the (reference, output) pair the corpus chrF aggregates.

    key_term_recall is None for an item without key terms and korean_ratio for an output without letters: the
    task-level means skip them instead of counting them as 0.
    """
    answer = clean_answer(results[0])
    reference = doc["answer"]
    return {
        "key_term_recall": key_term_recall(answer, doc["key_terms"]),
        "rougeL": rouge_on_morphemes(answer, reference)["rougeL"],
        "chrf": (reference, answer),
        "chrf_sentence": sacrebleu.sentence_chrf(answer, [reference]).score,
        "korean_ratio": korean_ratio(answer),
    }


def mean_defined(values: list[float | None]) -> float | None:
    """Mean over the items where the metric is defined; None (shown as n/a) when it is defined for none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def corpus_chrf(items: list[tuple[str, str]]) -> float:
    """sacrebleu corpus chrF (character 6-grams, beta 2) over all answers, 0-100."""
    references, outputs = zip(*items)
    return sacrebleu.corpus_chrf(list(outputs), [list(references)]).score
