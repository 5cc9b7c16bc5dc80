"""Tests for harness.metrics.markdown (structure preservation of translated markdown)."""
from __future__ import annotations

import pytest

from harness.metrics.markdown import (
    ELEMENT_KINDS,
    corpus_preservation,
    markdown_elements,
    preservation,
)


def test_element_kinds_order() -> None:
    assert ELEMENT_KINDS == (
        "heading", "code_block", "inline_code", "table", "link", "image",
        "list_item", "blockquote", "bold", "italic",
    )


def test_markdown_elements_keys() -> None:
    doc = (
        "# Title\n\n"
        "## Install\n\n"
        "Run `pip install foo` and read the [docs](https://docs.example.com/foo).\n\n"
        "![logo](https://example.com/logo.png)\n\n"
        "```python\nimport foo\n```\n\n"
        "    indented = True\n\n"
        "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |\n\n"
        "- one\n  1. nested\n  2. nested two\n- two\n\n"
        "> **Note** this is *important*.\n"
    )
    el = markdown_elements(doc)
    assert set(el) == set(ELEMENT_KINDS)
    assert el["heading"] == [1, 2]
    assert el["code_block"] == [("python", "import foo\n"), ("", "indented = True\n")]
    assert el["inline_code"] == ["pip install foo"]
    assert el["table"] == [(3, 3)]  # header + 2 body rows, 3 columns
    assert el["link"] == ["https://docs.example.com/foo"]
    assert el["image"] == ["https://example.com/logo.png"]
    assert el["list_item"] == ["bullet", "ordered", "ordered", "bullet"]
    assert el["blockquote"] == [1]
    assert el["bold"] == [1]
    assert el["italic"] == [1]


def test_parser_not_fooled_by_code_content() -> None:
    # A '#' line, a list marker and a link inside a fence are code, not structure.
    el = markdown_elements("```bash\n# comment\n- not a list\n[x](http://y)\n```\n")
    assert el["heading"] == [] and el["list_item"] == [] and el["link"] == []
    assert el["code_block"] == [("bash", "# comment\n- not a list\n[x](http://y)\n")]


def test_identical_documents() -> None:
    doc = "# A\n\n- x\n- y\n\n```go\nfmt.Println(1)\n```\n"
    res = preservation(doc, doc)
    assert res["md_preservation"] == 1.0
    assert res["code_exact"] == 1.0
    assert res["per_element"]["heading"] == 1.0
    assert res["per_element"]["table"] is None  # absent from both
    assert res["source_counts"] == res["output_counts"]
    assert res["source_counts"]["list_item"] == 2


def test_no_elements_at_all() -> None:
    res = preservation("그냥 문장입니다.", "Just a sentence.")
    assert res["md_preservation"] == 1.0
    assert res["code_exact"] is None
    assert all(v is None for v in res["per_element"].values())


def test_changed_heading_level() -> None:
    src = "# A\n\n## B\n\n### C\n"
    out = "# A\n\n### B\n\n### C\n"
    res = preservation(src, out)
    # src levels {1,2,3}, out levels {1,3,3}: intersection {1,3} = 2; max(3,3) = 3 -> 2/3
    assert res["per_element"]["heading"] == pytest.approx(2 / 3)
    assert res["md_preservation"] == pytest.approx(2 / 3)


def test_altered_code_block() -> None:
    src = "```python\nx = 1\n```\n"
    out = "```python\nx = 2\n```\n"
    res = preservation(src, out)
    # languages match (python == python): code_block 1/1; content differs: code_exact 0/1
    assert res["per_element"]["code_block"] == 1.0
    assert res["code_exact"] == 0.0
    assert res["md_preservation"] == 1.0


def test_code_block_language_changed_and_indented() -> None:
    src = "```python\nx = 1\n```\n"
    out = "    x = 1\n"  # indented code: language ""
    res = preservation(src, out)
    # "python" vs "": 0 matched / max(1,1) -> 0; content identical -> code_exact 1/1
    assert res["per_element"]["code_block"] == 0.0
    assert res["code_exact"] == 1.0


def test_code_exact_is_a_multiset_match() -> None:
    block = "```sh\nmake\n```\n"
    src = block + "\n" + block
    out = block
    res = preservation(src, out)
    # two identical source blocks, one in output: code_exact = 1/2; code_block = 1 / max(2,1) = 1/2
    assert res["code_exact"] == pytest.approx(0.5)
    assert res["per_element"]["code_block"] == pytest.approx(0.5)


def test_inline_code() -> None:
    src = "Run `pip install x` then `make`."
    out = "Run `pip install x` then `make test`."
    res = preservation(src, out)
    # {"pip install x", "make"} & {"pip install x", "make test"} = 1; max(2,2) = 2 -> 1/2
    assert res["per_element"]["inline_code"] == pytest.approx(0.5)


