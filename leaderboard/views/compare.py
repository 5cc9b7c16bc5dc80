"""Compare: two runs on the same task, item by item, with a paired interval and p-value for the score gap."""
from __future__ import annotations

import streamlit as st

from leaderboard import data, ui

st.title("Compare two runs")
store = ui.store()
tasks = data.compared_tasks(store)
if not tasks:
    st.info("No task has finished results in two runs yet.")
    st.stop()
task = st.selectbox("Task", tasks, key="compare_task")
candidates = data.runs_with_task(store, task)
left, right = st.columns(2)
with left:
    run_a = ui.run_picker(candidates, key=f"compare_a_{task}", label="Run A", param="a", index=0)
with right:
    run_b = ui.run_picker(candidates, key=f"compare_b_{task}", label="Run B", param="b", index=1)
if run_a == run_b:
    st.warning("Pick two different runs.")
    st.stop()

paired = data.paired_items(store, run_a, run_b, task)
for warning in paired.attrs["warnings"]:
    st.warning(warning)
basis: data.MetricBasis = paired.attrs["basis"]
if basis.sample_metric is None or paired[["score_a", "score_b"]].dropna().empty:
    st.info(f"{task}: no per-sample values of {basis.metric} in both runs, so nothing to compare item by item.")
    st.stop()
result = data.compare(paired)

cols = st.columns(4)
cols[0].metric("A mean", ui.fmt_number(result.mean_a, 2))
cols[1].metric("B mean", ui.fmt_number(result.mean_b, 2))
cols[2].metric("A - B", f"{result.diff:+.2f}", help="95% paired bootstrap interval below")
cols[3].metric("p-value", f"{result.p_value:.4f}", help=result.test)
st.write(f"95% paired bootstrap CI of A - B: [{result.low:+.2f}, {result.high:+.2f}] over {result.n} paired items; "
         f"p-value from {result.test}"
         + (f" ({result.a_only} items only A got right, {result.b_only} only B)" if result.a_only is not None
            else "") + ".")
if result.p_value < 0.05 and not (result.low <= 0 <= result.high):
    st.success("The gap is unlikely to be noise (p < 0.05, and the interval excludes 0).")
else:
    st.info("The gap is within what resampling the items produces: it may well be noise.")
if basis.is_proxy:
    st.caption(f"Compared on the per-sample {basis.sample_metric}, standing in for the corpus {basis.metric}.")

only_diff = st.checkbox("Only items where the scores differ", key="compare_only_diff")
shown = paired[paired["diff"] != 0] if only_diff else paired
item_columns = ["doc_id", "item_id", "score_a", "score_b", "diff", "output_a", "output_b", "target"]
st.dataframe(ui.plain(shown[item_columns]), hide_index=True, key="compare_items")
if len(shown):
    doc_id = st.selectbox("Item", list(shown["doc_id"]), key="compare_item")
    item = shown[shown["doc_id"] == doc_id].iloc[0]
    a_col, b_col, ref_col = st.columns(3)
    for col, title, text in ((a_col, f"A (score {ui.fmt_number(item['score_a'])})", item["output_a"]),
                             (b_col, f"B (score {ui.fmt_number(item['score_b'])})", item["output_b"]),
                             (ref_col, "reference", item["target"])):
        col.caption(title)
        col.code(text, language=None, wrap_lines=True)
