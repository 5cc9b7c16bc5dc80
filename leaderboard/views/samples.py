"""Samples: every item of a run's task with prompt, output, reference and per-sample metrics, shown as plain text.

Deep links: ?run=ID&task=NAME&item=DOC_ID.
"""
from __future__ import annotations

import streamlit as st

from harness.stats import is_binary
from harness.taskdata.md_translation import clean_translation, source_from_prompt
from leaderboard import data, ui

TRANSLATION_TASKS = {"ko_md_translation"}

st.title("Samples")
store = ui.store()
runs = ui.runs(store.url)
run_id = ui.run_picker(runs, key="samples_run")
if run_id is None:
    st.stop()
run_tasks = list(runs.loc[runs["run_id"] == run_id, "tasks"].iloc[0])
if not run_tasks:
    st.info("This run stored no task results.")
    st.stop()
wanted_task = st.query_params.get("task")
task = st.selectbox("Task", run_tasks, index=run_tasks.index(wanted_task) if wanted_task in run_tasks else 0,
                    key="samples_task")
items = ui.samples(store.url, run_id, task)
basis: data.MetricBasis = items.attrs["basis"]
if items.empty:
    st.info("No samples stored for this task (a failed or budget-exceeded task keeps none).")
    st.stop()
st.caption(f"score = per-sample {basis.sample_metric or '(none)'} on 0-100"
           + (f" (stands in for the corpus {basis.metric})" if basis.is_proxy else ""))

left, middle, right = st.columns([3, 1, 1])
search = left.text_input("Search prompt, output, reference or id", key="samples_search")
binary = is_binary(items["score"].dropna() / 100.0)
low_only = middle.checkbox("Only wrong / low-scoring", key="samples_low")
threshold = right.number_input("score below", 0.0, 100.0, 100.0 if binary else 50.0, step=5.0,
                               key="samples_threshold", disabled=not low_only,
                               help="0/1 tasks: below 100 = the wrong items")
shown = data.filter_samples(items, search=search, below=threshold if low_only else None)
st.write(f"{len(shown)} of {len(items)} items")
columns = ["doc_id", "item_id", *items.attrs.get("breakdown_fields", []), "score", "output", "extracted", "target"]
table_columns = [c for c in columns if c != "extracted" or items["extracted"].notna().any()]
st.dataframe(ui.plain(shown[table_columns]), hide_index=True, key="samples_table")
if shown.empty:
    st.stop()

doc_ids = [int(d) for d in shown["doc_id"]]
wanted_item = st.query_params.get("item")
doc_id = st.selectbox("Item", doc_ids, key="samples_item",
                      index=doc_ids.index(int(wanted_item)) if wanted_item in [str(d) for d in doc_ids] else 0,
                      format_func=lambda d: f"#{d} {shown.loc[shown['doc_id'] == d, 'item_id'].iloc[0] or ''}")
item = shown[shown["doc_id"] == doc_id].iloc[0]
st.subheader(f"item #{doc_id}: score {ui.fmt_number(item['score'])}")
st.caption("prompt")
st.code(item["prompt"], language=None, wrap_lines=True)
out_col, ref_col = st.columns(2)
with out_col:
    st.caption("model output (plain text)")
    st.code(item["output"], language=None, wrap_lines=True)
    if item["extracted"] is not None:
        st.caption("extracted answer")
        st.code(str(item["extracted"]), language=None)
with ref_col:
    st.caption("reference")
    st.code(item["target"], language=None, wrap_lines=True)
metric_names = [c for c in items.columns if c not in columns and c != "prompt"]
st.json({m: item[m] for m in metric_names if item[m] is not None and item[m] == item[m]})

if task in TRANSLATION_TASKS and st.toggle("Preview rendered markdown (sandboxed)", key="samples_preview"):
    source = source_from_prompt(item["prompt"]) or item["prompt"]
    ui.show_sandboxed_preview([("source", source), ("model output", clean_translation(item["output"])),
                               ("reference", item["target"])])
    st.caption("Rendered with markdown-it-py (raw HTML escaped) in an iframe with an empty sandbox: no scripts, "
               "no network.")
