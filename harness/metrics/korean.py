"""Korean text metrics shared by the tasks: Mecab morphemes, ROUGE on morphemes, Hangul ratio, key-term recall.

rouge-score's default tokenizer keeps only [a-z0-9] and so scores every Korean pair 0; kobench always passes
`MorphemeTokenizer` instead (tests keep a regression check on that).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

# Masks such as #Person1#, #PhoneNumber# stay one token: Mecab would cut them into '#', 'Person', '1', '#'.
MASK = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")
PUNCT_ONLY = re.compile(r"^[\W_]+$", re.UNICODE)


@lru_cache(maxsize=1)
def _mecab() -> Any:
    import mecab  # python-mecab-ko, with its bundled mecab-ko-dic

    return mecab.MeCab()


def morphemes(text: str, keep_punct: bool = False) -> list[str]:
    """Surface forms of Mecab morphemes, masks kept whole, punctuation-only tokens dropped (unless keep_punct)."""
    text = unicodedata.normalize("NFC", text or "")
    tokens: list[str] = []
    position = 0
    for match in MASK.finditer(text):
        tokens.extend(_mecab().morphs(text[position:match.start()]) if match.start() > position else [])
        tokens.append(match.group(0))
        position = match.end()
    if position < len(text):
        tokens.extend(_mecab().morphs(text[position:]))
    return tokens if keep_punct else [t for t in tokens if not PUNCT_ONLY.match(t)]


class MorphemeTokenizer:
    """The tokenizer interface rouge-score expects (`tokenize(text) -> list[str]`), on Mecab morphemes."""

    def tokenize(self, text: str) -> list[str]:
        return morphemes(text)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=MorphemeTokenizer())


def rouge_on_morphemes(prediction: str, references: list[str] | str) -> dict[str, float]:
    """ROUGE-1/2/L F1 on morphemes; with several references, each type takes its best reference."""
    refs = [references] if isinstance(references, str) else [r for r in references if r and r.strip()]
    if not refs:
        raise ValueError("rouge_on_morphemes needs at least one non-empty reference")
    best = {t: 0.0 for t in ROUGE_TYPES}
    for ref in refs:
        scores = _scorer().score(ref, prediction or "")
        for t in ROUGE_TYPES:
            best[t] = max(best[t], scores[t].fmeasure)
    return best


def korean_ratio(text: str) -> float | None:
    """Share of Hangul among the letters of `text` (None when it has no letters at all)."""
    letters = [ch for ch in text or "" if ch.isalpha()]
    if not letters:
        return None
    hangul = sum(1 for ch in letters if "\uac00" <= ch <= "\ud7a3" or "\u1100" <= ch <= "\u11ff"
                 or "\u3130" <= ch <= "\u318f")
    return hangul / len(letters)


def key_term_recall(answer: str, key_terms: list[str]) -> float | None:
    """Share of key terms found in the answer, matched on morphemes.

    Matching on morphemes means particles don't break a match ("대항력을" contains "대항력"), and citations match
    however they are spaced ("제3조의2" ~ "제 3조의 2"). A term matches a run of consecutive answer morphemes whose
    concatenation equals the term's: Mecab may cut a compound differently inside a sentence than alone
    ("우선변제권" alone vs "우선|변제|권" in context), so comparing token lists would miss it. The run must start and
    end on morpheme boundaries, so "권" inside "채권자" does not match a term "권". None when the item has no key
    terms (not computed, not 0).
    """
    terms = [t.strip() for t in key_terms if t and t.strip()]
    if not terms:
        return None
    answer_tokens = morphemes(answer)
    found = 0
    for term in terms:
        target = "".join(morphemes(term)) or term.replace(" ", "")
        if any(_run_spells(answer_tokens, start, target) for start in range(len(answer_tokens))):
            found += 1
    return found / len(terms)


def _run_spells(tokens: list[str], start: int, target: str) -> bool:
    """Do tokens[start], tokens[start+1], ... concatenate to exactly `target`?"""
    joined = ""
    for token in tokens[start:]:
        joined += token
        if joined == target:
            return True
        if not target.startswith(joined):
            return False
    return False
