"""Prompt and metrics for ko_md_translation; data loading, the prompt frame and the markdown metric live in harness."""
from __future__ import annotations

from typing import Any

import sacrebleu

from harness.metrics.korean import korean_ratio
from harness.metrics.markdown import preservation
from harness.taskdata import task_loader
from harness.taskdata.md_translation import clean_translation, prompt_text

load = task_loader("ko_md_translation")


def doc_to_text(doc: dict[str, Any]) -> str:
    return prompt_text(doc)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Per document: (reference, output) items for the corpus BLEU/chrF, and numeric per-sample scores.

    Keys that do not apply to a document (code_exact without a source code block, a markdown element kind that is in
    neither text, korean_ratio of an output without letters) are left out, so their means run over the documents
    they apply to.
    """
    output = clean_translation(results[0])
    reference = doc["reference"]
    structure = preservation(doc["source"], output)
    scores: dict[str, Any] = {
        "bleu": (reference, output),
        "chrf": (reference, output),
        "chrf_sentence": sacrebleu.sentence_chrf(output, [reference]).score,
        "md_preservation": structure["md_preservation"],
    }
    if structure["code_exact"] is not None:
        scores["code_exact"] = structure["code_exact"]
    for kind, rate in structure["per_element"].items():
        if rate is not None:
            scores[f"md_{kind}"] = rate
    ratio = korean_ratio(output)
    if ratio is not None:
        scores["korean_ratio"] = ratio
    return scores


def corpus_bleu(items: list[tuple[str, str]]) -> float:
    """sacrebleu corpus BLEU (13a tokenization) over all documents, 0-100."""
    references, outputs = zip(*items)
    return sacrebleu.corpus_bleu(list(outputs), [list(references)]).score


def corpus_chrf(items: list[tuple[str, str]]) -> float:
    """sacrebleu corpus chrF (character 6-grams, beta 2) over all documents, 0-100."""
    references, outputs = zip(*items)
    return sacrebleu.corpus_chrf(list(outputs), [list(references)]).score
