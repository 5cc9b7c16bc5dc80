"""Markdown structure-preservation metric for markdown translation tasks.

The source and the output document are both parsed with markdown-it-py (CommonMark plus GFM tables
and strikethrough); the token stream is walked to collect, per element kind, a list of comparable
keys. Preservation is the multiset overlap of those keys, normalised so that lost and invented
elements both cost. Fenced/indented code content is scored separately as ``code_exact``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

ELEMENT_KINDS: tuple[str, ...] = (
    "heading",
    "code_block",
    "inline_code",
    "table",
    "link",
    "image",
    "list_item",
    "blockquote",
    "bold",
    "italic",
)


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    """The shared CommonMark parser with GFM tables and strikethrough enabled."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _walk(tokens: Sequence[Token], out: dict[str, list], lists: list[str], table: list[int] | None) -> None:
    """Collect element keys from a (nested) token stream into ``out``."""
    for tok in tokens:
        t = tok.type
        if t == "heading_open":
            out["heading"].append(int(tok.tag[1:]))
        elif t == "fence":
            info = (tok.info or "").strip()
            lang = info.split()[0] if info else ""
            out["code_block"].append((lang, tok.content))
        elif t == "code_block":
            out["code_block"].append(("", tok.content))
        elif t == "code_inline":
            out["inline_code"].append(tok.content)
        elif t == "table_open":
            table = [0, 0]  # [rows, header columns]
        elif t == "tr_open" and table is not None:
            table[0] += 1
        elif t == "th_open" and table is not None and table[0] == 1:
            table[1] += 1
        elif t == "table_close" and table is not None:
            out["table"].append((table[0], table[1]))
            table = None
        elif t == "link_open":
            out["link"].append(str(tok.attrGet("href") or ""))
        elif t == "image":
            out["image"].append(str(tok.attrGet("src") or ""))
        elif t == "bullet_list_open":
            lists.append("bullet")
        elif t == "ordered_list_open":
            lists.append("ordered")
        elif t in ("bullet_list_close", "ordered_list_close"):
            if lists:
                lists.pop()
        elif t == "list_item_open":
            out["list_item"].append(lists[-1] if lists else "bullet")
        elif t == "blockquote_open":
            out["blockquote"].append(1)
        elif t == "strong_open":
            out["bold"].append(1)
        elif t == "em_open":
            out["italic"].append(1)
        if tok.children:
            # inline children never contain block structure, so the list stack is unaffected;
            # image alt text is also parsed into children (e.g. emphasis in alt), which we count too.
            _walk(tok.children, out, lists, None)


def markdown_elements(text: str) -> dict[str, list]:
    """Return, for each kind in ``ELEMENT_KINDS``, the list of comparable keys found in ``text``.

    heading -> level (int); code_block -> (language, content); inline_code -> content;
    table -> (rows incl. header, columns); link/image -> URL; list_item -> "ordered"/"bullet";
    blockquote/bold/italic -> 1 per occurrence.
    """
    out: dict[str, list] = {k: [] for k in ELEMENT_KINDS}
    tokens = _parser().parse(text or "")
    _walk(tokens, out, [], None)
    return out


def _comparable(kind: str, keys: list) -> Counter:
    """Multiset of keys used for structural matching (code blocks by language only)."""
    if kind == "code_block":
        return Counter(lang for lang, _content in keys)
    return Counter(keys)


def preservation(source: str, output: str) -> dict[str, Any]:
    """Score how well ``output`` preserves the markdown structure of ``source``.

    Per kind, matched = multiset intersection size; rate = matched / max(n_source, n_output)
    (None when the kind is absent from both). md_preservation pools matches over all kinds
    (1.0 when neither document has any element). code_exact is the share of source code blocks
    whose content is byte-identical to a distinct output code block (None without source code).
    """
    src = markdown_elements(source)
    out = markdown_elements(output)
    per_element: dict[str, float | None] = {}
    total_matched = 0
    total_denom = 0
    for kind in ELEMENT_KINDS:
        n_src, n_out = len(src[kind]), len(out[kind])
        denom = max(n_src, n_out)
        if denom == 0:
            per_element[kind] = None
            continue
        matched = sum((_comparable(kind, src[kind]) & _comparable(kind, out[kind])).values())
        per_element[kind] = matched / denom
        total_matched += matched
        total_denom += denom
    md_preservation = total_matched / total_denom if total_denom else 1.0

    src_code = [content for _lang, content in src["code_block"]]
    if src_code:
        out_code = Counter(content for _lang, content in out["code_block"])
        code_exact: float | None = sum((Counter(src_code) & out_code).values()) / len(src_code)
    else:
        code_exact = None

    return {
        "md_preservation": md_preservation,
        "code_exact": code_exact,
        "per_element": per_element,
        "source_counts": {k: len(src[k]) for k in ELEMENT_KINDS},
        "output_counts": {k: len(out[k]) for k in ELEMENT_KINDS},
    }


def corpus_preservation(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Mean md_preservation and mean code_exact (ignoring None) over (source, output) pairs.

    Returns {"md_preservation": float | None, "code_exact": float | None, "n": int, "n_code": int};
    a mean is None when there is nothing to average.
    """
    md_scores: list[float] = []
    code_scores: list[float] = []
    for source, output in pairs:
        res = preservation(source, output)
        md_scores.append(res["md_preservation"])
        if res["code_exact"] is not None:
            code_scores.append(res["code_exact"])
    return {
        "md_preservation": sum(md_scores) / len(md_scores) if md_scores else None,
        "code_exact": sum(code_scores) / len(code_scores) if code_scores else None,
        "n": len(md_scores),
        "n_code": len(code_scores),
    }