def test_dropped_table_row() -> None:
    src = "| k | v |\n|---|---|\n| a | 1 |\n| b | 2 |\n| c | 3 |\n"
    out = "| k | v |\n|---|---|\n| a | 1 |\n| b | 2 |\n"
    res = preservation(src, out)
    # keys (4 rows, 2 cols) vs (3 rows, 2 cols): 0 matched / max(1,1) -> 0
    assert markdown_elements(src)["table"] == [(4, 2)]
    assert markdown_elements(out)["table"] == [(3, 2)]
    assert res["per_element"]["table"] == 0.0
    assert res["md_preservation"] == 0.0


def test_lost_link() -> None:
    src = "See [a](https://a.example.com) and [b](https://b.example.com)."
    out = "See [a](https://a.example.com) and b."
    res = preservation(src, out)
    # 1 matched / max(2,1) = 1/2
    assert res["per_element"]["link"] == pytest.approx(0.5)
    assert res["source_counts"]["link"] == 2 and res["output_counts"]["link"] == 1


def test_changed_url() -> None:
    src = "[guide](https://docs.example.com/v1/guide)"
    out = "[guide](https://docs.example.com/v2/guide)"
    res = preservation(src, out)
    # different URL keys: 0 matched / max(1,1) -> 0
    assert res["per_element"]["link"] == 0.0


def test_image() -> None:
    src = "![diagram](img/arch.png)\n\n![logo](img/logo.png)\n"
    out = "![Diagram](img/arch.png)\n\n![Logo](img/logo.svg)\n"
    res = preservation(src, out)
    # alt text may change; URLs: {arch.png, logo.png} & {arch.png, logo.svg} = 1; max(2,2) -> 1/2
    assert res["per_element"]["image"] == pytest.approx(0.5)
    assert res["per_element"]["link"] is None


def test_invented_list_item() -> None:
    src = "- a\n- b\n- c\n"
    out = "- a\n- b\n- c\n- d\n"
    res = preservation(src, out)
    # 3 matched / max(3,4) = 3/4
    assert res["per_element"]["list_item"] == pytest.approx(0.75)


def test_ordered_vs_bullet_list() -> None:
    src = "1. a\n2. b\n"
    out = "- a\n- b\n"
    res = preservation(src, out)
    # {"ordered": 2} & {"bullet": 2} = 0 -> 0/2
    assert res["per_element"]["list_item"] == 0.0


def test_lost_blockquote() -> None:
    src = "> 주의: 먼저 백업하세요.\n\n본문.\n"
    out = "Note: back up first.\n\nBody.\n"
    res = preservation(src, out)
    # 0 matched / max(1,0) = 0
    assert res["per_element"]["blockquote"] == 0.0
    assert res["output_counts"]["blockquote"] == 0


def test_bold_and_italic() -> None:
    src = "**a** and **b**, *c* and _d_"
    out = "**a** and b, *c* and _d_ and *e*"
    res = preservation(src, out)
    # bold: 1 matched / max(2,1) = 1/2; italic: 2 matched / max(2,3) = 2/3
    assert res["per_element"]["bold"] == pytest.approx(0.5)
    assert res["per_element"]["italic"] == pytest.approx(2 / 3)
    # pooled: (1 + 2) / (2 + 3) = 3/5
    assert res["md_preservation"] == pytest.approx(0.6)


def test_pooled_md_preservation() -> None:
    src = (
        "# Setup\n\n"
        "- install [x](https://x.example.com)\n- configure [y](https://y.example.com)\n- run\n\n"
        "```bash\nx run\n```\n"
    )
    out = (
        "# Setup\n\n"
        "- install [x](https://x.example.com)\n- configure y\n- run\n- done\n\n"
        "```bash\nx run\n```\n"
    )
    res = preservation(src, out)
    # heading 1/1, code_block 1/1, link 1/max(2,1), list_item 3/max(3,4)
    # pooled: (1 + 1 + 1 + 3) / (1 + 1 + 2 + 4) = 6/8 = 0.75
    assert res["md_preservation"] == pytest.approx(0.75)
    assert res["code_exact"] == 1.0
    assert res["per_element"]["table"] is None


def test_corpus_preservation() -> None:
    pairs = [
        ("```python\nx = 1\n```\n", "```python\nx = 2\n```\n"),  # md 1.0, code 0.0
        ("- a\n- b\n- c\n", "- a\n- b\n- c\n- d\n"),  # md 0.75, code None
        ("# T\n", "# T\n"),  # md 1.0, code None
    ]
    res = corpus_preservation(pairs)
    # md mean = (1.0 + 0.75 + 1.0) / 3 = 2.75/3; code mean over non-None = 0.0 / 1
    assert res["md_preservation"] == pytest.approx(2.75 / 3)
    assert res["code_exact"] == 0.0
    assert res["n"] == 3 and res["n_code"] == 1


def test_corpus_preservation_empty() -> None:
    res = corpus_preservation([])
    assert res["md_preservation"] is None and res["code_exact"] is None
