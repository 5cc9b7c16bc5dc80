"""Streamlit glue shared by the pages: the read-only store, cached data calls, and safe formatting of cells.

Everything shown that a model wrote (or a user named) goes through st.code / st.text / dataframes, or through
`md_escape` where Streamlit would read Markdown (st.table cells): model output is never rendered as markup here.
"""
from __future__ import annotations

import argparse
import html
import math
import os
import re
import sys
from typing import Any

import pandas as pd
import streamlit as st
from markdown_it import MarkdownIt

from harness.errors import KobenchError
from harness.paths import default_db_url
from harness.store import open_store
from harness.store.db import Store, normalize_url
from leaderboard import data

CACHE_TTL_S = 60
# An en dash, not "-": a lone "-" in an st.table cell is read as an empty Markdown list.
MISSING = "–"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def db_url() -> str:
    """The store the app shows: `--db` after `--` on the streamlit command line, else KOBENCH_DB, else results.db."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return normalize_url(known.db or os.environ.get("KOBENCH_DB") or default_db_url())


@st.cache_resource(show_spinner=False)
def _open(url: str) -> Store:
    return open_store(url, readonly=True)


def store() -> Store:
    """The read-only store (SQLite mode=ro), opened once per server; a user-facing error stops the page."""
    try:
        return _open(db_url())
    except KobenchError as exc:
        st.error(f"Cannot open the results store: {exc}")
        st.stop()


def reload_button() -> None:
    """Cached tables refresh every minute; the button forces it (e.g. right after a run finished)."""
    if st.sidebar.button("Reload data", help=f"Data is cached for {CACHE_TTL_S} s"):
        st.cache_data.clear()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Bootstrapping confidence intervals...")
def ranking(url: str, hardware: str | None, tasks: tuple[str, ...] | None, kinds: tuple[str, ...] | None,
            params_b: tuple[float, float] | None) -> pd.DataFrame:
    return data.ranking_frame(_open(url), hardware=hardware, tasks=list(tasks) if tasks else None,
                              kinds=list(kinds) if kinds else None, params_b=params_b)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def hardware_profiles(url: str) -> list[str]:
    return data.hardware_profiles(_open(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def runs(url: str) -> pd.DataFrame:
    return data.runs_frame(_open(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def samples(url: str, run_id: int, task: str) -> pd.DataFrame:
    return data.samples_frame(_open(url), run_id, task)


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without its attrs (Streamlit serializes attrs as JSON and warns on dataclasses)."""
    out = frame.copy(deep=False)
    out.attrs = {}
    return out


def md_escape(value: Any) -> str:
    """A cell for st.table (which reads Markdown): every Markdown/HTML-significant character backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


def fmt_number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def fmt_params(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or not value:
        return MISSING
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.0f}M"


def fmt_score_ci(score: Any, low: Any, high: Any) -> str:
    """'80.0 [50.0, 100.0]': the score and its 95% bootstrap interval."""
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return MISSING
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return fmt_number(score)
    return f"{fmt_number(score)} [{fmt_number(low)}, {fmt_number(high)}]"


def fmt_delta(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):+.1f}"


def run_picker(runs_frame: pd.DataFrame, key: str, label: str = "Run", param: str | None = "run",
               index: int = 0) -> int | None:
    """A run select box; the `?run=ID` query parameter (when given) picks the initial run."""
    if runs_frame.empty:
        st.info("No runs in the store yet: run `kobench run --model ...` first.")
        return None
    ids = [int(r) for r in runs_frame["run_id"]]
    labels = {int(r["run_id"]): data.run_label(r) for r in runs_frame.to_dict("records")}
    wanted = st.query_params.get(param) if param else None
    if wanted and wanted.isdigit() and int(wanted) in ids:
        index = ids.index(int(wanted))
    return st.selectbox(label, ids, index=min(index, len(ids) - 1), format_func=labels.__getitem__, key=key)


_RENDERER = MarkdownIt("commonmark", {"html": False}).enable("table")
_PREVIEW_CSS = """
body { font-family: sans-serif; margin: 0; font-size: 14px; }
.cols { display: flex; gap: 12px; }
.col { flex: 1; min-width: 0; border: 1px solid #ddd; border-radius: 6px; padding: 0 12px; overflow-x: auto; }
h4 { color: #555; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
pre { background: #f5f5f5; padding: 6px; overflow-x: auto; }
"""


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (escaped), as markdown-it-py's CommonMark with tables."""
    return _RENDERER.render(text)


def sandboxed_preview(columns: list[tuple[str, str]]) -> str:
    """An HTML snippet showing each (title, markdown) rendered side by side inside a fully sandboxed iframe.

    The rendered HTML goes into the iframe's srcdoc (attribute-escaped); `sandbox=""` gives it no scripts, no forms,
    no same-origin access, and the CSP stops it loading anything (images, links' targets stay inert).
    """
    body = "".join(f'<div class="col"><h4>{html.escape(title)}</h4>{render_markdown(text)}</div>'
                   for title, text in columns)
    document = ("<!doctype html><html><head><meta charset='utf-8'>"
                "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
                f"<style>{_PREVIEW_CSS}</style></head><body><div class='cols'>{body}</div></body></html>")
    return (f'<iframe sandbox="" referrerpolicy="no-referrer" srcdoc="{html.escape(document, quote=True)}" '
            'style="width:100%;height:100%;min-height:380px;border:0"></iframe>')


def show_sandboxed_preview(columns: list[tuple[str, str]], height: int = 420) -> None:
    """Show `sandboxed_preview` (st.iframe where this Streamlit has it, else st.components.v1.html)."""
    snippet = sandboxed_preview(columns)
    if hasattr(st, "iframe"):
        st.iframe(snippet, height=height)
    else:
        import streamlit.components.v1 as components

        components.html(snippet, height=height, scrolling=True)
