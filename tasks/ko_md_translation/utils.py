"""Prompt and metrics for ko_md_translation; data loading, the prompt frame and the markdown metric live in harness."""
from __future__ import annotations

from typing import Any

import sacrebleu

from harness.metrics.korean import korean_ratio
from harness.metrics.markdown import preservation
from harness.taskdata import load_splits
from harness.taskdata.md_translation import clean_translation, prompt_text


def load(**metadata: Any) -> Any:
    """The splits, each doc with its prompt body: bare source under a chat template, the ### frame otherwise.

    doc_to_text cannot see whether lm-eval applies a chat template, so the loader decides from the run metadata
    (`kobench_chat`, set by kobench's runner); without it (plain `lm_eval`) every model gets the frame.
    """
    chat = metadata.get("kobench_chat")
    return load_splits("ko_md_translation", **metadata).map(lambda doc: {"prompt": prompt_text(doc, chat)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["prompt"]


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
