"""`kobench translate`: section splitting, code pass-through, prompts, and the CLI on the tiny model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.metrics.markdown import markdown_elements, preservation
from harness.taskdata.md_translation import read_md_translation
from harness.translate import Translator, split_document, translate_markdown
from tests.conftest import REPO
from tests.test_task_md_translation import kobench

DOCS = read_md_translation(REPO / "tasks" / "ko_md_translation" / "data" / "test.jsonl")


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("budget", [1, 40, 10_000])
def test_identity_translation_gives_back_every_document(budget: int) -> None:
    for doc in DOCS:
        assert "".join(s.text for s in split_document(doc["source"], budget, words)) == doc["source"]
        assert translate_markdown(doc["source"], lambda unit: unit, budget, words) == doc["source"], doc["id"]


def test_code_blocks_are_never_sent_and_come_back_verbatim() -> None:
    sent: list[str] = []

    def translate_unit(unit: str) -> str:
        sent.append(unit)
        return "Translated prose."

    for doc in DOCS:
        sent.clear()
        english = translate_markdown(doc["source"], translate_unit, 40, words)
        assert not any(re.search(r"^\s*(```|~~~)", unit, re.M) for unit in sent), doc["id"]
        source_code = markdown_elements(doc["source"])["code_block"]
        assert markdown_elements(english)["code_block"] == source_code, doc["id"]
        if source_code:
            assert preservation(doc["source"], english)["code_exact"] == 1.0


def test_sections_split_at_headings_and_stay_under_the_budget() -> None:
    sent: list[str] = []
    for doc in DOCS:
        translate_markdown(doc["source"], lambda unit: sent.append(unit) or unit, 30, words)
    assert sent
    for unit in sent:
        # over the budget only when it is a single paragraph, which cannot be split further
        assert words(unit) <= 30 or "\n\n" not in unit.strip(), unit
    sent.clear()
    for doc in DOCS:
        translate_markdown(doc["source"], lambda unit: sent.append(unit) or unit, 1, words)
    for unit in sent:  # with a budget of one word every heading opens its own call
        headings = [line for line in unit.splitlines() if re.match(r"#{1,6} ", line)]
        assert len(headings) <= 1 and (not headings or unit.startswith(headings[0])), unit


CHAT = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>"
             "{% endif %}")


def test_prompts_match_the_task_frame(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    plain = Translator(None, tokenizer, "cpu", system="Translate.")
    assert plain.prompt("# 제목") == "Translate.\n\n### Korean\n# 제목\n\n### English\n"
    tokenizer.chat_template = CHAT
    chat = Translator(None, tokenizer, "cpu", system="Translate.")
    assert chat.prompt("# 제목") == "<|system|>Translate.\n<|user|># 제목\n<|assistant|>"  # the bare source
    tokenizer.chat_template = NO_SYSTEM
    merged = Translator(None, tokenizer, "cpu", system="Translate.")
    assert merged.prompt("# 제목") == "<|user|>Translate.\n\n# 제목\n<|assistant|>"


def test_translate_cli_directory_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "ko"
    (src / "guide").mkdir(parents=True)
    with_code = next(d for d in DOCS if d["style"] == "tutorial")
    (src / "README.md").write_text(with_code["source"] + "\n", encoding="utf-8")
    (src / "guide" / "faq.md").write_text(DOCS[-1]["source"] + "\n", encoding="utf-8")
    proc = kobench("translate", "--model", str(tiny_model), "--input-dir", str(src), "--output-dir",
                   str(tmp_path / "en"), "--max-new-tokens", "6", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [Path(r["output"]) for r in rows] == [tmp_path / "en" / "README.md", tmp_path / "en" / "guide" / "faq.md"]
    for row in rows:
        source = Path(row["source"]).read_text(encoding="utf-8")
        english = Path(row["output"]).read_text(encoding="utf-8")
        score = preservation(source, english)
        assert row["md_preservation"] == pytest.approx(score["md_preservation"])
        assert row["code_exact"] == score["code_exact"]
        assert markdown_elements(english)["code_block"] == markdown_elements(source)["code_block"]
        assert row["sections"] >= 2


def test_translate_cli_errors(tiny_model: Path, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# 제목\n", encoding="utf-8")
    both = kobench("translate", "--model", str(tiny_model), str(doc), "--input-dir", str(tmp_path))
    assert both.returncode == 2 and "either FILE" in both.stderr
    no_out = kobench("translate", "--model", str(tiny_model), "--input-dir", str(tmp_path))
    assert no_out.returncode == 2 and "needs --output-dir" in no_out.stderr
    same = kobench("translate", "--model", str(tiny_model), "--input-dir", str(tmp_path), "--output-dir",
                   str(tmp_path))
    assert same.returncode == 2 and "would be overwritten" in same.stderr
    missing = kobench("translate", "--model", str(tiny_model), str(tmp_path / "nope.md"))
    assert missing.returncode == 2 and "no such markdown file" in missing.stderr
