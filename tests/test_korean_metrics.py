"""harness.metrics.korean on hand-made cases (expected values worked out by hand in the comments)."""
from __future__ import annotations

import pytest

from harness.metrics.korean import key_term_recall, korean_ratio, morphemes


def test_masks_stay_whole_and_punctuation_is_dropped() -> None:
    assert morphemes("#Person1#은 #PhoneNumber#로 전화했다.") == ["#Person1#", "은", "#PhoneNumber#", "로", "전화", "했", "다"]


def test_key_term_recall_ignores_particles_and_spacing() -> None:
    # 대항력(+과) found; 우선변제권 written "우선 변제권" -> morphemes 우선|변제|권 spell the term; 확정일자 absent: 2/3
    assert key_term_recall("대항력과 우선 변제권을 갖춥니다.", ["대항력", "우선변제권", "확정일자"]) == pytest.approx(2 / 3)
    # citation spacing: "제3조의2" and "제 3조의 2" are the same morphemes
    assert key_term_recall("주택임대차보호법 제 3조의 2에 따라", ["주택임대차보호법 제3조의2"]) == 1.0


def test_key_term_recall_respects_morpheme_boundaries_and_missing_terms() -> None:
    assert key_term_recall("채권자가 청구합니다.", ["권"]) == 0.0  # 권 is inside 채권자, not a morpheme of its own
    assert key_term_recall("아무 답변", []) is None  # no key terms: not computed, not 0
    assert key_term_recall("아무 답변", [" ", ""]) is None


def test_korean_ratio() -> None:
    assert korean_ratio("안녕 hello") == pytest.approx(2 / 7)  # letters 안 녕 h e l l o: 2 of 7 are Hangul
    assert korean_ratio("123 !!") is None
    assert korean_ratio("ㅋㅋ 좋아") == 1.0  # compatibility jamo count as Hangul
