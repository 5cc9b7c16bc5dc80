"""Tests for the template-based synthetic markdown translation generator."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from harness.data.synth_md import REQUIRED_ELEMENTS, STYLES, SYSTEM, TEMPLATES, generate_pairs, write_jsonl
from harness.metrics.markdown import markdown_elements, preservation


def _pairs(records: list[dict]) -> list[tuple[str, str]]:
    """(Korean source, English reference) of each record."""
    return [(r["messages"][1]["content"], r["messages"][2]["content"]) for r in records]


def test_deterministic_for_same_seed() -> None:
    assert generate_pairs(40, seed=13) == generate_pairs(40, seed=13)


def test_different_seeds_differ() -> None:
    a, b = generate_pairs(30, seed=1), generate_pairs(30, seed=2)
    assert _pairs(a) != _pairs(b)
    assert {r["id"] for r in a}.isdisjoint({r["id"] for r in b})


def test_does_not_touch_global_rng() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_pairs(20, seed=5)
    assert random.random() == expected


def test_record_format() -> None:
    records = generate_pairs(24, seed=3)
    assert len(records) == 24
    assert [r["id"] for r in records] == [f"md-synth-3-{n}" for n in range(1, 25)]
    for r in records:
        assert r["style"] in STYLES
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == SYSTEM
        assert r["messages"][1]["content"].strip() and r["messages"][2]["content"].strip()


def test_all_styles_appear_and_each_has_three_templates() -> None:
    counts = Counter(r["style"] for r in generate_pairs(60, seed=11))
    assert set(counts) == set(STYLES)
    assert all(len(TEMPLATES[s]) >= 3 for s in STYLES)


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
def test_full_markdown_parity(seed: int) -> None:
    for r in generate_pairs(60, seed=seed):
        ko, en = r["messages"][1]["content"], r["messages"][2]["content"]
        res = preservation(ko, en)
        assert res["md_preservation"] == 1.0, (r["id"], res["per_element"])
        assert res["code_exact"] in (1.0, None), r["id"]


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_required_elements_per_style(seed: int) -> None:
    for r in generate_pairs(60, seed=seed):
        elems = markdown_elements(r["messages"][1]["content"])
        missing = [k for k in REQUIRED_ELEMENTS[r["style"]] if not elems[k]]
        assert not missing, (r["id"], r["style"], missing)


def test_every_template_renders_with_parity() -> None:
    import random

    for style, templates in TEMPLATES.items():
        for tpl in templates:
            for seed in range(15):
                ko, en = tpl(random.Random(seed))
                assert preservation(ko, en)["md_preservation"] == 1.0, (style, tpl.__name__, seed)
                elems = markdown_elements(ko)
                assert all(elems[k] for k in REQUIRED_ELEMENTS[style]), (style, tpl.__name__, seed)


def test_english_side_has_no_hangul() -> None:
    import re

    for _ko, en in _pairs(generate_pairs(60, seed=8)):
        assert not re.search(r"[\uac00-\ud7a3]", en)


def test_write_jsonl_roundtrip(tmp_path: Path) -> None:
    records = generate_pairs(12, seed=4)
    path = write_jsonl(records, tmp_path / "out" / "synth.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "\\u" not in text  # ensure_ascii=False keeps Hangul readable
    assert [json.loads(line) for line in text.splitlines()] == records
