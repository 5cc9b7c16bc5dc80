"""Ranking: one row per model + adapter + hardware profile, each task's main metric (0-100) with its 95% interval."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from leaderboard import data, ui

SORT_KEYS = {"rank": ("rank", True), "average": ("average", False), "mean win rate": ("win_rate", False),
             "params": ("params", False), "peak memory": ("peak_mem_mb", True), "tokens/s": ("tokens_per_s", False)}

st.title("kobench ranking")
url = ui.store().url

with st.sidebar:
    st.header("Filters")
    profiles = ui.hardware_profiles(url)
    hardware = st.selectbox("Hardware profile", ["all", *profiles], key="rank_hw")
    kinds = st.multiselect("Type", list(data.KIND_LABELS), default=list(data.KIND_LABELS),
                           format_func=data.KIND_LABELS.__getitem__, key="rank_kinds",
                           help="zero-shot = base models, fine-tuned = adapters (kind adapter), ensembles")
everything = ui.ranking(url, None if hardware == "all" else hardware, None, None, None)
all_tasks = everything.attrs.get("tasks", [])
with st.sidebar:
    tasks = st.multiselect("Tasks", all_tasks, default=all_tasks, key="rank_tasks",
                           help="The average and win rate run over the tasks picked here")
    sizes = everything["params"].dropna().astype(float) / 1e9
    params_b = None
    if len(sizes):
        top = float(max(1.0, sizes.max() * 1.05))
        chosen = st.slider("Model size (billions of parameters)", 0.0, round(top, 1), (0.0, round(top, 1)),
                           step=0.1, key="rank_size", help="Rows without a parameter count (ensembles) always show")
        params_b = None if chosen == (0.0, round(top, 1)) else chosen

if not len(everything):
    st.info("No finished runs in the store yet: run `kobench run --model ...` first.")
    st.stop()
if not tasks or not kinds:
    st.warning("Pick at least one task and one type.")
    st.stop()

frame = ui.ranking(url, None if hardware == "all" else hardware, tuple(tasks), tuple(kinds), params_b)
shown_tasks = frame.attrs.get("tasks", [])

left, right = st.columns([3, 1])
sort_options = [*SORT_KEYS, *shown_tasks]
sort_by = left.selectbox("Sort by", sort_options, key="rank_sort")
# one toggle per sort key, so each starts in its natural direction (rank and memory ascending, scores descending)
descending = right.toggle("Descending", value=not SORT_KEYS.get(sort_by, ("", False))[1], key=f"rank_desc_{sort_by}")
column = SORT_KEYS[sort_by][0] if sort_by in SORT_KEYS else sort_by
frame = frame.sort_values(column, ascending=not descending, na_position="last", kind="stable")


def display_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The ranking as text cells (st.table reads Markdown, so names are escaped)."""
    rows = []
    for r in ranked.to_dict("records"):
        row = {"#": str(r["rank"]), "model": ui.md_escape(r["model"]), "type": r["type"],
               "hardware": ui.md_escape(r["hardware"]),
               "base": ui.md_escape(r["base"]) if isinstance(r["base"], str) else "",
               "Δ vs base": ui.fmt_delta(r["delta_vs_base"])}
        for task in shown_tasks:
            row[ui.md_escape(task)] = ui.fmt_score_ci(r[task], r[f"{task} low"], r[f"{task} high"])
        row.update({"average": ui.fmt_number(r["average"]), "win rate": ui.fmt_number(r.get("win_rate")),
                    "params": ui.fmt_params(r["params"]),
                    "precision": ui.md_escape(r["precision"]) if isinstance(r["precision"], str) else ui.MISSING,
                    "peak MB": ui.fmt_number(r["peak_mem_mb"], 0), "tok/s": ui.fmt_number(r["tokens_per_s"])})
        rows.append(row)
    return pd.DataFrame(rows)


if not len(frame):
    st.info("No rows match these filters.")
    st.stop()
st.table(display_table(frame), hide_index=True)
st.caption("Scores: each task's main metric on a 0-100 scale, with its 95% bootstrap confidence interval over items "
           f"[low, high] ({data.RANKING_RESAMPLES} resamples). Average: mean over the row's tasks (rows with fewer "
           "tasks rank below). Win rate: share of the other rows shown that the row beats on a task (ties count "
           "half), averaged over tasks, x100. Δ vs base: a fine-tuned row's mean per-task gain over its base model "
           "on the same hardware profile.")
for note in frame.attrs.get("ci_notes", {}).values():
    st.caption(f"CI basis: {ui.md_escape(note)}")

with st.expander("Interactive table (click a header to sort, download CSV)"):
    st.dataframe(ui.plain(frame.drop(columns=["model_id", "base_model_id", "kind"])), hide_index=True)
